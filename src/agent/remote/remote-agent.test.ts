/**
 * The agent protocol's transport: a RemoteAgent against startAgentServer serving a small
 * hand-written target (the transport is under test, not an agent). Loopback only; TCP is
 * mutual TLS with a CA made for this file.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import { Value } from '@sinclair/typebox/value';
import type { TSchema } from '@sinclair/typebox';
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Duplex, PassThrough, type Readable } from 'node:stream';
import { Conflict, Internal, NimbusError, NotFound, hasCode } from '../../core/errors.js';
import { addHostRoots } from '../../core/redaction.js';
import type { Agent, AgentImage, PullOptions, PullProgress, VmCreateRequest } from '../agent.js';
import type { ExecRequest, ExecSession, LogRecord } from '../drivers/instance-driver.js';
import { startAgentServer, type AgentServer, type AgentServerOptions, type AgentServerTls } from './agent-server.js';
import { RemoteAgent, type RemoteAgentTls } from './remote-agent.js';
import { until as untilHolds } from '../../../test/helpers/wait.js';
import {
  AGENT_PROTOCOL_VERSION, CONTROL_PLANE_CERT_NAME, MAX_BODY_BYTES, PATHS, PROTOCOL_HEADER, UNARY_METHODS, decodeError, encodeArgs,
} from './agent-protocol.js';
import { ARG_SCHEMAS, type ArgSpec } from './agent-schemas.js';
import { issueCertificate, makeCa, type KeyAndCert } from '../../core/pki.js';

const TOKEN = 'test-token-0123456789abcdef';
/** What RemoteAgents here are named, and so what the agent's certificate names. */
const AGENT_NAME = 'test';

/** One CA for the file: the agent's server certificate and the control plane's client one. */
interface Pki { ca: KeyAndCert; server: AgentServerTls; client: RemoteAgentTls }
let pkiMade: Promise<Pki> | undefined;
function pki(): Promise<Pki> {
  pkiMade ??= (async () => {
    const ca = await makeCa('test agent CA');
    const server = await issueCertificate(ca, { commonName: AGENT_NAME, usage: 'server' });
    const client = await issueCertificate(ca, { commonName: CONTROL_PLANE_CERT_NAME, usage: 'client' });
    return { ca, server: { ...server, ca: ca.cert, clientName: CONTROL_PLANE_CERT_NAME }, client: { ...client, ca: ca.cert } };
  })();
  return pkiMade;
}

/** Server options for a TCP (TLS) or unix listener. */
async function listenOn(where: { socketPath: string } | { port: number }): Promise<Pick<AgentServerOptions, 'socketPath' | 'host' | 'port' | 'tls'>> {
  return 'socketPath' in where ? where : { host: '127.0.0.1', port: where.port, tls: (await pki()).server };
}

const record = (line: string): LogRecord => ({ time: '2024-01-01T00:00:00.000Z', stream: 'stdout', line });

/** What the target saw, and handles for the test to drive it. */
interface TargetState {
  calls: Array<{ method: string; args: unknown[] }>;
  vms: string[];
  containers: string[];
  /** Follows whose signal fired (the reader went). */
  followAborts: number;
  pullAborted: Promise<void>;
  consoleLine?: Duplex;
  consoleInputEnded: boolean;
  /** info() never answers (a hung agent). */
  infoHangs: boolean;
  consoleDestroyed: boolean;
  execRequest?: ExecRequest;
  execStdoutDestroyed: boolean;
  fireVmExit(id: string): void;
  fireContainerExit(id: string): void;
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

function makeTarget(): { agent: Agent; state: TargetState } {
  const vmListeners: Array<(id: string) => void> = [];
  const containerListeners: Array<(id: string) => void> = [];
  const pullAborted = deferred();
  const state: TargetState = {
    calls: [],
    vms: ['vm-a', 'vm-b'],
    containers: ['c-a'],
    followAborts: 0,
    pullAborted: pullAborted.promise,
    consoleInputEnded: false,
    infoHangs: false,
    consoleDestroyed: false,
    execStdoutDestroyed: false,
    fireVmExit: (id) => vmListeners.forEach((l) => l(id)),
    fireContainerExit: (id) => containerListeners.forEach((l) => l(id)),
  };
  const seen = (method: string, args: unknown[]) => state.calls.push({ method, args });
  const target = {
    async info() {
      if (state.infoHangs) return new Promise(() => undefined);
      return { name: 'target', hostname: 'h', cpus: 4, memoryBytes: 1 << 30, runtimes: [], snapshotters: [], cgroupLayout: 'v2', snapshotter: 'overlayfs', kernel: '6.1' };
    },
    async createVm(req: VmCreateRequest) {
      seen('createVm', [req]);
      return { status: 'created', lifecycle: 'stopped', echo: req };
    },
    async stopContainer(...args: unknown[]) {
      seen('stopContainer', args);
      return { status: 'stopped', exitCode: 0 };
    },
    async killVm(...args: unknown[]) {
      seen('killVm', args);
    },
    async prepareVmIncoming(...args: unknown[]) {
      seen('prepareVmIncoming', args);
      return { uri: 'tcp:127.0.0.1:1' };
    },
    async migrateVmOut(...args: unknown[]) {
      seen('migrateVmOut', args);
      return { qemuDowntimeMs: 1, totalMs: 1, bytes: 0, iterations: 1, diskBytes: 0, tls: false, consoleHistory: '' };
    },
    async createVolume(id: string, sizeBytes: number) {
      seen('createVolume', [id, sizeBytes]);
      return { id, sizeBytes, path: `/volumes/${id}/mnt/_data`, mounted: true };
    },
    async createContainer(req: unknown) {
      seen('createContainer', [req]);
      return { status: 'created', warnings: [], runtime: 'runc' };
    },
    async vmState(id: string) {
      throw new NotFound(`no such VM: ${id}`, { id });
    },
    async startVm() {
      throw new Error('qemu fell over');
    },
    async listVms() {
      return state.vms;
    },
    async listContainers() {
      return state.containers;
    },
    vmLogs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
      return (async function* () {
        if (id === 'missing') throw new NotFound(`no such VM: ${id}`, { id });
        const lines = ['one', 'two', 'three'];
        for (const l of lines.slice(opts.tail !== undefined ? -opts.tail : 0)) yield record(l);
        if (id === 'breaks') throw new Conflict('log file vanished');
        if (!opts.follow) return;
        yield record('live');
        // a follow lasts until the signal says the reader went
        await new Promise<void>((resolve) => opts.signal?.addEventListener('abort', () => resolve(), { once: true }));
        state.followAborts++;
      })();
    },
    containerLogs(id: string): AsyncIterable<LogRecord> {
      return (async function* () {
        throw new NotFound(`no such container: ${id}`, { id });
      })();
    },
    async pullImage(ref: string, opts: PullOptions, progress: (p: PullProgress) => void): Promise<AgentImage> {
      seen('pullImage', [ref, { ...opts, signal: opts.signal ? 'present' : 'absent' }]);
      progress({ phase: 'resolving', layers: [], bytesDone: 0, bytesTotal: 0 });
      if (ref === 'slow') {
        await new Promise<void>((resolve) => opts.signal?.addEventListener('abort', () => resolve(), { once: true }));
        pullAborted.resolve();
        throw new Error('aborted');
      }
      if (ref === 'denied') throw new Conflict('registry said no', { ref });
      progress({ phase: 'downloading', layers: [{ digest: 'sha256:l1', status: 'downloading', bytesDone: 5, bytesTotal: 10 }], bytesDone: 5, bytesTotal: 10 });
      return { reference: ref, manifestDigest: 'sha256:m', configDigest: 'sha256:c', config: {} as AgentImage['config'], layers: [], chainId: 'sha256:x', size: 10 };
    },
    async openVmConsole(id: string): Promise<Duplex> {
      if (id !== 'vm-a') throw new Conflict(`VM ${id} is not running`, { id });
      let pending = '';
      const line = new Duplex({
        read() {},
        write(chunk: Buffer, _enc, cb) {
          pending += chunk.toString();
          for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
            this.push(`you said: ${pending.slice(0, nl)}\n`);
            pending = pending.slice(nl + 1);
          }
          cb();
        },
        final(cb) {
          state.consoleInputEnded = true;
          cb();
        },
        destroy(err, cb) {
          state.consoleDestroyed = true;
          cb(err);
        },
      });
      line.push('login: ');
      state.consoleLine = line;
      return line;
    },
    async execInContainer(id: string, req: ExecRequest): Promise<ExecSession> {
      if (id !== 'c-a') throw new Conflict(`container ${id} is exited, not running`, { id });
      state.execRequest = req;
      const stdout = new PassThrough();
      const stderr = new PassThrough();
      if (req.args[0] === 'cat') {
        const stdin = new PassThrough();
        let got = '';
        stdin.on('data', (b: Buffer) => (got += b.toString()));
        const exit = new Promise<number>((resolve) =>
          stdin.on('end', () => {
            stdout.end(`out:${got}`);
            stderr.end('err:done');
            resolve(3);
          }),
        );
        return { stdout, stderr, stdin, exit };
      }
      if (req.args[0] === 'sleep') {
        // runs until its output is closed under it
        stdout.on('close', () => (state.execStdoutDestroyed = true));
        stdout.write('started\n');
        return { stdout, stderr, exit: new Promise<number>(() => undefined) };
      }
      stdout.write('hello ');
      setTimeout(() => {
        stdout.end('world');
        stderr.end('warning');
      }, 10);
      return { stdout, stderr, exit: Promise.resolve(0) };
    },
    onVmExit(l: (id: string) => void) {
      vmListeners.push(l);
    },
    onContainerExit(l: (id: string) => void) {
      containerListeners.push(l);
    },
  };
  return { agent: target as unknown as Agent, state };
}

async function serve(t: TestContext, agent: Agent, where: { socketPath: string } | { port: number } = { port: 0 }, extra: Partial<AgentServerOptions> = {}): Promise<AgentServer> {
  const server = await startAgentServer(agent, { token: TOKEN, ...(await listenOn(where)), ...extra });
  t.after(() => server.close());
  return server;
}

async function connect(t: TestContext, url: string, token = TOKEN, extra: { name?: string; protocol?: { min: number; max: number }; tls?: RemoteAgentTls; timeoutMs?: number } = {}): Promise<RemoteAgent> {
  const c = new RemoteAgent({ name: AGENT_NAME, url, token, ...(url.startsWith('https:') ? { tls: (await pki()).client } : {}), ...extra });
  t.after(() => c.close());
  return c;
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-agent-rpc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function text(r: Readable): Promise<string> {
  let s = '';
  for await (const c of r) s += String(c);
  return s;
}


/** Its waits are of 5 s. */
const until = (cond: () => boolean) => untilHolds(cond, 'the condition', 5_000);

/** A hand-made request, for what RemoteAgent would never send (at the current version unless headers say otherwise; TLS with the control plane's certificate unless tls says otherwise). */
async function raw(url: string, method: string, reqPath: string, headers: Record<string, string>, body?: Buffer, tls?: Record<string, unknown>): Promise<{ status: number; body: string }> {
  const target = url.startsWith('unix:') ? { socketPath: url.slice(5) } : { host: new URL(url).hostname, port: Number(new URL(url).port) };
  const secure = url.startsWith('https:');
  const client = secure ? (tls ?? { ...(await pki()).client, checkServerIdentity: () => undefined }) : {};
  const transport = secure ? https : http;
  const allHeaders: Record<string, string> = { [PROTOCOL_HEADER]: String(AGENT_PROTOCOL_VERSION), ...headers };
  for (const [k, v] of Object.entries(allHeaders)) if (v === '') delete allHeaders[k];
  return new Promise((resolve, reject) => {
    const req = transport.request({ ...target, ...client, method, path: reqPath, headers: allHeaders, agent: false }, (res) => {
      void text(res).then((b) => resolve({ status: res.statusCode ?? 0, body: b }), reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function rejectsWith(p: Promise<unknown>, code: string, message?: RegExp | string): Promise<NimbusError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof NimbusError, `expected a NimbusError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (typeof message === 'string') assert.equal(e.message, message);
    else if (message) assert.match(e.message, message);
    return e;
  }
  assert.fail(`expected ${code}`);
}

for (const transport of ['tcp', 'unix'] as const) {
  test(`unary calls round-trip arguments and results (${transport})`, async (t) => {
    const { agent, state } = makeTarget();
    const server = await serve(t, agent, transport === 'unix' ? { socketPath: path.join(tempDir(t), 'agent.sock') } : { port: 0 });
    assert.match(server.url, transport === 'unix' ? /^unix:\/.*agent\.sock$/ : /^https:\/\/127\.0\.0\.1:\d+$/);
    const c = await connect(t, server.url);

    assert.equal((await c.info()).name, 'target');
    const req: VmCreateRequest = {
      id: 'vm-1', name: 'web', cpus: 2, memoryMiB: 512, pin: [0, 1],
      nics: [{ network: { id: 'n1', name: 'n', driver: 'bridge', subnet: '10.0.0.0/24', gateway: '10.0.0.1', internal: false, device: 'nb1' }, address: '10.0.0.2', dnsNames: ['web'] }],
    };
    const created = (await c.createVm(req)) as unknown as { status: string; echo: unknown };
    assert.equal(created.status, 'created');
    assert.deepEqual(created.echo, req);
    assert.deepEqual(state.calls.at(-1), { method: 'createVm', args: [req] });

    // an omitted optional argument arrives as absent, not as null
    await c.stopContainer('c-1', 5);
    assert.deepEqual(state.calls.at(-1), { method: 'stopContainer', args: ['c-1', 5] });
    await c.stopContainer('c-1', 5, 'SIGINT');
    assert.deepEqual(state.calls.at(-1), { method: 'stopContainer', args: ['c-1', 5, 'SIGINT'] });
    // a void answer is undefined on this side too
    assert.equal(await c.killVm('vm-1', 'SIGKILL'), undefined);
    assert.deepEqual(await c.listVms(), ['vm-a', 'vm-b']);
    assert.equal(await c.ping(), true);
  });
}

test('typed errors keep their code, message and details; others become Internal', async (t) => {
  const { agent } = makeTarget();
  const c = await connect(t, (await serve(t, agent)).url);
  const e = await rejectsWith(c.vmState('vm-9'), 'NotFound', 'no such VM: vm-9');
  assert.deepEqual(e.details, { id: 'vm-9' });
  assert.equal(e.name, 'NotFoundError');
  await rejectsWith(c.startVm('vm-1'), 'Internal', 'qemu fell over');
  // codes this side does not know, and bodies that are not ours
  assert.equal(decodeError({ error: { code: 'Exploded', message: 'boom' } }).code, 'Internal');
  assert.equal(decodeError('Bad Gateway', 'Unavailable').code, 'Unavailable');
  assert.deepEqual(encodeArgs(['a', undefined, 1, undefined, undefined]), ['a', null, 1]);
});

test('host paths cross the protocol for administrators only: an fs error\'s path, an error\'s adminMessage; an agent of protocol 9 has every absolute path taken out', async (t) => {
  const dir = tempDir(t);
  addHostRoots([dir]); // the agent's state directory, as LocalAgent adds its home
  const missing = path.join(dir, 'containers', 'c-1', 'config.json');
  const { agent } = makeTarget();
  Object.assign(agent, {
    // Node's own error, as a driver's readFile throws it
    startContainer: async () => readFile(missing),
    // an error whose message says it all to anyone, and more to administrators
    removeContainer: async (id: string) => {
      throw new Conflict(`refusing to remove container ${id}: still mounted`, { id }, { adminMessage: `refusing to remove ${dir}/containers/${id}: still mounted: ${dir}/containers/${id}/rootfs` });
    },
    // a message that names a path under the agent's state directory all the same, and details too
    pauseContainer: async (id: string) => {
      throw new Internal(`umount ${dir}/containers/${id}/rootfs failed`, { target: `${dir}/containers/${id}/rootfs` });
    },
  });
  const server = await serve(t, agent);
  const c = await connect(t, server.url);
  const hidden = (e: NimbusError, what: string) => {
    assert.ok(!e.message.includes(dir) && !JSON.stringify(e.details ?? {}).includes(dir), `${what}: a member would read ${e.message} ${JSON.stringify(e.details)}`);
    assert.ok(e.adminMessage?.includes(dir), `${what}: the administrator reads the path: ${String(e.adminMessage)}`);
  };
  let e = await rejectsWith(c.startContainer('c-1'), 'Internal', "ENOENT: no such file or directory, open '<host path>'");
  hidden(e, 'an fs error');
  assert.equal(e.adminMessage, `ENOENT: no such file or directory, open '${missing}'`);
  e = await rejectsWith(c.removeContainer('c-1'), 'Conflict', 'refusing to remove container c-1: still mounted');
  hidden(e, 'an adminMessage');
  e = await rejectsWith(c.pauseContainer('c-1'), 'Internal', 'umount <host path> failed');
  hidden(e, 'the net');
  assert.deepEqual(e.details, { target: '<host path>' });
  // a control plane of protocol 9 reads the one message; from an agent of protocol 9 every absolute path goes (its roots are unknown here)
  const legacy = await connect(t, server.url, TOKEN, { protocol: { min: 2, max: 9 } });
  e = await rejectsWith(legacy.pauseContainer('c-1'), 'Internal', 'umount <host path> failed');
  assert.equal(decodeError({ error: { code: 'NotFound', message: 'stat /srv/agent-b/containers/c-2/rootfs: no such file', details: { at: '/srv/agent-b' } } }, 'Internal', 9).message, 'stat <host path>: no such file');
  const old = decodeError({ error: { code: 'NotFound', message: 'stat /srv/agent-b/x: no such file', details: { at: '/srv/agent-b' }, adminMessage: 'not read at 9' } }, 'Internal', 9);
  assert.deepEqual([old.message, old.details, old.adminMessage], ['stat <host path>: no such file', { at: '<host path>' }, 'stat /srv/agent-b/x: no such file']);
});

test('a wrong token is Unauthenticated; methods not on the list are NotFound', async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  await rejectsWith((await connect(t, server.url, 'wrong-token-0123456789')).info(), 'Unauthenticated');
  await rejectsWith((await connect(t, server.url, '')).listVms(), 'Unauthenticated');

  const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const noAuth = await raw(server.url, 'POST', PATHS.call('info'), { 'content-type': 'application/json' }, Buffer.from('{"args":[]}'));
  assert.equal(noAuth.status, 401);
  assert.equal((JSON.parse(noAuth.body) as { error: { code: string } }).error.code, 'Unauthenticated');
  for (const method of ['diskImagePath', 'claimWarmContainer', 'setAddressProvider', 'close', 'constructor', '__proto__', 'pullImage']) {
    const r = await raw(server.url, 'POST', PATHS.call(method), auth, Buffer.from('{"args":[]}'));
    assert.equal(r.status, 404, method);
    assert.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, 'NotFound', method);
  }
  assert.equal((await raw(server.url, 'GET', PATHS.call('info'), auth)).status, 404);
  assert.equal((await raw(server.url, 'GET', '/agent/v2/events', auth)).status, 404);
  const bad = await raw(server.url, 'POST', PATHS.call('info'), auth, Buffer.from('{"args":'));
  assert.equal(bad.status, 400);
  assert.equal((await raw(server.url, 'POST', '/agent/v1/console/%E0%A4%A', auth)).status, 400);
  const huge = await raw(server.url, 'POST', PATHS.call('killVm'), auth, Buffer.alloc(MAX_BODY_BYTES + 1, 0x20));
  assert.equal(huge.status, 400);
  assert.match(huge.body, /larger than/);
  assert.equal(state.calls.length, 0, 'nothing reached the agent');
});

test('logs stream; a follow ends when its signal aborts and the agent sees the abort', async (t) => {
  const { agent, state } = makeTarget();
  const c = await connect(t, (await serve(t, agent)).url);

  const lines: string[] = [];
  for await (const r of c.vmLogs('vm-a', { tail: 2 })) lines.push(r.line);
  assert.deepEqual(lines, ['two', 'three']);

  const ac = new AbortController();
  const followed: string[] = [];
  for await (const r of c.vmLogs('vm-a', { follow: true, signal: ac.signal })) {
    followed.push(r.line);
    if (r.line === 'live') ac.abort();
  }
  assert.deepEqual(followed, ['one', 'two', 'three', 'live']);
  await until(() => state.followAborts === 1); // the agent's iteration was told the reader went

  // a consumer that stops reading is a reader gone too
  for await (const r of c.vmLogs('vm-a', { follow: true })) if (r.line === 'two') break;
  await until(() => state.followAborts === 2);

  // an error before the first record is the call's error; after it, the last record
  await rejectsWith((async () => { for await (const _ of c.containerLogs('c-x', {})) void _; })(), 'NotFound', 'no such container: c-x');
  await rejectsWith((async () => { for await (const _ of c.vmLogs('missing', {})) void _; })(), 'NotFound');
  const before: string[] = [];
  await rejectsWith((async () => { for await (const r of c.vmLogs('breaks', {})) before.push(r.line); })(), 'Conflict', 'log file vanished');
  assert.deepEqual(before, ['one', 'two', 'three']);
});

test('pull reports progress, then resolves with the image; errors and aborts carry over', async (t) => {
  const { agent, state } = makeTarget();
  const c = await connect(t, (await serve(t, agent)).url);
  const phases: string[] = [];
  const img = await c.pullImage('docker.io/library/alpine:3', { insecureRegistries: ['r.local'], credentials: { username: 'u', password: 'p' } }, (p) => phases.push(p.phase));
  assert.deepEqual(phases, ['resolving', 'downloading']);
  assert.equal(img.reference, 'docker.io/library/alpine:3');
  assert.deepEqual(state.calls.at(-1), {
    method: 'pullImage',
    args: ['docker.io/library/alpine:3', { insecureRegistries: ['r.local'], credentials: { username: 'u', password: 'p' }, signal: 'present' }],
  });

  await rejectsWith(c.pullImage('denied', {}, () => undefined), 'Conflict', 'registry said no');

  const ac = new AbortController();
  const slow = c.pullImage('slow', { signal: ac.signal }, () => ac.abort());
  await assert.rejects(slow, (e: Error) => e.name === 'AbortError');
  await state.pullAborted; // the client going aborted the agent's pull
});

for (const transport of ['tcp', 'unix'] as const) {
  test(`console carries bytes both ways; the input ending does not close the line (${transport})`, async (t) => {
    const { agent, state } = makeTarget();
    const server = await serve(t, agent, transport === 'unix' ? { socketPath: path.join(tempDir(t), 'a.sock') } : { port: 0 });
    const c = await connect(t, server.url);
    await rejectsWith(c.openVmConsole('vm-stopped'), 'Conflict', 'VM vm-stopped is not running');

    const line = await c.openVmConsole('vm-a');
    let out = '';
    line.on('data', (b: Buffer) => (out += b.toString()));
    const closed = new Promise<void>((r) => line.once('close', () => r()));
    await until(() => out === 'login: ');
    line.write('uname\n');
    line.end('uptime\n'); // a script: commands, end of input, then read the answers
    await until(() => out === 'login: you said: uname\nyou said: uptime\n');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(state.consoleInputEnded, false, 'the line is still open after the input ended');
    assert.equal(state.consoleDestroyed, false);

    // the VM's side ends the session
    state.consoleLine!.push('bye\n');
    state.consoleLine!.push(null);
    await closed;
    assert.equal(out, 'login: you said: uname\nyou said: uptime\nbye\n');
    await until(() => state.consoleDestroyed);

    // the client hanging up closes the agent's line
    state.consoleDestroyed = false;
    const again = await c.openVmConsole('vm-a');
    again.resume();
    again.destroy();
    await until(() => state.consoleDestroyed);

    // the agent's server going away ends the client's line
    const third = await c.openVmConsole('vm-a');
    third.resume();
    const thirdClosed = new Promise<void>((r) => third.once('close', () => r()));
    await server.close();
    await thirdClosed;
  });
}

test('exec carries stdout, stderr, stdin and the exit status', async (t) => {
  const { agent, state } = makeTarget();
  const c = await connect(t, (await serve(t, agent)).url);

  const plain = await c.execInContainer('c-a', { args: ['echo', 'hi'], env: ['A=1'], cwd: '/tmp', user: '1000' });
  assert.equal(plain.stdin, undefined, 'no stdin when the agent offers none');
  const [o, e, code] = await Promise.all([text(plain.stdout), text(plain.stderr), plain.exit]);
  assert.deepEqual([o, e, code], ['hello world', 'warning', 0]);
  assert.deepEqual(state.execRequest, { args: ['echo', 'hi'], env: ['A=1'], cwd: '/tmp', user: '1000' });

  const cat = await c.execInContainer('c-a', { args: ['cat'] });
  assert.ok(cat.stdin);
  cat.stdin.write('some ');
  cat.stdin.end('input');
  const [o2, e2, code2] = await Promise.all([text(cat.stdout), text(cat.stderr), cat.exit]);
  assert.deepEqual([o2, e2, code2], ['out:some input', 'err:done', 3]);

  await rejectsWith(c.execInContainer('c-gone', { args: ['true'] }), 'Conflict', 'container c-gone is exited, not running');

  // the client going away mid-session hangs up on the process; the caller's exit rejects
  const sleeper = await c.execInContainer('c-a', { args: ['sleep', '1000'] });
  await new Promise<void>((r) => sleeper.stdout.once('data', () => r()));
  await c.close();
  await rejectsWith(sleeper.exit, 'Unavailable');
  await until(() => state.execStdoutDestroyed);
});

test('exit events arrive; after the server comes back the client reconnects and re-reports every VM', async (t) => {
  const { agent, state } = makeTarget();
  let server = await startAgentServer(agent, { token: TOKEN, ...(await listenOn({ port: 0 })) });
  t.after(() => server.close());
  const port = Number(new URL(server.url).port);
  const c = await connect(t, server.url);
  const vms: string[] = [];
  const containers: string[] = [];
  c.onVmExit((id) => vms.push(id));
  c.onContainerExit((id) => containers.push(id));

  // the stream opens in the background: fire until it is heard
  await until(() => {
    state.fireVmExit('vm-x');
    return vms.includes('vm-x');
  });
  state.fireContainerExit('c-x');
  await until(() => containers.includes('c-x'));

  await server.close();
  vms.length = 0;
  containers.length = 0;
  state.vms = ['vm-a', 'vm-b', 'vm-c'];
  server = await startAgentServer(agent, { token: TOKEN, ...(await listenOn({ port })) });
  await until(() => ['vm-a', 'vm-b', 'vm-c'].every((id) => vms.includes(id)));
  await until(() => containers.includes('c-a'));
  // and live events flow on the new stream
  state.fireVmExit('vm-y');
  await until(() => vms.includes('vm-y'));
});

test('the events stream pings', async (t) => {
  const { agent } = makeTarget();
  const server = await startAgentServer(agent, { token: TOKEN, ...(await listenOn({ port: 0 })), pingIntervalMs: 20 });
  t.after(() => server.close());
  const { port } = new URL(server.url);
  const tls = { ...(await pki()).client, checkServerIdentity: () => undefined };
  const headers = { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: String(AGENT_PROTOCOL_VERSION) };
  const first = await new Promise<string>((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: PATHS.events, headers, ...tls, agent: false }, (res) => {
      res.once('data', (b: Buffer) => {
        resolve(b.toString());
        res.destroy();
      });
    });
    req.on('error', reject);
  });
  assert.equal(first, '{"kind":"ping"}\n');
});

test('an unreachable agent is Unavailable, naming it; ping says false', async (t) => {
  const { agent } = makeTarget();
  const gone = await startAgentServer(agent, { token: TOKEN, ...(await listenOn({ port: 0 })) });
  await gone.close();
  const tcp = await connect(t, gone.url);
  // tenants read these (their instance's host is down): the host's name, never its address; the URL and Node's own words are the administrator's
  const refused = await rejectsWith(tcp.info(), 'Unavailable', /^agent test: connect ECONNREFUSED$/);
  const { hostname, port } = new URL(gone.url);
  assert.ok(!refused.message.includes(hostname) && !refused.message.includes(port), refused.message);
  assert.match((refused as { adminMessage?: string }).adminMessage ?? '', new RegExp(`^agent test at ${gone.url.replace(/[.]/g, '\\.')}: connect ECONNREFUSED ${hostname.replace(/[.]/g, '\\.')}:${port}$`));
  assert.ok(!JSON.stringify(refused).includes(port), 'nothing serialises the address along');
  assert.equal(await tcp.ping(), false);

  const socketPath = path.join(tempDir(t), 'nobody.sock');
  const unixUrl = `unix:${socketPath}`;
  const unix = await connect(t, unixUrl);
  const absent = await rejectsWith(unix.listVms(), 'Unavailable', /^agent test: connect ENOENT$/);
  assert.ok((absent as { adminMessage?: string }).adminMessage?.includes(socketPath), 'the socket\'s path is the administrator\'s');
  await rejectsWith((async () => { for await (const _ of unix.vmLogs('v', {})) void _; })(), 'Unavailable');
  await rejectsWith(unix.openVmConsole('v'), 'Unavailable');

  // an agent that accepts the call but never answers
  const { agent: hung, state: hungState } = makeTarget();
  hungState.infoHangs = true;
  const slow = await connect(t, (await serve(t, hung)).url, TOKEN, { timeoutMs: 100 });
  await rejectsWith(slow.info(), 'Unavailable', /^agent test: no answer within 100 ms$/);
  assert.equal(await slow.ping(50), false);

  // what is not carried
  assert.equal(unix.claimWarmContainer(), undefined);
  assert.throws(() => unix.diskImagePath(), (e: unknown) => hasCode(e, 'InvalidArgument'));
  assert.throws(() => new RemoteAgent({ name: 'x', url: 'ftp://h', token: TOKEN }), (e: unknown) => hasCode(e, 'InvalidArgument'));
  // TCP is TLS only, and TLS needs the CA
  assert.throws(() => new RemoteAgent({ name: 'x', url: 'http://127.0.0.1:1', token: TOKEN }), /over TLS only/);
  assert.throws(() => new RemoteAgent({ name: 'x', url: 'https://127.0.0.1:1', token: TOKEN }), /needs the control plane's CA/);
  await assert.rejects(startAgentServer(agent, { token: TOKEN, host: '127.0.0.1', port: 0 }), /needs TLS/);

  // a closed client refuses rather than reconnecting
  await tcp.close();
  await rejectsWith(tcp.info(), 'Unavailable', /connection closed/);
});


// ---- argument schemas ----------------------------------------------------------------------

test('the schema table covers exactly the unary methods', () => {
  assert.deepEqual(Object.keys(ARG_SCHEMAS).sort(), [...UNARY_METHODS].sort());
});

/** A value no schema of this kind accepts: a number where a string is wanted, a string elsewhere. */
const wrongFor = (schema: TSchema): unknown => (schema.type === 'string' || (schema.anyOf as TSchema[] | undefined)?.every((m) => m.type === 'string') ? 12345 : 'not-this');

test('every argument of every unary method is checked before dispatch (generated from the schema table)', async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const post = async (method: string, args: unknown[]) => {
    const r = await raw(server.url, 'POST', PATHS.call(method), auth, Buffer.from(JSON.stringify({ args })));
    return { status: r.status, error: (JSON.parse(r.body || '{}') as { error?: { code: string; message: string; details?: Record<string, unknown> } }).error };
  };
  let checked = 0;
  for (const method of UNARY_METHODS) {
    const specs = ARG_SCHEMAS[method] as readonly ArgSpec[];
    const valid = specs.map((s) => Value.Create(s.schema));
    for (const [i, spec] of specs.entries()) {
      const args = [...valid];
      args[i] = wrongFor(spec.schema);
      const r = await post(method, args);
      assert.equal(r.status, 400, `${method}(${spec.name}): ${JSON.stringify(r)}`);
      assert.equal(r.error?.code, 'InvalidArgument');
      assert.match(r.error?.message ?? '', new RegExp(`^${method}: argument ${i + 1} \\("${spec.name}"\\)`));
      assert.equal(r.error?.details?.argument, spec.name);
      if (!spec.optional) {
        const missing = await post(method, valid.slice(0, i));
        assert.equal(missing.status, 400, `${method} without ${spec.name}`);
        assert.match(missing.error?.message ?? '', /is missing/);
      }
      checked++;
    }
    const tooMany = await post(method, [...valid, 'extra']);
    assert.equal(tooMany.status, 400, `${method} with one argument too many`);
  }
  assert.equal(checked, UNARY_METHODS.reduce((n, m) => n + ARG_SCHEMAS[m].length, 0));
  assert.ok(checked > 40, `checked ${checked} arguments`);
  assert.equal(state.calls.length, 0, 'no malformed call reached the agent');

  // a nested field is named, and a well-formed call goes through
  const c = await connect(t, server.url);
  const bad = await rejectsWith(c.createVm({ id: 'v', name: 'n', cpus: 'two', memoryMiB: 1 } as unknown as VmCreateRequest), 'InvalidArgument', /"req\.cpus"/);
  assert.equal(bad.details?.field, 'req.cpus');
  await c.createVm({ id: 'v', name: 'n', cpus: 2, memoryMiB: 1 });
  assert.equal(state.calls.length, 1);
});

// ---- versions --------------------------------------------------------------------------------

test('the protocol version is agreed on and carried by every request; a mismatch names both sides', async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const body = Buffer.from('{"args":["vm-1","SIGKILL"]}');
  const noHeader = await raw(server.url, 'POST', PATHS.call('killVm'), { ...auth, [PROTOCOL_HEADER]: '' }, body);
  assert.equal(noHeader.status, 400);
  assert.match(noHeader.body, new RegExp(`carries no x-nimbus-agent-protocol header.*speaks agent protocol 2\\.\\.${AGENT_PROTOCOL_VERSION}`));
  const next = AGENT_PROTOCOL_VERSION + 1;
  const future = await raw(server.url, 'POST', PATHS.call('killVm'), { ...auth, [PROTOCOL_HEADER]: String(next) }, body);
  assert.equal(future.status, 409);
  assert.match(future.body, new RegExp(`speaks agent protocol ${next}; this agent speaks 2\\.\\.${AGENT_PROTOCOL_VERSION}`));
  const events = await raw(server.url, 'GET', PATHS.events, { ...auth, [PROTOCOL_HEADER]: '1' });
  assert.equal(events.status, 409, 'streams check the version too');
  assert.equal(state.calls.length, 0);

  const c = await connect(t, server.url);
  assert.equal(await c.protocolVersion(), AGENT_PROTOCOL_VERSION);
  await c.killVm('vm-1', 'SIGKILL');
  assert.equal(state.calls.length, 1);

  // a control plane that speaks only a later version: refused before any call, both ranges named
  const later = AGENT_PROTOCOL_VERSION + 1;
  const newer = await connect(t, server.url, TOKEN, { protocol: { min: later, max: later + 1 } });
  await rejectsWith(newer.info(), 'Conflict', `agent test speaks agent protocol 2..${AGENT_PROTOCOL_VERSION}, this control plane speaks ${later}..${later + 1}: no version in common`);
  // an agent from before versions (no hello route): named as protocol 1
  const old = http.createServer((req, res) => {
    req.resume();
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { code: 'NotFound', message: `no agent route for ${req.method} ${req.url}` } }));
  });
  const oldSock = path.join(tempDir(t), 'old.sock');
  await new Promise<void>((resolve) => old.listen(oldSock, resolve));
  t.after(() => new Promise<void>((resolve) => old.close(() => resolve())));
  await rejectsWith((await connect(t, `unix:${oldSock}`)).listVms(), 'Conflict', `agent test speaks agent protocol 1 (it has no hello), this control plane speaks 2..${AGENT_PROTOCOL_VERSION}: upgrade the agent`);
  // an agent that speaks 1..3 with a control plane of 2..4: they agree on 3
  const wide = await serve(t, agent, { port: 0 }, { protocol: { min: 1, max: 3 } });
  assert.equal(await (await connect(t, wide.url, TOKEN, { protocol: { min: 2, max: 4 } })).protocolVersion(), 3);
});

test('volumes are protocol 5: carried to an agent of 5, refused to one of 4 with what it cannot do (containers\' mounts too)', async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const c = await connect(t, server.url);
  const id = 'ab'.repeat(32);
  assert.deepEqual(await c.createVolume(id, 16 * 1024 * 1024), { id, sizeBytes: 16 * 1024 * 1024, path: `/volumes/${id}/mnt/_data`, mounted: true });
  const mounts = [{ type: 'volume' as const, volumeId: id, target: '/data' }, { type: 'tmpfs' as const, target: '/t', sizeBytes: 1024 }];
  const req = { id: 'c1', name: 'c', imageChainId: 'sha256:x', process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {}, mounts };
  await c.createContainer(req);
  assert.deepEqual(state.calls.map((x) => x.method), ['createVolume', 'createContainer']);
  assert.deepEqual((state.calls[1]?.args[0] as { mounts: unknown }).mounts, mounts, 'the mounts travel as given');
  // a malformed mount is refused by the agent's schema before the agent sees it
  const bad = await raw(server.url, 'POST', PATHS.call('createContainer'), { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', [PROTOCOL_HEADER]: '5' },
    Buffer.from(JSON.stringify({ args: [{ ...req, mounts: [{ type: 'device', target: '/x' }] }] })));
  assert.equal(bad.status, 400);
  assert.equal(state.calls.length, 2);

  const old = await connect(t, server.url, TOKEN, { protocol: { min: 2, max: 4 } });
  await rejectsWith(old.createVolume(id, 16 * 1024 * 1024), 'Conflict', /speaks protocol 4 and cannot hold volumes \(createVolume needs protocol 5\); upgrade it/);
  await rejectsWith(old.createContainer(req), 'Conflict', /speaks protocol 4 and cannot mount volumes, host paths or tmpfs into a container \(needs protocol 5\)/);
  // without mounts a container is what it always was
  await old.createContainer({ ...req, mounts: [] });
  assert.equal(state.calls.length, 3);
});

test('ports the host chooses (hostPort 0) are protocol 8: carried to an agent of 8, refused to one of 7 before it is called', async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const network = { mode: 'networks' as const, endpoints: [], ports: [{ protocol: 'tcp' as const, hostPort: 0, containerPort: 80 }], extraHosts: [], dns: [] };
  const req = { id: 'c1', name: 'c', imageChainId: 'sha256:x', process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {}, network };
  await (await connect(t, server.url)).createContainer(req);
  assert.deepEqual((state.calls.at(-1)?.args[0] as { network: unknown }).network, network, 'port 0 travels as given');
  const old = await connect(t, server.url, TOKEN, { protocol: { min: 2, max: 7 } });
  const calls = state.calls.length;
  await rejectsWith(old.createContainer(req), 'Conflict', /speaks protocol 7 and cannot choose a published port \(-P, -p PORT need protocol 8\)/);
  assert.equal(state.calls.length, calls, 'the old agent was not asked');
});

// ---- protocol 9 ---------------------------------------------------------------------------------

test('a host range to choose from (hostPortEnd) and a volume\'s copyUp are protocol 9: carried to an agent of 9, refused to one of 8 before it is called', async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const network = { mode: 'networks' as const, endpoints: [], ports: [{ protocol: 'tcp' as const, hostPort: 8000, hostPortEnd: 8010, containerPort: 80 }], extraHosts: [], dns: [] };
  const req = { id: 'c1', name: 'c', imageChainId: 'sha256:x', process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {}, network };
  await (await connect(t, server.url)).createContainer(req);
  assert.deepEqual((state.calls.at(-1)?.args[0] as { network: unknown }).network, network, 'the range travels as given');
  const copy = { ...req, network: undefined, mounts: [{ type: 'volume' as const, volumeId: 'v1', target: '/srv', copyUp: true }] };
  await (await connect(t, server.url)).createContainer(copy);
  assert.deepEqual((state.calls.at(-1)?.args[0] as { mounts: unknown }).mounts, copy.mounts, 'copyUp travels as given');
  const old = await connect(t, server.url, TOKEN, { protocol: { min: 2, max: 8 } });
  const calls = state.calls.length;
  await rejectsWith(old.createContainer(req), 'Conflict', /speaks protocol 8 and cannot choose a published port from a range \(-p FIRST-LAST:PORT needs protocol 9\)/);
  await rejectsWith(old.createContainer(copy), 'Conflict', /speaks protocol 8 and cannot copy an image's files into a new volume \(needs protocol 9\); mount it with nocopy/);
  assert.equal(state.calls.length, calls, 'the old agent was not asked');
  // without either, a container is what it was at 8
  await old.createContainer({ ...req, network: { ...network, ports: [{ protocol: 'tcp' as const, hostPort: 8000, containerPort: 80 }] } });
  assert.equal(state.calls.length, calls + 1);
});

// ---- protocol 12 --------------------------------------------------------------------------------

test("a writable layer's size is protocol 12: carried to an agent of 12, refused to one of 11 before it is called (it would make the layer unbounded)", async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const req = { id: 'c1', name: 'c', imageChainId: 'sha256:x', process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {}, storageBytes: 64 * 1024 * 1024 };
  await (await connect(t, server.url)).createContainer(req);
  assert.equal((state.calls.at(-1)?.args[0] as { storageBytes: unknown }).storageBytes, 64 * 1024 * 1024, 'the size travels as given');
  await rejectsWith((await connect(t, server.url)).createContainer({ ...req, storageBytes: 1000 }), 'InvalidArgument', /storageBytes/);
  const old = await connect(t, server.url, TOKEN, { protocol: { min: 2, max: 11 } });
  const calls = state.calls.length;
  await rejectsWith(old.createContainer(req), 'Conflict', /speaks protocol 11 and cannot bound a container's writable layer \(a storage size needs protocol 12\)/);
  await rejectsWith(old.restoreContainer(req), 'Conflict', /speaks protocol 11 and cannot bound/);
  await rejectsWith(old.importContainerLayer('c1', 'sha256:x', (async function* () {})(), { storageBytes: req.storageBytes }), 'Conflict', /speaks protocol 11 and cannot bound/);
  assert.equal(state.calls.length, calls, 'the old agent was not asked');
  const { storageBytes: _sized, ...unsized } = req;
  await old.createContainer(unsized);
  assert.equal(state.calls.length, calls + 1, 'without a size, a container is what it was at 11');
});

test("a live migration's stream token is protocol 14: carried to an agent of 14, not sent to one of 13, and dropped by an agent from a caller of 13", async (t) => {
  const { agent, state } = makeTarget();
  const server = await serve(t, agent);
  const streamToken = 'ab'.repeat(32);
  const spec = { id: 'vm-1', name: 'v', createdAt: '2026-12-07T00:00:00.000Z', config: {}, streamToken };
  const arg = (method: string) => [...state.calls].reverse().find((c) => c.method === method)?.args as [Record<string, unknown>, ...unknown[]];
  const current = await connect(t, server.url);
  await current.prepareVmIncoming(spec);
  assert.equal(arg('prepareVmIncoming')[0].streamToken, streamToken);
  await current.migrateVmOut('vm-1', 'tcp:127.0.0.1:1', { maxDowntimeMs: 300, streamToken });
  assert.equal((arg('migrateVmOut')[2] as { streamToken?: string }).streamToken, streamToken);
  await rejectsWith(current.prepareVmIncoming({ ...spec, streamToken: 'not-hex' }), 'InvalidArgument', /streamToken/);

  const old = await connect(t, server.url, TOKEN, { protocol: { min: 2, max: 13 } });
  await old.prepareVmIncoming(spec);
  assert.equal(arg('prepareVmIncoming')[0].streamToken, undefined, 'not sent to an agent of 13');
  assert.equal(arg('prepareVmIncoming')[0].id, 'vm-1');
  await old.migrateVmOut('vm-1', 'tcp:127.0.0.1:1', { maxDowntimeMs: 300, streamToken });
  assert.equal((arg('migrateVmOut')[2] as { streamToken?: string }).streamToken, undefined);

  // a control plane of 13 passes a source's spec on whole, token included, but would never tell
  // the source to send it: the destination takes none from it (it would wait for one in vain)
  const calls = state.calls.length;
  const r = await raw(server.url, 'POST', PATHS.call('prepareVmIncoming'), { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', [PROTOCOL_HEADER]: '13' }, Buffer.from(JSON.stringify({ args: [spec] })));
  assert.equal(r.status, 200, r.body);
  assert.equal(state.calls.length, calls + 1);
  assert.equal(arg('prepareVmIncoming')[0].streamToken, undefined, 'dropped from a request of 13');
});

// ---- mutual TLS --------------------------------------------------------------------------------

test('over TCP the agent takes only the control plane\'s CA-signed certificate, and the control plane only the named agent\'s', async (t) => {
  const { agent, state } = makeTarget();
  const { ca, client, server: serverTls } = await pki();
  const server = await serve(t, agent);
  const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const call = (tls: Record<string, unknown>) => raw(server.url, 'POST', PATHS.call('listVms'), auth, Buffer.from('{"args":[]}'), { ...tls, checkServerIdentity: () => undefined });

  assert.equal((await call({ ca: ca.cert, cert: client.cert, key: client.key })).status, 200);
  // no client certificate at all: the handshake fails
  await assert.rejects(call({ ca: ca.cert }), (e: NodeJS.ErrnoException) => /certificate|ECONNRESET|socket hang up/i.test(`${e.code} ${e.message}`));
  // a certificate from another CA, however it is named
  const other = await makeCa('another CA');
  const stranger = await issueCertificate(other, { commonName: CONTROL_PLANE_CERT_NAME, usage: 'client' });
  await assert.rejects(call({ ca: ca.cert, cert: stranger.cert, key: stranger.key }), (e: NodeJS.ErrnoException) => /certificate|ECONNRESET|socket hang up/i.test(`${e.code} ${e.message}`));
  // a certificate from the right CA that names someone else (another agent's client)
  const peer = await issueCertificate(ca, { commonName: 'another-agent', usage: 'client' });
  const r = await call({ ca: ca.cert, cert: peer.cert, key: peer.key });
  assert.equal(r.status, 403);
  assert.match((JSON.parse(r.body) as { error: { message: string } }).error.message, /takes calls from "nimbus-control-plane" only, not from "another-agent"/);
  // an agent's own (server) certificate is no client certificate
  await assert.rejects(call({ ca: ca.cert, cert: serverTls.cert, key: serverTls.key }), (e: NodeJS.ErrnoException) => /certificate|ECONNRESET|socket hang up/i.test(`${e.code} ${e.message}`));
  // plain HTTP to the TLS port gets nowhere
  await assert.rejects(raw(server.url.replace('https:', 'http:'), 'POST', PATHS.call('listVms'), auth, Buffer.from('{"args":[]}')));

  // the control plane's side: the agent's certificate must name the agent it meant
  const impostor = await connect(t, server.url, TOKEN, { name: 'someone-else' });
  await rejectsWith(impostor.info(), 'Unavailable', /certificate names "test", not "someone-else"/);
  // ... and chain to its CA
  const wrongCa = await connect(t, server.url, TOKEN, { tls: { ...client, ca: other.cert } });
  // OpenSSL's verdict by its code (tenants may read it); its words, with the URL, are the administrator's
  const untrusted = await rejectsWith(wrongCa.info(), 'Unavailable', /^agent test: SELF_SIGNED_CERT_IN_CHAIN$/);
  assert.match((untrusted as { adminMessage?: string }).adminMessage ?? '', /certificate/);
  assert.equal(state.calls.length, 0);
});
