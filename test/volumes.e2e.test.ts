/**
 * Named volumes end to end (docs/volumes.md): the real docker CLI and the nimbus CLI against a
 * real nimbusd. A volume written by one container is read by another, its size holds (ENOSPC),
 * removal is refused while a container names it and gives the quota back; tmpfs and bind
 * mounts, who may bind host paths, and a restart that finds a volume unmounted and a stray one.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { DOCKER_CLI, dockerCli, type DockerCli } from './helpers/docker-cli.js';

const DOCKER = DOCKER_CLI;
const MiB = 1024 * 1024;

let d: DaemonProcess | undefined;
let registry: TestRegistry | undefined;
let config: string;
let IMAGE: string;
/** The administrator's docker CLI; a test may point it at another config (DOCKER_CONFIG in env). */
let admin: DockerCli;
const docker = (args: string[], env: Record<string, string> = {}) => admin.run(args, env);

async function ok(args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await docker(args, env);
  assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function fails(args: string[], message: RegExp, env: Record<string, string> = {}): Promise<void> {
  const r = await docker(args, env);
  assert.notEqual(r.code, 0, `docker ${args.join(' ')} should fail: ${r.stdout}`);
  assert.match(r.stderr, message);
}

interface Figures { used: number; hard: number }
async function quotaOf(project: string): Promise<{ disk: Figures; volumes: Figures }> {
  const r = await d!.api<{ resources: { disk: Figures; volumes: Figures } }>('GET', `/quota/${project}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.resources;
}

/** Mount points under the daemon's volumes directory. */
function volumeMounts(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(join(d!.home, 'volumes')));
}

describe('named volumes through the docker CLI and the nimbus CLI', { skip: DOCKER ? (process.getuid?.() === 0 ? false : 'needs root') : 'no docker CLI on this machine (apt-get install docker.io)', concurrency: false, timeout: 300_000 }, () => {
  before(async () => {
    config = mkdtempSync(join(tmpdir(), 'nimbus-volumes-config-'));
    mkdirSync(join(config, 'admin'));
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
    admin = dockerCli(`${d.home}/docker.sock`, join(config, 'admin'));
    await ok(['pull', IMAGE]);
  });
  after(async () => {
    try {
      if (d) {
        // containers first (destroy removes them too), then every volume: the host keeps nothing
        const cs = await d.api<{ id: string }[]>('GET', '/containers?all=true&project=*').catch(() => ({ status: 0, body: [] }));
        for (const c of cs.body ?? []) await d.api('DELETE', `/containers/${c.id}?force=true`).catch(() => undefined);
        const vs = await d.api<{ id: string }[]>('GET', '/volumes?project=*').catch(() => ({ status: 0, body: [] }));
        for (const v of vs.body ?? []) await d.api('DELETE', `/volumes/${v.id}?force=true`).catch(() => undefined);
        await d.destroy(); // fails on any mount left under the home
      }
    } finally {
      await registry?.stop();
      rmSync(config, { recursive: true, force: true });
    }
  }, { timeout: 60_000 });

  test('one container writes a volume, another reads it; read-only holds; the size holds (ENOSPC); in use it stays; removed, the quota is back', async () => {
    const before = await quotaOf('default');
    assert.match(await ok(['volume', 'create', '--opt', 'size=32m', '--label', 'purpose=test', 'shared']), /^shared$/m);
    assert.match(await ok(['volume', 'ls', '--format', '{{.Driver}} {{.Name}}']), /^local shared$/m);
    assert.equal((await ok(['volume', 'ls', '-q', '--filter', 'label=purpose=test'])).trim(), 'shared');
    const doc = JSON.parse(await ok(['volume', 'inspect', 'shared'])) as Array<{ Name: string; Mountpoint: string; Options: { size: string }; Status: { Size: number }; Scope: string }>;
    assert.equal(doc[0]?.Name, 'shared');
    assert.deepEqual(doc[0]?.Options, { size: '32m' }, 'the options as given (compose compares them with its file)');
    assert.equal(doc[0]?.Status.Size, 32 * MiB);
    assert.ok(doc[0]?.Mountpoint.startsWith(join(d!.home, 'volumes')), doc[0]?.Mountpoint);
    // charged: one volume, 32 MiB of disk
    const charged = await quotaOf('default');
    assert.equal(charged.disk.used - before.disk.used, 32);
    assert.equal(charged.volumes.used - before.volumes.used, 1);

    await ok(['run', '--rm', '-v', 'shared:/data', IMAGE, 'sh', '-c', 'echo written-by-one > /data/note']);
    assert.equal((await ok(['run', '--rm', '-v', 'shared:/data:ro', IMAGE, 'cat', '/data/note'])).trim(), 'written-by-one');
    await fails(['run', '--rm', '--mount', 'type=volume,source=shared,target=/data,readonly', IMAGE, 'sh', '-c', 'echo x > /data/other'], /Read-only file system/);
    // past its size: the filesystem is full
    const full = await docker(['run', '--rm', '-v', 'shared:/data', IMAGE, 'sh', '-c', 'dd if=/dev/zero of=/data/big bs=1M count=64']);
    assert.notEqual(full.code, 0);
    assert.match(full.stderr, /No space left on device/);
    const left = await ok(['run', '--rm', '-v', 'shared:/data', IMAGE, 'sh', '-c', 'rm /data/big && df -k /data | tail -1']);
    const sizeK = Number(left.trim().split(/\s+/)[1]);
    assert.ok(sizeK > 20 * 1024 && sizeK <= 32 * 1024, `df says ${sizeK} KiB`);

    // a container (even one never started) holds it
    await ok(['create', '--name', 'holder', '-v', 'shared:/data', IMAGE, 'true']);
    await fails(['volume', 'rm', 'shared'], /in use by container holder/);
    const mounts = JSON.parse(await ok(['inspect', '--format', '{{json .Mounts}}', 'holder'])) as Array<{ Type: string; Name: string; Destination: string }>;
    assert.deepEqual(mounts.map((m) => [m.Type, m.Name, m.Destination]), [['volume', 'shared', '/data']]);
    await ok(['rm', 'holder']);
    await ok(['volume', 'rm', 'shared']);
    await fails(['volume', 'inspect', 'shared'], /no such volume/i);
    const released = await quotaOf('default');
    assert.equal(released.disk.used, before.disk.used);
    assert.equal(released.volumes.used, before.volumes.used);
    assert.deepEqual(volumeMounts(), [], 'its mount is gone');
    assert.ok(!readdirSync(join(d!.home, 'volumes')).some((n) => n === doc[0]?.Mountpoint.split('/').at(-3)), 'its image is gone');
  });

  test('a volume named by run that does not exist is made (1 GiB); prune removes the unused; tmpfs has its size', async () => {
    await ok(['run', '--rm', '-v', 'made-on-run:/d', IMAGE, 'sh', '-c', 'echo kept > /d/f']);
    const doc = JSON.parse(await ok(['volume', 'inspect', 'made-on-run'])) as Array<{ Options: null; Status: { Size: number } }>;
    assert.equal(doc[0]?.Options, null, 'none given');
    assert.equal(doc[0]?.Status.Size, 1024 * MiB);
    assert.equal((await ok(['run', '--rm', '--mount', 'source=made-on-run,target=/d', IMAGE, 'cat', '/d/f'])).trim(), 'kept');
    const pruned = await ok(['volume', 'prune', '-f']);
    assert.match(pruned, /made-on-run/);
    assert.doesNotMatch(await ok(['volume', 'ls', '-q']), /made-on-run/);

    const tmp = await docker(['run', '--rm', '--tmpfs', '/scratch:size=1m', IMAGE, 'sh', '-c', 'grep " /scratch " /proc/mounts; dd if=/dev/zero of=/scratch/f bs=1M count=4']);
    assert.notEqual(tmp.code, 0);
    assert.match(tmp.stdout, /tmpfs \/scratch tmpfs rw,nosuid,nodev,noexec,.*size=1024k/);
    assert.match(tmp.stderr, /No space left on device/);
    assert.match(await ok(['run', '--rm', '--mount', 'type=tmpfs,target=/t,tmpfs-size=2097152', IMAGE, 'grep', ' /t ', '/proc/mounts']), /size=2048k/);
  });

  test('host paths: an administrator binds one (symlinks resolved, kernel paths refused); a member cannot; a volume on the nimbus CLI', async () => {
    const shared = mkdtempSync(join(tmpdir(), 'nimbus-bind-'));
    try {
      writeFileSync(join(shared, 'from-host'), 'hello from the host\n');
      assert.equal((await ok(['run', '--rm', '-v', `${shared}:/h:ro`, IMAGE, 'cat', '/h/from-host'])).trim(), 'hello from the host');
      await ok(['run', '--rm', '--mount', `type=bind,source=${shared},target=/h`, IMAGE, 'sh', '-c', 'echo back > /h/from-container']);
      assert.equal(readFileSync(join(shared, 'from-container'), 'utf8'), 'back\n');
      // a symlink to /proc is /proc
      symlinkSync('/proc', join(shared, 'sneaky'));
      await fails(['run', '--rm', '-v', `${join(shared, 'sneaky')}:/p`, IMAGE, 'true'], /cannot be bound into a container/);
      await fails(['run', '--rm', '-v', '/:/host', IMAGE, 'true'], /host path \/ cannot be bound/);
      await fails(['run', '--rm', '-v', '/var/run:/r', IMAGE, 'true'], /host path \/var\/run cannot be bound/);

      // a member of a project: named volumes yes, host paths no
      assert.equal((await d!.api('POST', '/projects', { name: 'tenant' })).status, 201);
      assert.equal((await d!.api('POST', '/users', { name: 'tina', password: 'tenant-password-1' })).status, 201);
      assert.equal((await d!.api('PUT', '/projects/tenant/roles/tina', { role: 'member' })).status, 200);
      const login = await d!.api<{ token: string }>('POST', '/auth/login', { user: 'tina', password: 'tenant-password-1' });
      const tenantConfig = join(config, 'tina');
      mkdirSync(tenantConfig);
      writeFileSync(join(tenantConfig, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': login.body.token, 'X-Nimbus-Project': 'tenant' } }));
      const asTina = { DOCKER_CONFIG: tenantConfig };
      await ok(['pull', IMAGE], asTina);
      await fails(['run', '--rm', '-v', `${shared}:/h`, IMAGE, 'true'], /only a system administrator may bind a host path/, asTina);
      await fails(['run', '--rm', '--mount', `type=bind,source=${shared},target=/h`, IMAGE, 'true'], /only a system administrator may bind a host path/, asTina);
      await ok(['volume', 'create', '--opt', 'size=16m', 'tinas'], asTina);
      await ok(['run', '--rm', '-v', 'tinas:/d', IMAGE, 'touch', '/d/x'], asTina);
      // where it lies on the host is not a tenant's to know
      assert.equal((await ok(['volume', 'inspect', '--format', '{{.Mountpoint}}', 'tinas'], asTina)).trim(), '');
      // the default project's volume list does not show it; the quota is the tenant's
      assert.doesNotMatch(await ok(['volume', 'ls', '-q']), /^tinas$/m);
      assert.equal((await quotaOf('tenant')).disk.used, 16);
      // a volume count limit holds
      assert.equal((await d!.api('PUT', '/quota/tenant', { hard: { volumes: 1 } })).status, 200);
      await fails(['volume', 'create', '--opt', 'size=16m', 'second'], /rejected by free of project \S+: volumes: need 1, free 0/, asTina);
      await ok(['volume', 'rm', 'tinas'], asTina);
      assert.equal((await quotaOf('tenant')).disk.used, 0);
    } finally {
      rmSync(shared, { recursive: true, force: true });
    }

    // the nimbus CLI: create with a size, ls, inspect, run -v, rm
    const cli = async (args: string[]) => {
      const r = await d!.cli(args);
      assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    await cli(['volume', 'create', 'cli-vol', '--size', '48m']);
    assert.match(await cli(['volume', 'ls']), /local\s+cli-vol\s+50\.3MB/);
    await cli(['run', '--rm', '-v', 'cli-vol:/v', IMAGE, 'sh', '-c', 'echo cli > /v/f']);
    const inspected = JSON.parse(await cli(['volume', 'inspect', 'cli-vol'])) as Array<{ sizeBytes: number; usedBytes: number; usedBy: string[] }>;
    assert.equal(inspected[0]?.sizeBytes, 48 * MiB);
    assert.ok((inspected[0]?.usedBytes ?? 0) > 0);
    assert.deepEqual(inspected[0]?.usedBy, []);
    await cli(['volume', 'rm', 'cli-vol']);
    const gone = await d!.cli(['volume', 'rm', 'cli-vol']);
    assert.notEqual(gone.code, 0);
    assert.equal((await d!.cli(['volume', 'rm', '-f', 'cli-vol'])).code, 0);
  });

  test('a restart mounts what the store holds and removes what it does not', async () => {
    await ok(['volume', 'create', '--opt', 'size=16m', 'survivor']);
    await ok(['run', '--rm', '-v', 'survivor:/d', IMAGE, 'sh', '-c', 'echo still-here > /d/f']);
    await d!.kill('SIGTERM');
    assert.deepEqual(volumeMounts(), [], 'a stopped agent leaves no volume mounted');
    // a volume the store never heard of (a create cut short, or removed while the agent was away)
    const stray = join(d!.home, 'volumes', 'a'.repeat(64));
    mkdirSync(join(stray, 'mnt'), { recursive: true });
    writeFileSync(join(stray, 'volume.json'), JSON.stringify({ id: 'a'.repeat(64), sizeBytes: 16 * MiB, createdAt: new Date(Date.now() - 3600_000).toISOString() }));
    await d!.restart();
    assert.equal(volumeMounts().length, 1);
    assert.ok(!existsSync(stray), 'the stray volume is removed');
    assert.equal((await ok(['run', '--rm', '-v', 'survivor:/d', IMAGE, 'cat', '/d/f'])).trim(), 'still-here');
    await ok(['volume', 'rm', 'survivor']);
    assert.deepEqual(volumeMounts(), []);
    // nothing of any removed volume stays on the host's disk
    assert.deepEqual(readdirSync(join(d!.home, 'volumes')), []);
    const loops = await run('losetup', ['-a']);
    assert.doesNotMatch(loops.stdout, new RegExp(d!.home.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  });
});
