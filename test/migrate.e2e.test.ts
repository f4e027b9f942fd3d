/**
 * Two agents registered with one control plane, end to end: a real nimbusd (control plane and
 * embedded agent "local") and a second agent in a process of its own (`nimbusd agent`, its own
 * home and its own network namespace, joined to the host by a veth pair, as a second host would
 * be by a link), which registers itself over the API. A VM runs on the second agent, is live-migrated
 * to the embedded one and back through the API and the CLI (downtime, total time, bytes and
 * passes reported; the guest never reboots and its console answers through the agent
 * protocol), moves to and from a third agent on a unix socket (no certificate of its own) over TLS
 * with certificates minted for each move, survives kill -9 of the control plane and of the agent
 * process, and leaves no QEMU, no state and no registration behind.
 */
import { GUEST_HOST_DIRS_ENV } from '../scripts/fixtures/guest.js';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DAEMON_MAIN, startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { untilOutput } from '../scripts/fixtures/child-output.js';
import { testNetworkEnv } from '../src/agent/network/network-test-env.js';
import { buildTestGuest, GUEST_CACHE_DIR, READY_MARKER, type TestGuest } from '../scripts/fixtures/guest.js';
import { agentInNamespace, secondHost, type SecondHost } from './helpers/second-host.js';
import { waitFor as poll } from './helpers/wait.js';
import { qemuUnder, supervisorOf } from './helpers/qemu.js';
import { call } from './helpers/http.js';

const waitFor = <T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 90_000) => poll(what, fn, timeoutMs, 200);
const NAME = 'mig-vm';
const AGENT = 'host-b';
const UNIX_AGENT = 'host-u';

interface Vm { id: string; name: string; status: string; agent: string; exitCode: number | null; host: { qemuPid?: number } | null }
interface AgentRow { name: string; local: boolean; state: string; url?: string; vms: number; reason?: string }
interface Report { id: string; from: string; to: string; totalMs: number; downtimeMs: number; qemuDowntimeMs: number; bytes: number; iterations: number; maxDowntimeMs: number; tls: boolean }


/**
 * The second "host": a network namespace with a veth pair to this one, on a /30 no route of
 * this host uses. The agent, its API and its QEMU processes live in it; migrations cross the
 * veth in both directions (each side's QEMU listens on its own end's address).
 */
/** The network namespace inode of a process. */
const netnsOf = (pid: number) => statSync(`/proc/${pid}/ns/net`).ino;

/** `nimbusd agent` in the second host's namespace (agentInNamespace), receiving migrations on its end of the link. */
const agentProcess = (controlPlaneSocket: string, host: SecondHost, joinToken: string) =>
  agentInNamespace(controlPlaneSocket, host, joinToken, { homePrefix: 'nimbus-agent', env: GUEST_HOST_DIRS_ENV, args: ['--migration-address', host.agentAddress] });

let d: DaemonProcess;
let host2: SecondHost;
let b: ReturnType<typeof agentProcess>;
let guest: TestGuest;

const cliOk = (args: string[], input?: string): Promise<string> => d.cliOk(args, input !== undefined ? { input } : {});
const inspect = async (): Promise<Vm> => (JSON.parse(await cliOk(['vm', 'inspect', NAME])) as Vm[])[0]!;
const agents = async (): Promise<AgentRow[]> => JSON.parse(await cliOk(['agent', 'ls', '-o', 'json'])) as AgentRow[];
/** Seconds the guest has been up, from its own /proc/uptime over the console. */
async function guestUptime(): Promise<number> {
  const out = await cliOk(['console', NAME], 'uptime\n');
  const m = /(\d+\.\d+)/.exec(out);
  assert.ok(m, `an uptime answer: ${out}`);
  return Number(m[1]);
}

describe('live migration between two agents of one control plane', { concurrency: false }, () => {
  before(async () => {
    guest = await buildTestGuest(GUEST_CACHE_DIR);
    host2 = await secondHost({ ns: 'mig', link: 'nmh' });
    // the embedded agent receives migrations on this host's end of the link
    d = await startDaemonProcess([], { NIMBUS_MIGRATION_ADDRESS: host2.hostAddress });
    b = agentProcess(d.socket, host2, (await cliOk(['agent', 'join-token', '--ttl', '5m'])).trim());
    await b.start();
  });
  after(async () => {
    try {
      if (d) {
        const list = await d.api<{ id: string }[]>('GET', '/vms?all=true').catch(() => ({ status: 0, body: [] }));
        for (const v of list.body ?? []) await d.api('DELETE', `/vms/${v.id}?force=true`).catch(() => undefined);
      }
    } finally {
      const left = [...(d ? qemuUnder(d.home) : []), ...(b ? qemuUnder(b.home) : [])];
      for (const pid of left) process.kill(pid, 'SIGKILL');
      await b?.kill('SIGTERM');
      if (b) rmSync(b.home, { recursive: true, force: true });
      await host2?.remove();
      await d?.destroy();
      assert.deepEqual(left, [], 'no QEMU left behind');
    }
  });

  test('the second agent registered itself; agent ls shows both up', async () => {
    const list = await agents();
    assert.deepEqual(list.map((a) => [a.name, a.local, a.state]), [['local', true, 'up'], [AGENT, false, 'up']]);
    assert.equal(new URL(list[1]!.url ?? 'x:').hostname, host2.agentAddress, 'reached over the link, in its namespace');
    assert.match(await cliOk(['agent', 'ls']), new RegExp(`${AGENT}\\s+up\\s+https://${host2.agentAddress.replaceAll('.', '\\.')}:`), 'reached over TLS');
    // a registration must answer at its URL under its name (its certificate names host-b) and token
    const protocol = { min: 2, max: 2 };
    const bad = await d.api<{ error: { code: string; message: string } }>('POST', '/agents', { name: 'ghost', url: list[1]!.url, token: 'x'.repeat(32), protocol });
    assert.equal(bad.status, 502);
    assert.match(bad.body.error.message, /does not answer/);
    const liar = await d.api<{ error: { code: string } }>('POST', '/agents', { name: 'local', url: list[1]!.url, token: 'x'.repeat(32), protocol });
    assert.equal(liar.status, 409, 'the embedded agent\'s name is taken');
  });

  test('vm run --agent places the VM on the second agent; its QEMU lives under that agent\'s home', async () => {
    await cliOk(['vm', 'run', '--name', NAME, '--memory', '192m', '--agent', AGENT, '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', guest.append]);
    const v = await inspect();
    assert.equal(v.agent, AGENT);
    assert.equal(qemuUnder(b.home).length, 1);
    assert.equal(qemuUnder(d.home).length, 0);
    // its QEMU's supervisor in the second host's network namespace, QEMU itself in one of its own (jailer.ts)
    const qemu = qemuUnder(b.home)[0]!;
    assert.equal(netnsOf(supervisorOf(qemu)), host2.inode(), 'its QEMU runs on the second host');
    assert.notEqual(netnsOf(qemu), host2.inode(), 'in a network namespace of its own');
    await waitFor('the readiness marker through the agent protocol', async () => ((await cliOk(['vm', 'logs', NAME])).includes(READY_MARKER) ? true : undefined));
    assert.match(await cliOk(['console', NAME], 'echo on-host-b\n'), /on-host-b/);
    assert.match(await cliOk(['vm', 'ls']), new RegExp(`${NAME}\\s+Up .*\\s+${AGENT}\\s`));
  });

  test('bad migrations are refused before anything moves', async () => {
    const unknown = await d.cli(['vm', 'migrate', NAME, '--to', 'nowhere']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /NotFound: no such agent: nowhere/);
    const same = await d.cli(['vm', 'migrate', NAME, '--to', AGENT]);
    assert.equal(same.code, 1);
    assert.match(same.stderr, /already/);
    assert.equal((await d.cli(['vm', 'migrate', NAME])).code, 2, '--to is required');
    assert.equal((await d.cli(['vm', 'migrate', NAME, '--to', 'local', '--max-downtime', '0'])).code, 2);
    assert.equal((await inspect()).agent, AGENT);
  });

  test('vm migrate moves the running guest to the embedded agent and back; each move reports its figures', async (t) => {
    const before = await guestUptime();
    const out = await cliOk(['vm', 'migrate', NAME, '--to', 'local', '--max-downtime', '100', '-o', 'json']);
    const r = JSON.parse(out) as Report;
    t.diagnostic(`to local: ${JSON.stringify(r)}`);
    assert.deepEqual([r.from, r.to, r.maxDowntimeMs], [AGENT, 'local', 100]);
    assert.equal(r.tls, true, 'the joined agent and the embedded one both hold certificates of the agent CA: the move is TLS');
    assert.ok(r.bytes > 1 << 20, `bytes ${r.bytes}`);
    assert.ok(r.iterations >= 1 && r.totalMs > 0 && r.downtimeMs >= 0 && r.qemuDowntimeMs >= 0, JSON.stringify(r));
    const v = await inspect();
    assert.deepEqual([v.agent, v.status], ['local', 'running']);
    assert.equal(qemuUnder(b.home).length, 0, 'nothing of it stays at the source');
    assert.equal(qemuUnder(d.home).length, 1);
    assert.equal(netnsOf(supervisorOf(qemuUnder(d.home)[0]!)), netnsOf(process.pid), 'it crossed the link into this host\'s namespace');
    assert.ok(!existsSync(join(b.home, 'vms', 'instances', v.id)), 'no state directory at the source');
    const after = await guestUptime();
    assert.ok(after > before, `the same guest goes on (uptime ${before} → ${after})`);

    const back = await cliOk(['vm', 'migrate', NAME, '--to', AGENT]);
    t.diagnostic(`back: ${back.trim()}`);
    assert.match(back, new RegExp(`migrated local → ${AGENT} in \\d+ ms; downtime [\\d.]+ ms \\(QEMU: \\d+ ms, limit 300 ms\\); [\\d.]+ MiB in \\d+ RAM pass.*; over TLS$`, 'm'));
    assert.equal((await inspect()).agent, AGENT);
    assert.equal(qemuUnder(d.home).length, 0);
    assert.ok((await guestUptime()) > after);
    const log = await cliOk(['vm', 'logs', NAME]);
    assert.equal(log.split(READY_MARKER).length - 1, 1, 'one boot across both moves; the console history travelled');
    assert.match(log, /on-host-b/);
    // the history: both moves kept as vm.migrate operations with their reports, newest first, one per page
    const page1 = await call({ socketPath: d.socket }, 'GET', '/operations?kind=vm.migrate&limit=1');
    const ops1 = page1.body as Array<{ kind: string; target: string; status: string; result: Report }>;
    assert.equal(ops1.length, 1, page1.text);
    assert.deepEqual([ops1[0]!.kind, ops1[0]!.target, ops1[0]!.status, ops1[0]!.result.from, ops1[0]!.result.to], ['vm.migrate', v.id, 'succeeded', 'local', AGENT]);
    const next = /^<([^>]+)>; rel="next"$/.exec(String(page1.headers.link ?? ''))?.[1];
    assert.ok(next, `a next page: ${JSON.stringify(page1.headers)}`);
    const ops2 = (await call({ socketPath: d.socket }, 'GET', next)).body as Array<{ result: Report }>;
    assert.deepEqual([ops2[0]!.result.from, ops2[0]!.result.to, ops2[0]!.result.downtimeMs], [AGENT, 'local', r.downtimeMs]);
  });

  test('an agent on a unix socket holds no certificate: a move from it is TLS too, with certificates minted for the move (protocol 14)', async (t) => {
    const home = mkdtempSync(join(tmpdir(), 'nimbus-unix-agent-'));
    let out = '';
    const child = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, 'agent', '--name', UNIX_AGENT, '--home', home, '--listen', `unix:${join(home, 'agent.sock')}`,
      '--migration-address', host2.hostAddress, '--control-plane', `unix:${d.socket}`], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NIMBUS_LOG_LEVEL: 'warn', ...GUEST_HOST_DIRS_ENV, ...testNetworkEnv() } });
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    try {
      await untilOutput(child, 'registered with', 'the unix-socket agent did not register', () => out);
      assert.match(await cliOk(['agent', 'ls']), new RegExp(`${UNIX_AGENT}\\s+up\\s+unix:`), 'reached over its socket, no certificate');
      const there = JSON.parse(await cliOk(['vm', 'migrate', NAME, '--to', UNIX_AGENT, '-o', 'json'])) as Report;
      t.diagnostic(`to the unix-socket agent: ${JSON.stringify(there)}`);
      assert.deepEqual([there.from, there.to, there.tls], [AGENT, UNIX_AGENT, true]);
      assert.equal(qemuUnder(home).length, 1);
      // the source without a certificate: plain before protocol 14
      const back = JSON.parse(await cliOk(['vm', 'migrate', NAME, '--to', AGENT, '-o', 'json'])) as Report;
      t.diagnostic(`back: ${JSON.stringify(back)}`);
      assert.deepEqual([back.from, back.to, back.tls], [UNIX_AGENT, AGENT, true], 'over TLS from an agent with no certificate of its own');
      assert.deepEqual(qemuUnder(home), []);
      assert.doesNotMatch(out, /streams in clear/, 'neither side logged a move in clear');
      assert.match(await cliOk(['console', NAME], 'echo after-unix\n'), /after-unix/);
    } finally {
      // forgotten also when the test failed, so that the tests after it see the two agents they expect
      await d.cli(['agent', 'rm', UNIX_AGENT]);
      const exited = new Promise((r) => child.once('exit', r));
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      for (const pid of qemuUnder(home)) process.kill(pid, 'SIGKILL');
      rmSync(home, { recursive: true, force: true });
    }
  });

  test('kill -9 of the control plane and of the agent: the VM keeps running and is found again', async () => {
    const pid = (await inspect()).host?.qemuPid;
    assert.ok(pid);
    await d.kill('SIGKILL');
    await d.restart();
    let v = await inspect();
    assert.deepEqual([v.agent, v.status, v.host?.qemuPid], [AGENT, 'running', pid], 'the restarted control plane reconnects to the agent');
    await b.kill('SIGKILL');
    assert.equal(qemuUnder(b.home).length, 1, 'QEMU outlives its agent');
    const down = (await agents()).find((a) => a.name === AGENT);
    assert.equal(down?.state, 'down');
    assert.equal((await inspect()).status, 'unknown', 'an agent that is down does not make its VMs stopped: their state is unknown');
    await b.start();
    await waitFor('the agent up again', async () => ((await agents()).find((a) => a.name === AGENT)?.state === 'up' ? true : undefined));
    assert.equal((await inspect()).status, 'running', 'the stored status was kept');
    assert.match(await cliOk(['console', NAME], 'echo after-restarts\n'), /after-restarts/);
    v = await inspect();
    assert.equal(v.host?.qemuPid, pid);
  });

  test('the guest ends itself on the agent: its exit reaches the control plane as an event; rm leaves nothing; the agent is forgotten only once it has no VM', async () => {
    // no API call acts on the VM here: the agent's exit event (GET /agent/v1/events) is what records it
    await d.cli(['console', NAME], { input: 'poweroff\n' });
    const v = await waitFor('the exit recorded from the agent\'s event', async () => {
      const x = await inspect();
      return x.status === 'stopped' ? x : undefined;
    }, 60_000);
    assert.equal(v.exitCode, 0, 'a guest power-off, recorded from the agent');
    const busy = await d.cli(['agent', 'rm', AGENT]);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /Conflict: .*1 VM/);
    const stopped = await d.cli(['vm', 'migrate', NAME, '--to', 'local']);
    assert.equal(stopped.code, 1);
    assert.match(stopped.stderr, /Conflict: .*only a running VM migrates live/);
    await cliOk(['vm', 'rm', NAME]);
    assert.deepEqual(qemuUnder(b.home), []);
    assert.ok(!existsSync(join(b.home, 'vms', 'instances', v.id)));
    await cliOk(['agent', 'rm', AGENT]);
    assert.deepEqual((await agents()).map((a) => a.name), ['local']);
  });
});
