/**
 * Containers on any host, end to end: a real nimbusd (control plane and embedded agent "local")
 * and a second agent in a process of its own (`nimbusd agent`, its own home and its own network
 * namespace joined to this one by a veth pair, as a second host would be by a link), joined with
 * a token. The registry fixture serves the test image on this host's loopback; inside the second
 * host's namespace a relay on its own loopback reaches it over the link, so both hosts pull the
 * same reference. `run --host` places a container there: the image is pulled on that host, its
 * process runs there, and logs, exec, stats, stop and rm go through the control plane; a
 * container on each host at once; after rm nothing is left on the agent.
 */
import { GUEST_HOST_DIRS_ENV } from '../scripts/fixtures/guest.js';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { run } from '../src/core/exec.js';
import { agentInNamespace, removeAllInstances, mountsUnder, secondHost, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { request } from 'node:http';

/** The events buffered and to come on GET `path` (SSE) until `until` holds of what was seen; then the stream is closed. */
function eventsUntil(socketPath: string, path: string, until: (seen: Array<Record<string, unknown>>) => boolean, timeoutMs: number): Promise<Array<Record<string, unknown>>> {
  return new Promise((resolve, reject) => {
    const seen: Array<Record<string, unknown>> = [];
    let rest = '';
    const req = request({ socketPath, method: 'GET', path }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        const lines = (rest + chunk).split('\n');
        rest = lines.pop() ?? '';
        for (const l of lines) if (l.startsWith('data: ')) seen.push(JSON.parse(l.slice(6)) as Record<string, unknown>);
        if (until(seen)) {
          clearTimeout(timer);
          req.destroy();
          resolve(seen);
        }
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`events on ${path}: not there within ${timeoutMs} ms, saw ${JSON.stringify(seen)}`));
    }, timeoutMs);
    req.on('error', (e) => {
      if (!req.destroyed) reject(e);
    });
    req.end();
  });
}

const AGENT = 'host-b';

interface Container { id: string; name: string; status: string; host: string; pid: number | null }

/**
 * The registry, as the second host reaches it at the same reference: this side forwards the
 * link address to the registry's loopback port; in the namespace a node relay listens on the
 * namespace's loopback at the registry's port and forwards over the link.
 */
async function registryRelay(registryHost: string, host: SecondHost) {
  const port = Number(registryHost.split(':')[1]);
  const server: Server = createServer((s) => {
    const c = connect(port, '127.0.0.1');
    s.pipe(c).pipe(s);
    s.on('error', () => c.destroy());
    c.on('error', () => s.destroy());
  });
  await new Promise<void>((ok) => server.listen(port, host.hostAddress, ok));
  const script = `const net=require('net');net.createServer(s=>{const c=net.connect(${port},'${host.hostAddress}');s.pipe(c).pipe(s);s.on('error',()=>c.destroy());c.on('error',()=>s.destroy())}).listen(${port},'127.0.0.1',()=>console.log('relay up'))`;
  const relay = spawn('nsenter', [`--net=/run/netns/${host.ns}`, '--', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((ok, fail) => {
    relay.stdout!.on('data', (b: Buffer) => b.toString().includes('relay up') && ok());
    relay.once('exit', (code) => fail(new Error(`the registry relay exited with ${code}`)));
  });
  return {
    async stop() {
      if (relay.exitCode === null && relay.signalCode === null) {
        const exited = new Promise((r) => relay.once('exit', r));
        relay.kill('SIGKILL');
        await exited;
      }
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** `nimbusd agent` in the second host's namespace (agentInNamespace), named `name`. */
const agentProcess = (controlPlaneSocket: string, host: SecondHost, joinToken: string, name = AGENT) =>
  agentInNamespace(controlPlaneSocket, host, joinToken, { name, homePrefix: 'nimbus-hosts-agent', env: GUEST_HOST_DIRS_ENV });

/** cgroup directories named after a container, in any hierarchy. */
function cgroupsOf(id: string): string[] {
  const found: string[] = [];
  const roots = existsSync('/sys/fs/cgroup/memory') ? readdirSync('/sys/fs/cgroup').map((h) => join('/sys/fs/cgroup', h)) : ['/sys/fs/cgroup'];
  for (const r of roots) if (existsSync(join(r, 'nimbus', id))) found.push(join(r, 'nimbus', id));
  return found;
}
const netnsOf = (pid: number) => statSync(`/proc/${pid}/ns/net`).ino;

let registry: TestRegistry;
let d: DaemonProcess;
let host2: SecondHost;
let relay: Awaited<ReturnType<typeof registryRelay>>;
let b: ReturnType<typeof agentProcess>;
let IMAGE: string;

const cliOk = (args: string[]): Promise<string> => d.cliOk(args);
const inspect = async (name: string): Promise<Container> => (JSON.parse(await cliOk(['inspect', name])) as Container[])[0]!;

/** Containers left by a failed test removed, the agent stopped, its conmons and mounts cleaned; the mounts it had left. */
async function teardown(daemon: DaemonProcess | undefined, agent: ReturnType<typeof agentProcess> | undefined): Promise<string[]> {
  const leftMounts: string[] = [];
  try {
    await removeAllInstances(daemon);
  } finally {
    if (agent) leftMounts.push(...(await agent.destroy()));
    await daemon?.destroy();
  }
  return leftMounts;
}

before(async () => {
  registry = await startTestRegistryWithImages();
  IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
  host2 = await secondHost({ ns: 'hosts', link: 'nhh' });
  relay = await registryRelay(registry.host, host2);
});
after(async () => {
  await relay?.stop();
  await host2?.remove();
  await registry?.stop();
});

describe('containers on any host', { concurrency: false }, () => {
  before(async () => {
    d = await startDaemonProcess();
    b = agentProcess(d.socket, host2, (await cliOk(['agent', 'join-token', '--ttl', '5m'])).trim());
    await b.start();
    await cliOk(['pull', IMAGE]);
  });
  after(async () => {
    assert.deepEqual(await teardown(d, b), [], 'no mounts left on the agent');
  });

  test('run --host: pulled on that host, running in its namespace, logs, exec and stats through the control plane', async () => {
    const id = (await cliOk(['run', '-d', '--name', 'far', '--host', AGENT, '--network', 'host', IMAGE, 'sh', '-c', 'echo hello-from-b; exec sleep 600'])).trim();
    const c = await inspect('far');
    assert.deepEqual([c.id, c.host, c.status], [id, AGENT, 'running']);
    assert.ok(c.pid, 'a pid');
    // the agent's own namespace (--network host there): the process runs on the second host
    assert.equal(netnsOf(c.pid), host2.inode());
    assert.ok(existsSync(join(b.home, 'containers', 'containers', id)), 'its state is under the agent\'s home');
    assert.ok(!existsSync(join(d.home, 'containers', 'containers', id)), 'not under the embedded agent\'s');
    assert.ok(mountsUnder(b.home).some((m) => m.includes('snapshots') || m.includes(id)), 'its root filesystem is mounted from the agent\'s snapshots');
    await waitFor('the line in its logs', async () => ((await cliOk(['logs', 'far'])).includes('hello-from-b') ? true : undefined));
    // the image's manifest is in the agent's own content store: pulled there
    const manifestHex = (await d.api<Array<{ digest: string }>>('GET', '/images')).body[0]!.digest.slice(7);
    assert.ok((await run('find', [join(b.home, 'content'), '-name', `*${manifestHex}*`])).stdout.trim(), 'the manifest is in the agent\'s content store');
    const img = (await d.api<{ hosts: string[] }>('GET', `/images/${manifestHex}`)).body;
    assert.deepEqual(img.hosts, [AGENT, 'local'], 'and recorded on both hosts');
    const exec = await d.cli(['exec', 'far', 'sh', '-c', 'echo from-exec; exit 3']);
    assert.deepEqual([exec.code, exec.stdout.trim()], [3, 'from-exec']);
    const stats = JSON.parse(await cliOk(['stats', '--no-stream', '-o', 'json', 'far'])) as Array<{ pids?: number; memoryBytes?: number }>;
    assert.ok((stats[0]?.pids ?? 0) >= 1, JSON.stringify(stats));
  });

  test('a container on each host at once; ls shows where each runs', async () => {
    const nearId = (await cliOk(['run', '-d', '--name', 'near', '--network', 'none', IMAGE, 'sleep', '600'])).trim();
    const near = await inspect('near');
    assert.deepEqual([near.id, near.host, near.status], [nearId, 'local', 'running']);
    assert.equal(netnsOf(near.pid!) === host2.inode(), false);
    assert.ok(existsSync(join(d.home, 'containers', 'containers', nearId)));
    const list = (await d.api<Container[]>('GET', '/containers')).body;
    assert.deepEqual(list.map((c) => [c.name, c.host, c.status]).sort(), [['far', AGENT, 'running'], ['near', 'local', 'running']]);
  });

  test('the project\'s network is laid out on the second host when a container there needs it', async () => {
    await cliOk(['run', '-d', '--name', 'bridged', '--host', AGENT, IMAGE, 'sleep', '600']);
    const c = (JSON.parse(await cliOk(['inspect', 'bridged'])) as Array<Container & { network: { endpoints: Array<{ address: string }> } }>)[0]!;
    assert.equal(c.host, AGENT);
    assert.equal(c.network.endpoints.length, 1, JSON.stringify(c.network));
    const bridge = d.network.NIMBUS_BRIDGE!;
    assert.equal((await run('ip', ['-n', host2.ns, 'link', 'show', bridge])).code, 0, `bridge ${bridge} in the second host's namespace`);
    assert.deepEqual((await d.api<{ hosts: string[] }>('GET', '/networks/bridge')).body.hosts, [AGENT, 'local'], 'recorded on both hosts');
    const ping = await d.cli(['exec', 'bridged', 'ip', 'addr']);
    assert.match(ping.stdout, new RegExp(c.network.endpoints[0]!.address.replaceAll('.', '\\.')));
    await cliOk(['rm', '-f', 'bridged']);
  });

  test('stop and rm on the second host: nothing left there (no container directory, cgroup or mount)', async () => {
    const far = await inspect('far');
    await cliOk(['stop', '-t', '1', 'far']);
    assert.equal((await inspect('far')).status, 'exited');
    await cliOk(['rm', 'far']);
    await waitFor('the agent to destroy its state', async () =>
      !existsSync(join(b.home, 'containers', 'containers', far.id)) && cgroupsOf(far.id).length === 0 && !mountsUnder(b.home).some((m) => m.includes(far.id)) ? true : undefined, 30_000);
    assert.equal((await d.api('GET', `/containers/${far.id}`)).status, 404);
    await cliOk(['rm', '-f', 'near']);
  });

  test('a frozen agent (SIGSTOP: its connections stay open, it answers nothing) is down within 10 s; thawed, it is up again', async (t) => {
    const pid = b.pid();
    assert.ok(pid, 'the agent runs');
    const stateOf = async () => (await d.api<Array<{ name: string; state: string; reason?: string }>>('GET', '/hosts')).body.find((h) => h.name === AGENT);
    assert.equal((await stateOf())?.state, 'up');
    const frozenAt = Date.now();
    const logBefore = d.output().length;
    process.kill(pid, 'SIGSTOP');
    try {
      // watched without asking the host (GET /hosts asks it, and two unanswered asks call it down too):
      // the daemon logs the moment it calls the host down, and why
      const line = await waitFor('the control plane to call it down', async () =>
        d.output().slice(logBefore).split('\n').find((l) => l.includes('"host down"') && l.includes(AGENT)), 20_000, 50);
      const downMs = Date.now() - frozenAt;
      t.diagnostic(`down ${downMs} ms after SIGSTOP: ${line}`);
      assert.match(line, /no ping for/, 'seen by the events stream\'s silence, not by a refresh');
      assert.ok(downMs <= 10_000, `down within 10 s, took ${downMs} ms`);
      assert.equal((await stateOf())?.state, 'down');
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const thawedAt = Date.now();
    await waitFor('it to be up again', async () => ((await stateOf())?.state === 'up' ? true : undefined), 20_000);
    t.diagnostic(`up ${Date.now() - thawedAt} ms after SIGCONT`);
    // operators were told: a host event each way (system events, no project), replayed from the buffer
    const hostEvents = await eventsUntil(d.socket, '/events?type=host&since=0', (seen) => seen.some((e) => e.id === AGENT && e.action === 'up'), 10_000);
    const mine = hostEvents.filter((e) => e.id === AGENT).map((e) => [e.action, e.projectId, e.actor]);
    assert.deepEqual(mine.slice(-2), [['down', undefined, 'system'], ['up', undefined, 'system']], JSON.stringify(hostEvents));
    assert.match(String((hostEvents.find((e) => e.action === 'down')?.attributes as { reason?: string } | undefined)?.reason), /no ping for/);
  });
});

describe('nimbusd --no-agent: a control plane without an embedded agent', { concurrency: false }, () => {
  let c: ReturnType<typeof agentProcess>;
  before(async () => {
    d = await startDaemonProcess(['--no-agent']);
    c = agentProcess(d.socket, host2, (await cliOk(['agent', 'join-token', '--ttl', '5m'])).trim(), 'host-c');
    await c.start();
  });
  after(async () => {
    assert.deepEqual(await teardown(d, c), [], 'no mounts left on the agent');
  });

  test('nothing of an agent under its home; info has no embedded agent', async () => {
    for (const dir of ['content', 'snapshots', 'containers', 'vms']) assert.ok(!existsSync(join(d.home, dir)), `no ${dir} directory`);
    const info = (await d.api<{ agent: unknown }>('GET', '/info')).body;
    assert.equal(info.agent, null);
  });

  test('pull runs on the registered host; run places the container there, on the project\'s network laid out there', async () => {
    await cliOk(['pull', IMAGE]);
    const manifestHex = (await d.api<Array<{ digest: string }>>('GET', '/images')).body[0]!.digest.slice(7);
    assert.ok((await run('find', [join(c.home, 'content'), '-name', `*${manifestHex}*`])).stdout.trim(), 'the manifest is in the agent\'s content store');
    await cliOk(['run', '-d', '--name', 'only', IMAGE, 'sh', '-c', 'echo placed; exec sleep 600']);
    const ctr = await inspect('only');
    assert.deepEqual([ctr.host, ctr.status], ['host-c', 'running']);
    assert.ok(existsSync(join(c.home, 'containers', 'containers', ctr.id)));
    await waitFor('its logs', async () => ((await cliOk(['logs', 'only'])).includes('placed') ? true : undefined));
    await cliOk(['rm', '-f', 'only']);
    await waitFor('the agent to destroy its state', async () => (!existsSync(join(c.home, 'containers', 'containers', ctr.id)) ? true : undefined), 30_000);
    // the embedded name is no host: pinning it is refused, not attempted
    const pinned = await d.cli(['run', '-d', '--host', 'local', IMAGE, 'true']);
    assert.notEqual(pinned.code, 0);
  });
});
