/**
 * Joining over TLS, two processes on loopback: this one is the control plane (store, agent CA,
 * agent directory and the agent routes of the API on a unix socket and on TCP), a child process
 * runs startAgentProcess (the real join, TLS listener and registration) with a stand-in agent
 * behind it. Join tokens: one use, expiry, forgery; the agent refuses callers without the
 * control plane's certificate; a restart reuses the kept certificate.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openStore } from '../store/open.js';
import type { Store } from '../store/store.js';
import type { Agent } from '../agent/agent.js';
import { AgentCa } from '../control/agents/agent-ca.js';
import { AgentDirectory } from '../control/agents/agent-directory.js';
import { remoteAgentConnector } from '../control/agents/agent-connections.js';
import type { Services } from '../control/services.js';
import { ApiServer } from '../api/server.js';
import { agentRoutes } from '../api/routes/agents.js';
import { AGENT_PROTOCOL_VERSION, PATHS, PROTOCOL_HEADER } from '../agent/remote/agent-protocol.js';
import { formatJoinToken, parseJoinToken } from '../agent/remote/join-token.js';
import { issueCertificate, makeCa } from '../core/pki.js';

const AGENT_PROCESS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'agent-process.js');

/** The child: startAgentProcess with an agent that only knows its name. */
const CHILD = `
import { startAgentProcess } from ${JSON.stringify(AGENT_PROCESS)};
const name = process.env.AGENT_NAME;
const stub = {
  info: async () => ({ name, hostname: 'child', cpus: 1, memoryBytes: 1, runtimes: [], snapshotters: [], cgroupLayout: 'v2', snapshotter: 'native', kernel: 'x' }),
  listVms: async () => [], listContainers: async () => [], reconcileVms: async () => ({ killed: [], removed: [] }),
  onVmExit() {}, onContainerExit() {}, close: async () => {},
};
try {
  const running = await startAgentProcess(
    { name, home: process.env.AGENT_HOME, listen: '127.0.0.1:0', controlPlane: process.env.CONTROL_PLANE, ...(process.env.JOIN_TOKEN ? { joinToken: process.env.JOIN_TOKEN } : {}) },
    { createAgent: async () => stub },
  );
  process.stdout.write('serving ' + running.url + '\\n');
  running.registered.then(() => process.stdout.write('registered\\n'), (e) => { process.stdout.write('refused: ' + e.message + '\\n'); process.exit(3); });
  process.on('SIGTERM', () => void running.stop().then(() => process.exit(0)));
} catch (e) {
  process.stdout.write('failed: ' + e.message + '\\n');
  process.exit(2);
}
`;

interface ControlPlane {
  store: Store;
  ca: AgentCa;
  dir: AgentDirectory;
  socket: string;
  tcpUrl: string;
  home: string;
}

async function controlPlane(t: TestContext): Promise<ControlPlane> {
  const home = mkdtempSync(path.join(tmpdir(), 'nimbus-join-'));
  const store = await openStore(path.join(home, 'nimbus.db'));
  const ca = await AgentCa.open(path.join(home, 'agent-ca'));
  const local = { onVmExit() {}, info: async () => ({ name: 'local' }) } as unknown as Agent;
  const dir = await AgentDirectory.open(store, local, 'local', remoteAgentConnector(ca), ca);
  const services = {
    agents: dir,
    store,
    vms: { countOn: async () => 0, list: async () => [] },
    identity: { localAdmin: () => undefined, authenticate: () => undefined },
  } as unknown as Services;
  const api = new ApiServer(agentRoutes, services);
  const socket = path.join(home, 'api.sock');
  await api.listenUnix(socket);
  const port = await api.listenTcp('127.0.0.1', 0);
  t.after(async () => {
    await api.close();
    await dir.close();
    await store.close();
    rmSync(home, { recursive: true, force: true });
  });
  return { store, ca, dir, socket, tcpUrl: `http://127.0.0.1:${port}`, home };
}

function apiCall(socketPath: string, method: string, p: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({ socketPath, method, path: p, headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

interface Child {
  proc: ChildProcess;
  output: () => string;
  /** Resolves with the first line matching one of the words, or the exit. */
  until(re: RegExp): Promise<string>;
  exited: Promise<number | null>;
}

function startChild(t: TestContext, env: Record<string, string>): Child {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', CHILD], {
    env: { ...process.env, NIMBUS_LOG_LEVEL: 'error', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  t.after(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await exited;
    }
  });
  return {
    proc,
    output: () => out,
    exited,
    async until(re) {
      const end = Date.now() + 30_000;
      for (;;) {
        const m = re.exec(out);
        if (m) return m[0];
        if (proc.exitCode !== null) throw new Error(`the agent exited with ${proc.exitCode} before ${re}:\n${out}`);
        if (Date.now() > end) throw new Error(`timed out waiting for ${re}:\n${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

async function issueToken(cp: ControlPlane, ttlSeconds?: number): Promise<string> {
  const r = await apiCall(cp.socket, 'POST', '/agents/join-tokens', ttlSeconds !== undefined ? { ttlSeconds } : {});
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.token as string;
}

/** A call to the agent's TLS port with whatever client certificate (or none) is given. */
function callAgent(url: string, tls: Record<string, unknown>): Promise<number> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: u.hostname, port: Number(u.port), method: 'POST', path: PATHS.call('listVms'), agent: false, ...tls, checkServerIdentity: () => undefined,
      headers: { 'content-type': 'application/json', [PROTOCOL_HEADER]: String(AGENT_PROTOCOL_VERSION), authorization: 'Bearer not-the-token-0123456789' },
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end('{"args":[]}');
  });
}

test('an agent joins with a token over loopback, serves mutual TLS, and registers without a credential', async (t) => {
  const cp = await controlPlane(t);
  const home = mkdtempSync(path.join(tmpdir(), 'nimbus-join-agent-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  const token = await issueToken(cp);

  const child = startChild(t, { AGENT_NAME: 'b', AGENT_HOME: home, CONTROL_PLANE: cp.tcpUrl, JOIN_TOKEN: token });
  const serving = await child.until(/serving https:\/\/127\.0\.0\.1:\d+/);
  const url = serving.slice('serving '.length);
  await child.until(/registered/);
  assert.ok(!child.output().includes(parseJoinToken(token).secret), 'the token is never logged');

  // the control plane reaches it over mutual TLS, under its name
  assert.deepEqual(cp.dir.names(), ['local', 'b']);
  assert.equal((await cp.dir.get('b').info()).hostname, 'child');
  const listed = (await cp.dir.list(() => 0, { admin: true })).find((a) => a.name === 'b');
  assert.deepEqual([listed?.state, listed?.url], ['up', url]);
  assert.equal(statSync(path.join(home, 'tls', 'agent.key')).mode & 0o777, 0o600, 'the agent key is private');
  const [used] = await cp.store.joinTokens.list();
  assert.equal(used?.usedBy, 'b');

  // the agent takes calls from the control plane's certificate only
  await assert.rejects(callAgent(url, { ca: cp.ca.certificate }), 'no client certificate');
  const other = await makeCa('not the control plane');
  const stranger = await issueCertificate(other, { commonName: 'nimbus-control-plane', usage: 'client' });
  await assert.rejects(callAgent(url, { ca: cp.ca.certificate, key: stranger.key, cert: stranger.cert }), 'a certificate from another CA');
  assert.equal(await callAgent(url, { ca: cp.ca.certificate, ...cp.ca.client }), 401, 'the CA\'s client certificate gets through TLS (then the bearer token is checked)');

  // the token is spent: another agent cannot use it
  const home2 = mkdtempSync(path.join(tmpdir(), 'nimbus-join-agent-'));
  t.after(() => rmSync(home2, { recursive: true, force: true }));
  const reuse = startChild(t, { AGENT_NAME: 'c', AGENT_HOME: home2, CONTROL_PLANE: cp.tcpUrl, JOIN_TOKEN: token });
  assert.equal(await reuse.exited, 2);
  assert.match(reuse.output(), /failed: the join token is not valid/);

  // restarted without a token: the kept certificate serves, and it registers again
  child.proc.kill('SIGTERM');
  assert.equal(await child.exited, 0);
  const again = startChild(t, { AGENT_NAME: 'b', AGENT_HOME: home, CONTROL_PLANE: cp.tcpUrl });
  await again.until(/registered/);
  assert.equal((await cp.dir.get('b').info()).name, 'b');
  assert.equal((await cp.store.joinTokens.list()).length, 1, 'no token was needed');
});

test('expired and forged join tokens are refused; a TCP agent without a certificate or token does not start', async (t) => {
  const cp = await controlPlane(t);
  const homes: string[] = [];
  t.after(() => homes.forEach((h) => rmSync(h, { recursive: true, force: true })));
  const home = () => {
    const h = mkdtempSync(path.join(tmpdir(), 'nimbus-join-agent-'));
    homes.push(h);
    return h;
  };
  const refusedWith = async (env: Record<string, string>, re: RegExp) => {
    const c = startChild(t, { AGENT_NAME: 'b', AGENT_HOME: home(), CONTROL_PLANE: cp.tcpUrl, ...env });
    assert.equal(await c.exited, 2, c.output());
    assert.match(c.output(), re);
  };

  const expired = (await cp.dir.issueJoinToken({ ttlMs: 1 })).token;
  await new Promise((r) => setTimeout(r, 20));
  await refusedWith({ JOIN_TOKEN: expired }, /failed: the join token is not valid/);

  const real = parseJoinToken(await issueToken(cp));
  await refusedWith({ JOIN_TOKEN: formatJoinToken({ ...real, secret: 'x'.repeat(43) }) }, /failed: the join token is not valid/);
  // a token naming another CA: refused by the control plane before anything is signed
  await refusedWith({ JOIN_TOKEN: formatJoinToken({ ...real, caFingerprint: '0'.repeat(64) }) }, /failed: the join token is not valid/);
  await refusedWith({ JOIN_TOKEN: 'garbage' }, /failed: not a join token/);
  await refusedWith({}, /failed: agent b listens on TCP, which takes a certificate/);
  assert.equal((await cp.store.joinTokens.get(real.id))?.usedAt, null, 'refusals burned nothing');
  assert.deepEqual(cp.dir.names(), ['local']);

  // registering without a credential is for TLS agents only
  const plain = await new Promise<number>((resolve, reject) => {
    const u = new URL(cp.tcpUrl);
    const req = http.request({ host: u.hostname, port: Number(u.port), method: 'POST', path: '/agents/tls', headers: { 'content-type': 'application/json' } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end(JSON.stringify({ name: 'x', url: 'unix:/run/x.sock', token: 't'.repeat(20), protocol: { min: 2, max: 2 } }));
  });
  assert.equal(plain, 401);
});

test('the agent refuses a CA other than the one its join token names (someone between it and the control plane)', async (t) => {
  const home = mkdtempSync(path.join(tmpdir(), 'nimbus-join-agent-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  const real = await makeCa('the real control plane');
  const fake = await makeCa('someone in between');
  const { certFingerprint, signCsr } = await import('../core/pki.js');
  // answers the join with a certificate for the agent's CSR, signed by the fake CA
  const mitm = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const { csr, name } = JSON.parse(body) as { csr: string; name: string };
      void signCsr(fake, csr, { commonName: name, usage: 'server' }).then((certificate) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ certificate, caCertificate: fake.cert }));
      });
    });
  });
  await new Promise<void>((resolve) => mitm.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => mitm.close(() => resolve())));
  const port = (mitm.address() as { port: number }).port;
  const token = formatJoinToken({ id: '0123456789abcdef', secret: 's'.repeat(43), caFingerprint: certFingerprint(real.cert) });
  const c = startChild(t, { AGENT_NAME: 'b', AGENT_HOME: home, CONTROL_PLANE: `http://127.0.0.1:${port}`, JOIN_TOKEN: token });
  assert.equal(await c.exited, 2, c.output());
  assert.match(c.output(), /failed: the CA the control plane sent is not the one the join token names/);
  assert.ok(!existsSync(path.join(home, 'tls', 'agent.pem')), 'nothing kept');
});
