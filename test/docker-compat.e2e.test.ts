/**
 * Docker-compatibility gaps closed end to end, with the real docker CLI and the nimbus CLI
 * against a real nimbusd and the loopback registry fixture: port ranges (-p 8000-8010:80-90,
 * -p 8000-8010:80, -p 80-90, with an address and /udp), published on loopback only; the nimbus
 * CLI's run -i without -t, rm -v and --volumes-from; a new volume filled with the image's files
 * (copy-up, nocopy).
 * DOCKER_CONFIG is a temp dir: the host's docker config is never read.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { pushVolumeImage, startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { DOCKER_CLI, dockerCli, type DockerCli } from './helpers/docker-cli.js';

let d: DaemonProcess | undefined;
let registry: TestRegistry | undefined;
let config: string;
let IMAGE: string;
let cli: DockerCli;
const docker = (args: string[]) => cli.run(args);
const ok = (args: string[]) => cli.ok(args);

async function nimbus(args: string[], input?: string): Promise<string> {
  const r = await d!.cli(args, input !== undefined ? { input } : {});
  assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Whether the port can be listened on now, on every address (what a publish needs). */
function listenable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '0.0.0.0', () => s.close(() => resolve(true)));
  });
}

/** `n` consecutive ports free now, below the kernel's ephemeral range (so no outgoing connection takes one meanwhile). */
async function freeRange(n: number): Promise<number> {
  for (let tries = 0; tries < 200; tries++) {
    const base = randomInt(20_000, 32_000 - n);
    let free = true;
    for (let p = base; p < base + n && free; p++) free = await listenable(p);
    if (free) return base;
  }
  throw new Error(`no ${n} consecutive free ports`);
}

/** The body of GET http://127.0.0.1:port/, retried while the server comes up. */
async function fetchBody(port: number, want: string): Promise<string> {
  let body = '';
  for (let i = 0; i < 50 && body !== want; i++) {
    body = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) }).then(async (r) => (await r.text()).trim(), () => '');
    if (body !== want) await new Promise((r) => setTimeout(r, 100));
  }
  return body;
}

/** A shell that serves "NAME-PORT" over HTTP on each container port given. */
const serving = (name: string, ports: number[]) =>
  ['sh', '-c', `${ports.map((p) => `mkdir -p /w${p} && echo ${name}-${p} > /w${p}/index.html && busybox httpd -p ${p} -h /w${p}`).join(' && ')} && exec sleep 3600`];

/** `docker port NAME` as [container port, host address, host port] rows, sorted. */
async function portsOf(name: string): Promise<Array<[string, string, number]>> {
  return (await ok(['port', name])).trim().split('\n').filter(Boolean).map((l) => {
    const m = /^(\d+\/(?:tcp|udp)) -> ([\d.]+):(\d+)$/.exec(l);
    assert.ok(m, l);
    return [m[1]!, m[2]!, Number(m[3])] as [string, string, number];
  }).sort((a, b) => a[0].localeCompare(b[0]));
}

describe('Docker compatibility: port ranges; nimbus run -i, rm -v, --volumes-from; VOLUME copy-up', { skip: DOCKER_CLI ? false : 'no docker CLI on this machine (apt-get install docker.io)', concurrency: false, timeout: 300_000 }, () => {
  before(async () => {
    config = mkdtempSync(join(tmpdir(), 'nimbus-compat-config-'));
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
    cli = dockerCli(`${d.home}/docker.sock`, join(config, 'docker'));
    await ok(['pull', IMAGE]);
  });
  after(async () => {
    try {
      await d?.destroy();
    } finally {
      await registry?.stop();
      rmSync(config, { recursive: true, force: true });
    }
  }, { timeout: 60_000 });

  test('docker run -p with ranges: pairwise, one port of a host range, each on a port the host chooses; ps collapses them; conflicts and the cap refused', async () => {
    // -p IP:A-B:C-D: pairwise, each reached over loopback
    const base = await freeRange(2);
    await ok(['run', '-d', '--name', 'pairs', '-p', `127.0.0.1:${base}-${base + 1}:8080-8081`, IMAGE, ...serving('pairs', [8080, 8081])]);
    assert.deepEqual(await portsOf('pairs'), [['8080/tcp', '127.0.0.1', base], ['8081/tcp', '127.0.0.1', base + 1]]);
    assert.equal(await fetchBody(base, 'pairs-8080'), 'pairs-8080');
    assert.equal(await fetchBody(base + 1, 'pairs-8081'), 'pairs-8081');
    // ps lists them apart: the CLI collapses consecutive mappings itself only where host and container ports are equal (below), as against dockerd
    assert.equal((await ok(['ps', '--format', '{{.Ports}}', '--filter', 'name=pairs'])).trim(), `127.0.0.1:${base}->8080/tcp, 127.0.0.1:${base + 1}->8081/tcp`);
    const bindings = JSON.parse(await ok(['inspect', '--format', '{{json .HostConfig.PortBindings}}', 'pairs'])) as Record<string, Array<{ HostIp: string; HostPort: string }>>;
    assert.deepEqual(bindings, { '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: String(base) }], '8081/tcp': [{ HostIp: '127.0.0.1', HostPort: String(base + 1) }] });
    // a port of the range another container holds is a conflict, as for single ports
    const clash = await docker(['run', '-d', '--name', 'clash', '-p', `127.0.0.1:${base + 1}:80`, IMAGE, 'sleep', '60']);
    assert.notEqual(clash.code, 0);
    assert.match(clash.stderr, new RegExp(`host port ${base + 1}/tcp is already published by pairs`));

    // -p IP:A-C:PORT: one port of the range, chosen by the host: not the one a host process holds, nor one published
    const range = await freeRange(3);
    const holder: Server = createServer();
    await new Promise<void>((r) => holder.listen(range, '127.0.0.1', r));
    try {
      await ok(['run', '-d', '--name', 'one', '-p', `127.0.0.1:${range}-${range + 2}:8080`, IMAGE, ...serving('one', [8080])]);
      const [[, , chosen]] = await portsOf('one') as [[string, string, number]];
      assert.equal(chosen, range + 1, `the host passed over ${range} (a host process holds it): ${chosen}`);
      assert.equal(await fetchBody(chosen, 'one-8080'), 'one-8080');
      await ok(['run', '-d', '--name', 'two', '-p', `127.0.0.1:${range}-${range + 2}:8080`, IMAGE, ...serving('two', [8080])]);
      assert.deepEqual(await portsOf('two'), [['8080/tcp', '127.0.0.1', range + 2]], 'never a port another container publishes');
      assert.equal(await fetchBody(range + 2, 'two-8080'), 'two-8080');
      const full = await docker(['run', '-d', '--name', 'three', '-p', `127.0.0.1:${range}-${range + 2}:8080`, IMAGE, 'sleep', '60']);
      assert.notEqual(full.code, 0);
      assert.match(full.stderr, new RegExp(`no free host port in ${range}-${range + 2}/tcp`));
      // the chosen port stays the container's across a restart
      await ok(['restart', '-t', '0', 'one']);
      assert.deepEqual(await portsOf('one'), [['8080/tcp', '127.0.0.1', range + 1]]);
    } finally {
      holder.close();
    }

    // -p A-B (no host port): each container port on a port the host chooses; with /udp
    const udp = await freeRange(2);
    await ok(['run', '-d', '--name', 'each', '-p', '127.0.0.1::9000-9001', '-p', `127.0.0.1:${udp}-${udp + 1}:${udp}-${udp + 1}/udp`, IMAGE, 'sleep', '3600']);
    const each = await portsOf('each');
    assert.deepEqual(each.map(([c, ip]) => [c, ip]), [[`${udp}/udp`, '127.0.0.1'], [`${udp + 1}/udp`, '127.0.0.1'], ['9000/tcp', '127.0.0.1'], ['9001/tcp', '127.0.0.1']]);
    assert.deepEqual(each.slice(0, 2).map(([, , p]) => p), [udp, udp + 1]);
    for (const [, , p] of each.slice(2)) assert.ok(p >= 49153 && p <= 65535, `${p} is in dockerd's range`);
    assert.match(await ok(['ps', '--format', '{{.Ports}}', '--filter', 'name=each']), new RegExp(`127\\.0\\.0\\.1:${udp}-${udp + 1}->${udp}-${udp + 1}/udp`), 'equal host and container ports: collapsed by the CLI');

    // the cap: a range past 256 ports is refused, saying why; nothing is left behind
    const big = await docker(['run', '-d', '--name', 'big', '-p', '127.0.0.1::2000-2300', IMAGE, 'sleep', '60']);
    assert.notEqual(big.code, 0);
    assert.match(big.stderr, /publishes 301 ports; a container publishes at most 256 \(each is a rule on its host/);
    assert.doesNotMatch(await ok(['ps', '-a', '--format', '{{.Names}}']), /^(big|three|clash)$/m);
    await ok(['rm', '-f', 'pairs', 'one', 'two', 'each']);
    assert.equal(await listenable(base), true, 'the ports are let go with their containers');
  });

  test('nimbus run -p with ranges, through the Nimbus API; its refusals are usage errors', async () => {
    const base = await freeRange(2);
    await nimbus(['run', '-d', '--name', 'nranges', '-p', `127.0.0.1:${base}-${base + 1}:8080-8081`, '-p', `127.0.0.1:${base}-${base + 1}:9000/udp`, IMAGE, ...serving('nranges', [8080, 8081])]);
    assert.equal(await fetchBody(base, 'nranges-8080'), 'nranges-8080');
    assert.equal(await fetchBody(base + 1, 'nranges-8081'), 'nranges-8081');
    const shown = await d!.api<{ config: { ports: unknown[] } }>('GET', '/containers/nranges');
    assert.deepEqual(shown.body.config.ports, [
      { protocol: 'tcp', hostIp: '127.0.0.1', hostPort: base, containerPort: 8080 },
      { protocol: 'tcp', hostIp: '127.0.0.1', hostPort: base + 1, containerPort: 8081 },
      { protocol: 'udp', hostIp: '127.0.0.1', hostPort: base, containerPort: 9000 },
    ], 'the udp range chose its first port (the tcp ones do not hold udp); the record keeps the port chosen');
    const bad = await d!.cli(['run', '-d', '-p', '8000-8010:80-85', IMAGE, 'true']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /the host and container ranges differ in length/);
    const api = await d!.api<{ message?: string; error?: { message: string } }>('POST', '/containers', { image: IMAGE, ports: [{ protocol: 'tcp', hostPort: 8010, hostPortEnd: 8000, containerPort: 80 }] });
    assert.equal(api.status, 400, JSON.stringify(api.body));
    assert.match(JSON.stringify(api.body), /host port range 8010-8000 is not a range/);
    await nimbus(['rm', '-f', 'nranges']);
  });

  test('nimbus run -i without -t: stdin piped to the process, its end the process\'s; stdout and stderr apart; the exit code', async () => {
    const hi = await d!.cli(['run', '-i', '--rm', IMAGE, 'cat'], { input: 'hi\n' });
    assert.equal(hi.code, 0, hi.stderr);
    assert.equal(hi.stdout, 'hi\n');
    const lines = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const both = await d!.cli(['run', '-i', '--rm', '--name', 'piped', IMAGE, 'sh', '-c', 'wc -l; echo to-stderr >&2; exit 3'], { input: lines });
    assert.equal(both.code, 3, both.stderr);
    assert.equal(both.stdout.trim(), '2000', 'every line arrived, then end-of-file');
    assert.match(both.stderr, /^to-stderr$/m);
    assert.doesNotMatch(both.stdout, /to-stderr/);
    assert.doesNotMatch(await ok(['ps', '-a', '--format', '{{.Names}}']), /^piped$/m, '--rm removed it');
    // an attach without a terminal and without stdin is refused: its output is the log's
    await nimbus(['run', '-d', '--name', 'quiet', IMAGE, 'sleep', '60']);
    const refused = await d!.cli(['attach', 'quiet']);
    assert.notEqual(refused.code, 0);
    await nimbus(['rm', '-f', 'quiet']);
  });

  test('nimbus rm -v removes the anonymous volumes, never named ones; nimbus run --volumes-from (ro, rw, as it has them)', async () => {
    const volumes = async () => (await ok(['volume', 'ls', '-q'])).trim().split('\n').filter(Boolean);
    const had = new Set(await volumes());
    const fresh = async () => (await volumes()).filter((v) => !had.has(v)).sort();
    await nimbus(['run', '-d', '--name', 'vsrc', '-v', '/data', '-v', 'nkeep:/keep', IMAGE, 'sh', '-c', 'echo shared > /data/f; echo kept > /keep/f; exec sleep 3600']);
    const made = await fresh();
    assert.equal(made.length, 2, made.join(' '));
    assert.ok(made.includes('nkeep') && made.some((v) => /^[0-9a-f]{64}$/.test(v)), made.join(' '));
    // --volumes-from NAME:ro: both of its volumes, read-only
    const ro = await d!.cli(['run', '--rm', '--volumes-from', 'vsrc:ro', IMAGE, 'sh', '-c', 'sleep 0.2; cat /data/f /keep/f; touch /data/g 2>/dev/null || echo read-only']);
    assert.equal(ro.code, 0, ro.stderr);
    assert.deepEqual(ro.stdout.trim().split('\n'), ['shared', 'kept', 'read-only']);
    // without a mode: as it has them (read-write); a path the request mounts itself wins
    const rw = await d!.cli(['run', '--rm', '--volumes-from', 'vsrc', '--tmpfs', '/keep', IMAGE, 'sh', '-c', 'echo more >> /data/f && cat /data/f; ls /keep | wc -l']);
    assert.equal(rw.code, 0, rw.stderr);
    assert.deepEqual(rw.stdout.trim().split('\n'), ['shared', 'more', '0']);
    const bad = await d!.cli(['run', '--rm', '--volumes-from', 'vsrc:rx', IMAGE, 'true']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /invalid --volumes-from "vsrc:rx": CONTAINER\[:ro\|rw\]/);
    const missing = await d!.cli(['run', '--rm', '--volumes-from', 'no-such-one', IMAGE, 'true']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /no-such-one/);
    // rm -v: the anonymous volume goes with it, the named one stays
    await nimbus(['rm', '-f', '-v', 'vsrc']);
    assert.deepEqual(await fresh(), ['nkeep']);
    await nimbus(['run', '-d', '--name', 'vplain', '-v', '/data', IMAGE, 'sleep', '3600']);
    assert.equal((await fresh()).length, 2);
    await nimbus(['rm', '-f', 'vplain']);
    const left = (await fresh()).filter((v) => v !== 'nkeep');
    assert.equal(left.length, 1, 'without -v the anonymous volume stays, as docker rm');
    await ok(['volume', 'rm', 'nkeep', left[0]!]);
  });

  test('a new volume at a path where the image has files gets them first (owners, modes, symlinks as they are); nocopy, a used or older volume does not', async () => {
    const image = `${registry!.host}/nimbus-test/volumes:v1`;
    await pushVolumeImage(registry!, 'nimbus-test/volumes', 'v1');
    await ok(['pull', image]);
    const volumes = async () => (await ok(['volume', 'ls', '-q'])).trim().split('\n').filter(Boolean);
    const had = new Set(await volumes());
    // the image's VOLUMEs: anonymous volumes filled from the image; /evil climbs out of the root and lands on the image's /opt/inner
    const show = 'stat -c "%u:%g %a" /srv /srv/index.html; cat /srv/index.html /srv/sub/deep.txt; readlink /srv/escape; ls -A /evil';
    const anon = await docker(['run', '--rm', image, 'sh', '-c', show]);
    assert.equal(anon.code, 0, anon.stderr);
    assert.deepEqual(anon.stdout.trim().split('\n'), ['1000:1000 750', '1000:1001 640', 'from the image', 'deep', '/etc/shadow', 'inner.txt']);
    // a named volume made by the run: filled once; what the container changes stays, never copied again
    const first = await docker(['run', '--rm', '-v', 'cu-named:/srv', image, 'sh', '-c', 'cat /srv/index.html && rm /srv/index.html && echo mine > /srv/mine']);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(first.stdout, 'from the image\n');
    assert.deepEqual((await ok(['run', '--rm', '-v', 'cu-named:/srv', image, 'ls', '-A', '/srv'])).trim().split('\n'), ['escape', 'mine', 'sub']);
    // nocopy, as -v and as --mount: empty
    const count = 'ls -A /srv | wc -l; ls -A /srv';
    assert.equal((await ok(['run', '--rm', '-v', 'cu-nocopy:/srv:nocopy', image, 'sh', '-c', count])).trim(), '0', 'empty');
    assert.equal((await ok(['run', '--rm', '--mount', 'type=volume,source=cu-nocopy2,target=/srv,volume-nocopy', image, 'sh', '-c', count])).trim(), '0', 'empty');
    // a volume made before (docker volume create): not this run's, not filled
    await ok(['volume', 'create', 'cu-older']);
    assert.equal((await ok(['run', '--rm', '-v', 'cu-older:/srv', image, 'sh', '-c', count])).trim(), '0', 'empty');
    // the nimbus CLI: -v NAME:/path and -v /path filled, :nocopy not
    const n = await d!.cli(['run', '--rm', '-v', 'cu-cli:/srv', '-v', '/evil', image, 'sh', '-c', 'cat /srv/index.html; ls -A /evil']);
    assert.equal(n.code, 0, n.stderr);
    assert.equal(n.stdout, 'from the image\ninner.txt\n');
    assert.equal((await nimbus(['run', '--rm', '-v', 'cu-cli-nocopy:/srv:nocopy', image, 'sh', '-c', count])).trim(), '0', 'empty');
    for (const v of ['cu-named', 'cu-nocopy', 'cu-nocopy2', 'cu-older', 'cu-cli', 'cu-cli-nocopy']) await ok(['volume', 'rm', v]);
    assert.deepEqual((await volumes()).filter((v) => !had.has(v)), [], '--rm took the anonymous ones');
    await ok(['rmi', image]);
  });
});
