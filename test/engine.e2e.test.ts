/**
 * End to end through a real nimbusd process and the nimbus CLI, against a real
 * docker-registry on loopback and real runc + conmon.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { imageArchives, pushTamperedImage, pushZstdImage, startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { mkdtempSync, rmSync, readFileSync as readFile } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { waitFor } from './helpers/wait.js';
import { readSnapshotMetadataSync } from '../src/agent/snapshots/metadata-journal.js';

let registry: TestRegistry;
let d: DaemonProcess;
let IMAGE: string;

/** Ids of the daemon's warm containers: container dirs whose meta says warm. */
async function warmContainerIds(): Promise<string[]> {
  const dir = join(d.home, 'containers/containers');
  return readdirSync(dir).filter((n) => {
    try {
      return (JSON.parse(readFile(join(dir, n, 'meta.json'), 'utf8')) as { warm?: boolean }).warm === true;
    } catch {
      return false;
    }
  });
}

interface C { id: string; name: string; status: string; exitCode: number | null; oomKilled: boolean; restartCount: number; pid: number | null }

describe('container engine end to end', { concurrency: false }, () => {
  before(async () => {
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
  });
  after(async () => {
    await d?.destroy();
    await registry?.stop();
  });

  test('pull through the index, list, inspect', async () => {
    const r = await d.cli(['image', 'pull', IMAGE]);
    assert.equal(r.code, 0, r.stderr);
    const ls = await d.cli(['image', 'ls', '--output', 'json']);
    const images = JSON.parse(ls.stdout) as { digest: string; tags: string[]; layers: unknown[] }[];
    const img = images.find((i) => i.tags.includes(IMAGE));
    assert.ok(img, `image list has ${IMAGE}: ${ls.stdout}`);
    assert.ok(img.layers.length >= 3, 'several layers');
    const inspect = await d.api<{ indexDigest: string | null }>('GET', `/images/${encodeURIComponent(IMAGE)}`);
    assert.equal(inspect.status, 200);
    assert.ok(inspect.body.indexDigest, 'pulled through an image index');
  });

  test('run streams output and returns the exit code; whiteouts and opaque dirs applied', async () => {
    let r = await d.cli(['run', '--rm', IMAGE, 'echo', 'hello from nimbus']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hello from nimbus\n');
    r = await d.cli(['run', '--rm', IMAGE, 'sh', '-c', 'echo to-stderr >&2; exit 3']);
    assert.equal(r.code, 3);
    assert.match(r.stderr, /to-stderr/);
    r = await d.cli(['run', '--rm', IMAGE, 'sh', '-c', 'test ! -e /data/removed.txt && ls /data/opaque && cat /etc/nimbus-release']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.doesNotMatch(r.stdout, /old/, 'opaque dir hides lower content');
    const all = await d.api<C[]>('GET', '/containers?all=true');
    assert.equal(all.body.length, 0, '--rm removed every container');
  });

  test('detached lifecycle: ps, exec, logs, stats, pause, unpause, stop, start, rm', async () => {
    let r = await d.cli(['run', '-d', '--name', 'life', '--memory', '64m', '--cpus', '0.5', '--pids-limit', '50', IMAGE, 'sh', '-c', 'echo started; exec sleep 600']);
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    // info's default runtime is the one a container gets when it asks for none
    const info = (await d.api('GET', '/info')).body as { agent: { runtimes: { name: string; default?: boolean }[] } };
    const inspected = (await d.api('GET', '/containers/life')).body as { runtime: string };
    assert.equal(info.agent.runtimes.find((x) => x.default)?.name, inspected.runtime);
    r = await d.cli(['ps', '-q']);
    assert.ok(r.stdout.includes(id.slice(0, 12)));
    r = await d.cli(['exec', 'life', 'sh', '-c', 'echo in-container; exit 5']);
    assert.equal(r.code, 5);
    assert.equal(r.stdout, 'in-container\n');
    await waitFor('log line', async () => ((await d.cli(['logs', 'life'])).stdout.includes('started') ? true : undefined));
    const stats = await d.api<{ memoryBytes: number; memoryLimitBytes?: number; pids: number }>('GET', '/containers/life/stats');
    assert.equal(stats.status, 200);
    assert.ok(stats.body.memoryBytes > 0);
    assert.equal(stats.body.memoryLimitBytes, 64 * 1024 * 1024);
    assert.ok(stats.body.pids >= 1);
    assert.equal((await d.cli(['pause', 'life'])).code, 0);
    assert.equal((await d.api<C>('GET', '/containers/life')).body.status, 'paused');
    assert.equal((await d.cli(['unpause', 'life'])).code, 0);
    assert.equal((await d.api<C>('GET', '/containers/life')).body.status, 'running');
    r = await d.cli(['rm', 'life']);
    assert.notEqual(r.code, 0, 'rm of a running container is refused');
    assert.match(r.stderr, /stop it first|--force/);
    r = await d.cli(['stop', '-t', '1', 'life']);
    assert.equal(r.code, 0, r.stderr);
    const stopped = (await d.api<C>('GET', '/containers/life')).body;
    assert.equal(stopped.status, 'exited');
    assert.equal(stopped.exitCode, 137, 'sleep ignores SIGTERM as pid 1, so SIGKILL after the grace period');
    assert.equal((await d.cli(['start', 'life'])).code, 0);
    assert.equal((await d.api<C>('GET', '/containers/life')).body.status, 'running');
    assert.equal((await d.cli(['rm', '-f', 'life'])).code, 0);
    assert.equal((await d.api('GET', '/containers/life')).status, 404);
  });

  test('stop sends the configured stop signal first', async () => {
    const r = await d.cli(['run', '-d', '--name', 'trapper', '--stop-signal', 'SIGUSR1', IMAGE, 'sh', '-c', 'trap "echo got usr1; exit 0" USR1; echo ready; while true; do sleep 0.1; done']);
    assert.equal(r.code, 0, r.stderr);
    await waitFor('ready', async () => ((await d.cli(['logs', 'trapper'])).stdout.includes('ready') ? true : undefined));
    assert.equal((await d.cli(['stop', '-t', '10', 'trapper'])).code, 0);
    const c = (await d.api<C>('GET', '/containers/trapper')).body;
    assert.equal(c.exitCode, 0, 'the trap ran: it exited by itself, not by SIGKILL');
    assert.match((await d.cli(['logs', 'trapper'])).stdout, /got usr1/);
    await d.cli(['rm', 'trapper']);
  });

  test('memory limit: the OOM killer ends the process, inspect says OOMKilled and 137', async () => {
    const r = await d.cli(['run', '--name', 'oom', '--memory', '16m', IMAGE, 'sh', '-c', 'x=a; while true; do x="$x$x"; done']);
    assert.equal(r.code, 137, r.stderr);
    const c = (await d.api<C>('GET', '/containers/oom')).body;
    assert.equal(c.exitCode, 137);
    assert.equal(c.oomKilled, true);
    await d.cli(['rm', 'oom']);
    assert.deepEqual(readdirSync(d.cwd), [], "conmon's oom marker stays in the container's directory, not the daemon's cwd");
  });

  test('restart policy on-failure:2 restarts twice then leaves it exited', async () => {
    const r = await d.cli(['run', '-d', '--name', 'flaky', '--restart', 'on-failure:2', IMAGE, 'sh', '-c', 'exit 4']);
    assert.equal(r.code, 0, r.stderr);
    const c = await waitFor('two restarts', async () => {
      const x = (await d.api<C>('GET', '/containers/flaky')).body;
      return x.restartCount === 2 && x.status === 'exited' ? x : undefined;
    });
    assert.equal(c.exitCode, 4);
    await d.cli(['rm', 'flaky']);
  });

  test('errors are typed and clear', async () => {
    let r = await d.api<{ error: { code: string; message: string } }>('GET', '/containers/does-not-exist');
    assert.equal(r.status, 404);
    assert.equal(r.body.error.code, 'NotFound');
    r = await d.api('POST', '/containers', { image: IMAGE, memoryBytes: 'lots' });
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'InvalidArgument');
    const run = await d.cli(['run', '--rm', `${registry.host}/nimbus-test/nope:latest`, 'true']);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /not ?found|unknown/i);
    const img = await d.cli(['run', '-d', '--name', 'holder', IMAGE, 'sleep', '600']);
    assert.equal(img.code, 0);
    r = await d.api('DELETE', `/images/${encodeURIComponent(IMAGE)}`);
    assert.equal(r.status, 409, 'an image in use is not removed');
    await d.cli(['rm', '-f', 'holder']);
  });

  test('a program the image lacks: the same 400 on the warm and the cold path, and nothing left', async () => {
    type Pool = { ready: number; hits: number; sizing: { target: number } };
    const pool = async () => (await d.api<{ agent: { warmPool: Pool } }>('GET', '/info')).body.agent.warmPool;
    const made = await d.api<C>('POST', '/containers', { image: IMAGE, cmd: ['true'] }); // makes the template hot
    assert.equal(made.status, 201);
    await d.api('DELETE', `/containers/${made.body.id}`);
    // every template full, this one's too (the tests before made others hot: the quota test's default size)
    const before = await waitFor('a settled warm pool', async () => {
      const p = await pool();
      return p.ready > 0 && p.ready >= p.sizing.target ? p : undefined;
    });
    type Err = { error: { code: string; message: string } };
    const warm = await d.api<Err>('POST', '/containers', { image: IMAGE, cmd: ['/nonexistent'] });
    assert.equal((await pool()).hits, before.hits + 1, 'the request took the warm path');
    const cold = await d.api<Err>('POST', '/containers', { image: IMAGE, cmd: ['/nonexistent'], hostname: 'coldpath' }); // a hostname is never served warm
    for (const r of [warm, cold]) {
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.error.code, 'InvalidArgument');
      assert.match(r.body.error.message, /cannot run "\/nonexistent": no such file in the image/);
    }
    assert.equal(warm.body.error.message, cold.body.error.message);
    assert.equal((await d.api<C[]>('GET', '/containers?all=true')).body.length, 0, 'neither left a container');
  });


  test('a tampered layer is refused with DataLoss and nothing is half-stored', async () => {
    await pushTamperedImage(registry);
    const blobsBefore = readdirSync(join(d.home, 'content/blobs/sha256')).length;
    const r = await d.cli(['image', 'pull', `${registry.host}/nimbus-test/tampered:latest`]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /DataLoss: .*digest mismatch/);
    const after = readdirSync(join(d.home, 'content/blobs/sha256')).length;
    assert.ok(after - blobsBefore <= 2, 'only the manifest and config were stored, never the bad layer');
    assert.deepEqual(readdirSync(join(d.home, 'content/ingest')), [], 'no partial download left');
    const ls = JSON.parse((await d.cli(['image', 'ls', '-o', 'json'])).stdout) as { tags: string[] }[];
    assert.ok(!ls.some((i) => i.tags.some((t) => t.includes('tampered'))), 'no image recorded');
  });

  test('zstd layers: pulled, verified against the diff ids, unpacked and run', async () => {
    await pushZstdImage(registry);
    const ref = `${registry.host}/nimbus-test/zstd:latest`;
    let r = await d.cli(['image', 'pull', ref]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(['run', '--rm', ref, 'sh', '-c', 'cat /etc/nimbus-release; ls /data/opaque; test ! -e /data/removed.txt && echo whiteout-ok']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'nimbus test image 1\nnew.txt\nwhiteout-ok\n');
    assert.equal((await d.cli(['image', 'rm', ref])).code, 0);
  });

  test('import an OCI layout tar and a docker save tar, run from them, then rm and prune collect the garbage', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'nimbus-archives-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const { ociLayout, dockerSave } = await imageArchives(registry.images, dir);
    let r = await d.cli(['image', 'import', ociLayout]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /docker\.io\/imported\/busybox:oci/);
    r = await d.cli(['image', 'import', dockerSave]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /imported\/saved:v1/);
    r = await d.cli(['run', '--rm', 'imported/saved:v1', 'cat', '/etc/nimbus-release']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'nimbus test image 1\n');
    r = await d.cli(['run', '--rm', 'imported/busybox:oci', 'true']);
    assert.equal(r.code, 0, r.stderr);

    const blobs = () => readdirSync(join(d.home, 'content/blobs/sha256')).length;
    const before = blobs();
    assert.equal((await d.cli(['image', 'rm', 'imported/saved:v1'])).code, 0);
    assert.ok(blobs() < before, 'removing the last reference collects its unshared blobs');
    assert.equal((await d.cli(['image', 'rm', 'imported/busybox:oci'])).code, 0);
    r = await d.cli(['image', 'prune', '-a']);
    assert.equal(r.code, 0, r.stderr);
  });

  test('openapi and events', async () => {
    const doc = await d.api<{ openapi: string; paths: Record<string, unknown> }>('GET', '/openapi.json');
    assert.equal(doc.body.openapi, '3.0.3');
    assert.ok(doc.body.paths['/containers/{id}/exec']);
    const ops = await d.api<{ kind: string; status: string }[]>('GET', '/operations');
    assert.ok(ops.body.some((o) => o.kind === 'image.pull' && o.status === 'succeeded'));
  });

  test('containers survive kill -9 of nimbusd: still running, logs and exit codes kept; orphans reconciled', async () => {
    let r = await d.cli(['run', '-d', '--name', 'survivor', IMAGE, 'sh', '-c', 'echo before; sleep 600']);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(['run', '-d', '--name', 'quitter', IMAGE, 'sh', '-c', 'echo going; sleep 2; echo gone; exit 7']);
    assert.equal(r.code, 0, r.stderr);
    const before = (await d.api<C>('GET', '/containers/survivor')).body;
    await waitFor('survivor log', async () => ((await d.cli(['logs', 'survivor'])).stdout.includes('before') ? true : undefined));

    await d.kill('SIGKILL');
    await new Promise((res) => setTimeout(res, 3000)); // quitter exits while nobody watches
    assert.ok(before.pid && existsSync(`/proc/${before.pid}`), 'the container process outlived the daemon');
    await d.restart();

    const survivor = (await d.api<C>('GET', '/containers/survivor')).body;
    assert.equal(survivor.status, 'running');
    assert.equal((await d.cli(['logs', 'survivor'])).stdout, 'before\n');
    const quitter = await waitFor('quitter exit recorded', async () => {
      const q = (await d.api<C>('GET', '/containers/quitter')).body;
      return q.status === 'exited' ? q : undefined;
    });
    assert.equal(quitter.exitCode, 7);
    assert.equal((await d.cli(['logs', 'quitter'])).stdout, 'going\ngone\n');
    assert.equal((await d.cli(['rm', '-f', 'survivor', 'quitter'])).code, 0);
    // Host state goes in the background after rm (agent/reaper.ts); warm containers are not containers.
    const warmIds = async () => new Set((await d.api<{ agent: { warmPool: { ready: number } } }>('GET', '/info')).body.agent.warmPool.ready ? await warmContainerIds() : []);
    await waitFor('container state removed from the host', async () => {
      const warm = await warmIds();
      const left = readdirSync(join(d.home, 'containers/containers')).filter((n) => /^[0-9a-f]{64}$/.test(n) && !warm.has(n));
      return left.length === 0 ? true : undefined;
    });
  });

  test('quota: container creates are admitted by the ledger, refused past the limit, released on rm, persisted across restarts', async () => {
    assert.equal((await d.api<C[]>('GET', '/containers?all=true')).body.length, 0, 'starts with no containers');
    const inside = (name: string, cmd: string) => d.cliOk(['exec', name, 'sh', '-c', cmd]).then((o) => o.trim());
    // memory unlimited: a container without --memory is best effort (no limit, the OOM killer's first pick)
    assert.equal((await d.cliOk(['run', '--rm', IMAGE, 'cat', '/proc/1/oom_score_adj'])).trim(), '1000');
    let r = await d.cli(['quota', 'set', 'default', '--instances', '2', '--memory', '1g']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await d.cli(['run', '-d', '--name', 'q1', '--memory', '64m', IMAGE, 'sleep', '600'])).code, 0);
    assert.equal((await d.cli(['run', '-d', '--name', 'q2', IMAGE, 'sleep', '600'])).code, 0);
    // memory limited: one without --memory is given the default size, limited and charged
    const q2 = (await d.api<C & { config: { memoryBytes?: number } }>('GET', '/containers/q2')).body;
    assert.equal(q2.config.memoryBytes, 512 * 1024 * 1024, 'the default size, on the record');
    assert.equal((await d.api<{ containers: { memoryDefaultBytes: number } }>('GET', '/info')).body.containers.memoryDefaultBytes, 512 * 1024 * 1024, 'info says it');
    assert.match(await d.cliOk(['info']), /^Container memory default: 512 MiB where a project's memory is limited/m);
    assert.equal(Number(await inside('q2', 'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max')), 512 * 1024 * 1024, 'and in its cgroup');
    assert.deepEqual([await inside('q1', 'cat /proc/1/oom_score_adj'), await inside('q2', 'cat /proc/1/oom_score_adj')], ['0', '0'], 'sized: not best effort');
    r = await d.cli(['run', '-d', '--name', 'q3', IMAGE, 'sleep', '600']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /QuotaExceeded: .*instances/);
    assert.equal((await d.api('GET', '/containers/q3')).status, 404, 'a refused create leaves nothing behind');
    r = await d.cli(['quota', 'explain', '--instances', '1']);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /rejected/);
    type View = { resources: Record<string, { hard: number; used: number; free: number }> };
    let view = JSON.parse((await d.cli(['quota', 'show', '-o', 'json'])).stdout) as View;
    assert.deepEqual([view.resources.instances!.hard, view.resources.instances!.used, view.resources.instances!.free], [2, 2, 0]);
    assert.equal(view.resources.memory!.used, 64 + 512, 'the asked 64 MiB and the default 512');

    await d.kill('SIGKILL');
    await d.restart();
    view = JSON.parse((await d.cli(['quota', 'show', '-o', 'json'])).stdout) as View;
    assert.equal(view.resources.instances!.used, 2, 'the ledger survived a kill -9');

    assert.equal((await d.cli(['rm', '-f', 'q1'])).code, 0);
    // the project's own default, as Kubernetes' LimitRange per namespace: 256 MiB here, not the daemon's 512
    assert.equal((await d.cli(['quota', 'set', 'default', '--container-memory', '256m'])).code, 0);
    assert.match(await d.cliOk(['quota', 'show']), /^a container without --memory: 256MiB \(set here\)$/m);
    r = await d.cli(['run', '-d', '--name', 'q3', IMAGE, 'sleep', '600']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await d.api<{ config: { memoryBytes?: number } }>('GET', '/containers/q3')).body.config.memoryBytes, 256 * 1024 * 1024);
    const audit = JSON.parse((await d.cli(['quota', 'audit', '-o', 'json'])).stdout) as { kind: string }[];
    for (const kind of ['admit', 'reject', 'release']) assert.ok(audit.some((e) => e.kind === kind), `audit has ${kind}`);
    assert.equal((await d.cli(['rm', '-f', 'q2', 'q3'])).code, 0);
    assert.equal((await d.cli(['quota', 'set', 'default', '--instances', '100000', '--memory', 'unlimited', '--container-memory', 'inherit'])).code, 0);
    assert.match(await d.cliOk(['quota', 'show']), /^a container without --memory: unlimited, best effort$/m);
  });

  test("storage: a container's writable layer holds its size and no more; in a project whose disk is limited one without --storage gets the default, charged", async () => {
    const inside = (name: string, cmd: string) => d.cliOk(['exec', name, 'sh', '-c', cmd]).then((o) => o.trim());
    // each sized layer's filesystem is a loop mount at its snapshot's directory; warm containers made for a sized template have theirs too
    const sizedLayers = () => {
      const meta = readSnapshotMetadataSync(join(d.home, 'snapshots', 'overlayfs'));
      const mounted = readFile('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => / \/dev\/loop\d+ /.test(l)).map((l) => l.split(' ')[4]);
      const dirs = Object.entries(meta.snapshots).filter(([, r]) => r.sizeBytes !== undefined).map(([key, r]) => ({ key, dir: join(d.home, 'snapshots', 'overlayfs', 'snapshots', String(r.id)) }));
      return { keys: dirs.map((x) => x.key), strays: mounted.filter((m) => m?.startsWith(join(d.home, 'snapshots')) && !dirs.some((x) => x.dir === m)) };
    };
    // asked for: 32 MiB, and a write of 64 fails as on a full disk
    const out = await d.cliOk(['run', '--rm', '--storage', '32m', IMAGE, 'sh', '-c', 'df -m / | tail -1; dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo rc=$?']);
    assert.match(out, /No space left on device/, out);
    assert.match(out, /rc=1/, out);
    const total = Number(/^\S+\s+(\d+)/m.exec(out.split('\n')[0] ?? '')?.[1]);
    assert.ok(total > 16 && total <= 32, `df sees a filesystem of its size: ${out.split('\n')[0]}`);
    // an unlimited project: an unsized layer is unbounded, as under Docker (the host's filesystem)
    const free = await d.cliOk(['run', '--rm', IMAGE, 'sh', '-c', 'df -m / | tail -1']);
    assert.ok(Number(/^\S+\s+(\d+)/.exec(free.trim())?.[1]) > 10_000, free);
    // disk limited: the default 1 GiB layer, charged; the next does not fit and the refusal says why
    assert.equal((await d.cli(['quota', 'set', 'default', '--disk', '1500m'])).code, 0);
    assert.match(await d.cliOk(['quota', 'show']), /^a container without --storage: a writable layer of 1024MiB, charged to disk \(inherited\)$/m);
    assert.equal((await d.cli(['run', '-d', '--name', 's1', IMAGE, 'sleep', '600'])).code, 0);
    assert.equal((await d.api<{ config: { storageBytes?: number } }>('GET', '/containers/s1')).body.config.storageBytes, 1024 ** 3, 'on the record');
    const s1 = Number(/^\S+\s+(\d+)/.exec(await inside('s1', 'df -m / | tail -1'))?.[1]);
    assert.ok(s1 > 900 && s1 <= 1024, `s1's layer is a 1 GiB filesystem: ${s1} MiB`);
    type View = { resources: Record<string, { used: number }> };
    assert.equal((JSON.parse((await d.cli(['quota', 'show', '-o', 'json'])).stdout) as View).resources.disk!.used, 1024);
    const r = await d.cli(['run', '-d', '--name', 's2', IMAGE, 'sleep', '600']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /QuotaExceeded: .*disk.*without --storage has a writable layer of 1024 MiB/);
    assert.equal((await d.cli(['run', '-d', '--name', 's2', '--storage', '400m', IMAGE, 'sleep', '600'])).code, 0, 'a smaller one fits');
    // ps -s: what each layer holds, measured on its host, beside its size
    await inside('s1', 'dd if=/dev/zero of=/two bs=1M count=2 2>/dev/null');
    const listed = (await d.api<Array<{ name: string; sizeRw?: number }>>('GET', '/containers?size=true')).body;
    const s1Rw = listed.find((c) => c.name === 's1')?.sizeRw ?? 0;
    assert.ok(s1Rw >= 2 * 1024 * 1024 && s1Rw < 3 * 1024 * 1024, `s1's layer holds its 2 MiB: ${s1Rw}`);
    assert.equal((await d.api<Array<{ sizeRw?: number }>>('GET', '/containers')).body[0]?.sizeRw, undefined, 'measured only when asked');
    const ps = await d.cliOk(['ps', '-s']);
    assert.match(ps, /s1\s+2\.\d\dMiB \/ 1\.00GiB$/m, ps);
    assert.match(ps, /s2\s+\d+(\.\d+)?(B|KiB) \/ 400\.00MiB$/m, ps);
    assert.match(await d.cliOk(['info']), /^Container storage default: a writable layer of 1024 MiB where a project's disk is limited/m);
    // the project's own default: 64 MiB here, not the daemon's 1 GiB
    assert.equal((await d.cli(['quota', 'set', 'default', '--container-storage', '64m'])).code, 0);
    assert.match(await d.cliOk(['quota', 'show']), /^a container without --storage: a writable layer of 64MiB, charged to disk \(set here\)$/m);
    const small = await d.cliOk(['run', '--rm', IMAGE, 'sh', '-c', 'df -m / | tail -1']);
    const smallMiB = Number(/^\S+\s+(\d+)/.exec(small.trim())?.[1]);
    assert.ok(smallMiB > 32 && smallMiB <= 64, `the project's 64 MiB: ${small}`);
    assert.equal((await d.cli(['quota', 'set', 'default', '--container-storage', 'inherit'])).code, 0);
    const ids = await Promise.all(['s1', 's2'].map(async (n) => (await d.api<{ id: string }>('GET', `/containers/${n}`)).body.id));
    assert.ok(ids.every((id) => sizedLayers().keys.includes(id)), 'both layers sized');
    assert.equal((await d.cli(['rm', '-f', 's1', 's2'])).code, 0);
    assert.equal((JSON.parse((await d.cli(['quota', 'show', '-o', 'json'])).stdout) as View).resources.disk!.used, 0, 'given back');
    assert.equal((await d.cli(['quota', 'set', 'default', '--disk', 'unlimited'])).code, 0);
    // the layers' filesystems go with their containers (the reaper's background removal)
    await waitFor('sized layers unmounted', async () => {
      const now = sizedLayers();
      return ids.some((id) => now.keys.includes(id)) ? undefined : now;
    });
    assert.deepEqual(sizedLayers().strays, [], 'no loop mount without its sized snapshot');
  });

  test('reconciliation on start removes container state the store does not know', async () => {
    const r = await d.cli(['run', '-d', '--name', 'orphan', IMAGE, 'sleep', '600']);
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    await d.kill('SIGKILL');
    execFileSync('sqlite3', [join(d.home, 'nimbus.db'), `DELETE FROM containers WHERE id = '${id}'`]);
    await d.restart();
    await waitFor('orphan removed', async () => (readdirSync(join(d.home, 'containers/containers')).includes(id) ? undefined : true));
    const mounts = readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mounts.includes(id), 'its rootfs is unmounted');
    assert.equal((await d.api('GET', '/containers/orphan')).status, 404);
  });
});
