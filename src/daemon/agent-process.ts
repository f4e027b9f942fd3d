/**
 * `nimbusd agent`: one host's agent in a process of its own, serving the agent protocol
 * (src/agent/remote/) and registering with a control plane — as nova-compute is to Nova.
 * It holds no database: its state is its home directory (content, VMs, networks), and the
 * control plane holds the records. It registers again on every start.
 *
 * On TCP it serves mutual TLS only. Its certificate comes from the control plane's CA: on
 * first start it makes a key and a CSR and redeems a one-time join token for the certificate
 * (POST /agents/join), checking the CA against the fingerprint the token carries; key,
 * certificate and CA stay in HOME/tls. It then registers without a credential (POST
 * /agents/tls: the control plane's mutual-TLS call to it is the proof). On a unix socket it
 * serves plain HTTP and registers with an administrator's credential (POST /agents).
 *
 * States: starting → (joining →) reconciling → serving (→ registered) → stopping → stopped.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { prepareStateDirectories, sweepTempDirs } from './state-dirs.js';
import http from 'node:http';
import https from 'node:https';
import { rootCertificates } from 'node:tls';
import path from 'node:path';
import { compileOptions, type CompiledOptions, type NimbusOptions } from '../core/config.js';
import { InvalidArgument, Unauthenticated, logMessage } from '../core/errors.js';
import { addHostRoots } from '../core/redaction.js';
import { logger } from '../core/log.js';
import { certCommonName, certFingerprint, issuedBy, makeKeyAndCsr } from '../core/pki.js';
import { LocalAgent } from '../agent/local-agent.js';
import type { Agent } from '../agent/agent.js';
import { startAgentServer, type AgentServerTls } from '../agent/remote/agent-server.js';
import { CONTROL_PLANE_CERT_NAME, SPOKEN_PROTOCOL } from '../agent/remote/agent-protocol.js';
import { parseJoinToken } from '../agent/remote/join-token.js';
import { ApiError } from '../cli/client.js';
import { takePidLock } from './daemon.js';

const log = logger('nimbusd-agent');

export interface AgentProcessOptions {
  home: string;
  /** The name it registers under (unique per control plane). */
  name: string;
  /** Where it serves the agent protocol: HOST:PORT (port 0: any free one) or unix:/PATH. */
  listen: string;
  /** The control plane's API: unix:/PATH, http://HOST:PORT or https://HOST:PORT (TLS in front of it). Absent: serve only (register by hand). */
  controlPlane?: string;
  /** A one-time token from the control plane (nimbus agent join-token): how a TCP agent gets its certificate. */
  joinToken?: string;
  /** The URL the control plane reaches it by, when not the listener's own (NAT, a proxy). */
  advertise?: string;
  /** Credential for the control plane's API (an administrator's token or API key): unix-socket agents register with it. */
  apiToken?: string;
  /** A CA (PEM) an https:// control plane's certificate may chain to, beside the system's (nimbusd --tls-cert's; --control-plane-ca). */
  controlPlaneCa?: string;
  /** Daemon options the agent shares with nimbusd (network names, accelerator, ...). */
  overrides?: Partial<NimbusOptions>;
}

export interface RunningAgentProcess {
  readonly name: string;
  readonly url: string;
  /** Resolves once the control plane has accepted the registration (never, without one). */
  readonly registered: Promise<void>;
  stop(): Promise<void>;
}

/** The agent's protocol secret: made on first start, kept (0600) so registrations stay valid across restarts. */
function agentToken(home: string): string {
  const file = path.join(home, 'agent.token');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  const t = randomBytes(32).toString('hex');
  writeFileSync(file, `${t}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return t;
}

/** Written whole or not at all. */
function writeFileAtomic(file: string, text: string, mode: number): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, file);
}

/** Certificates are renewed (by joining again) when they have less than this left. */
const RENEW_BEFORE_MS = 7 * 24 * 3600_000;

/**
 * The agent's TLS identity: the one kept in HOME/tls when it is still good (signed by the kept
 * CA, naming this agent, not near its end) and no join token names another CA; otherwise a
 * new one, through the join token.
 */
async function agentCertificate(o: AgentProcessOptions, home: string, stopped: () => boolean): Promise<AgentServerTls> {
  const dir = path.join(home, 'tls');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const files = { key: path.join(dir, 'agent.key'), cert: path.join(dir, 'agent.pem'), ca: path.join(dir, 'ca.pem') };
  const token = o.joinToken ? parseJoinToken(o.joinToken) : undefined;
  if (existsSync(files.key) && existsSync(files.cert) && existsSync(files.ca)) {
    const kept = { key: readFileSync(files.key, 'utf8'), cert: readFileSync(files.cert, 'utf8'), ca: readFileSync(files.ca, 'utf8') };
    const good = issuedBy(kept.cert, kept.ca, new Date(Date.now() + RENEW_BEFORE_MS)) && certCommonName(kept.cert) === o.name;
    if (good && (!token || token.caFingerprint === certFingerprint(kept.ca))) {
      if (token) log.info('this agent already holds a certificate from that control plane; the join token was not used', { name: o.name });
      return { ...kept, clientName: CONTROL_PLANE_CERT_NAME };
    }
    if (!token) throw new InvalidArgument(`agent ${o.name}: its certificate in ${dir} has expired, is near its end or names another agent; start it again with --join-token (nimbus agent join-token)`);
  }
  if (!token || !o.joinToken) throw new InvalidArgument(`agent ${o.name} listens on TCP, which takes a certificate from the control plane: start it once with --join-token (nimbus agent join-token), or listen on unix:/PATH`);
  if (!o.controlPlane) throw new InvalidArgument('a join token needs --control-plane');
  const { key, csr } = await makeKeyAndCsr(o.name);
  const answer = await withRetry('join', o.controlPlane, stopped, () =>
    controlPlaneCall<{ certificate: string; caCertificate: string }>(o.controlPlane!, '/agents/join', { joinToken: o.joinToken, name: o.name, csr, protocol: SPOKEN_PROTOCOL }, undefined, o.controlPlaneCa),
  );
  // the token says which CA to expect: an answer with another one is not from our control plane
  if (certFingerprint(answer.caCertificate) !== token.caFingerprint) {
    throw new Unauthenticated('the CA the control plane sent is not the one the join token names: refusing it (the wrong control plane, or someone in between)');
  }
  if (!issuedBy(answer.certificate, answer.caCertificate) || certCommonName(answer.certificate) !== o.name) {
    throw new Unauthenticated(`the certificate the control plane sent is not the CA's for agent "${o.name}"`);
  }
  writeFileAtomic(files.key, key, 0o600);
  writeFileAtomic(files.ca, answer.caCertificate, 0o644);
  writeFileAtomic(files.cert, answer.certificate, 0o644); // last: a certificate on disk means the set is whole
  log.info('joined the control plane: certificate issued', { name: o.name, controlPlane: o.controlPlane, dir });
  return { key, cert: answer.certificate, ca: answer.caCertificate, clientName: CONTROL_PLANE_CERT_NAME };
}

function listenTarget(listen: string): { socketPath: string } | { host: string; port: number } {
  if (listen.startsWith('unix:')) return { socketPath: listen.slice('unix:'.length) };
  const i = listen.lastIndexOf(':');
  const port = Number(listen.slice(i + 1));
  if (i < 1 || !Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgument(`--listen must be HOST:PORT or unix:/PATH, got "${listen}"`);
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

/** What the process runs; tests put a stand-in agent behind the real join, TLS and registration. */
export interface AgentProcessDeps {
  createAgent?: (options: CompiledOptions) => Promise<Agent>;
}

export async function startAgentProcess(o: AgentProcessOptions, deps: AgentProcessDeps = {}): Promise<RunningAgentProcess> {
  // no warm pool: warm containers lease addresses from the control plane in-process only
  const options = compileOptions({ warmPerImage: 0, ...o.overrides, home: o.home, agentName: o.name });
  prepareStateDirectories(options, { runsInstances: true });
  const target = listenTarget(o.listen);
  // its state directory and socket are the host's: what it answers the control plane names neither to members (core/redaction.ts)
  addHostRoots([options.home, ...('socketPath' in target ? [target.socketPath] : [])]);
  const releaseLock = takePidLock(options.home, 'nimbusd agent');
  await sweepTempDirs();
  let stopping = false;
  let tls: AgentServerTls | undefined;
  try {
    // before anything else runs: an agent that cannot get a certificate has nothing to serve
    if (!('socketPath' in target)) tls = await agentCertificate(o, options.home, () => stopping);
  } catch (e) {
    releaseLock();
    throw e;
  }
  let agent: Agent;
  try {
    // the same certificate carries its live migrations (QEMU's TLS, docs/security.md); a unix-socket agent has none
    const migrationTls = tls ? { name: o.name, ca: tls.ca, cert: tls.cert, key: tls.key } : undefined;
    agent = await (deps.createAgent ?? ((c: CompiledOptions) => LocalAgent.create(c, migrationTls ? { migrationTls } : {})))(options);
  } catch (e) {
    releaseLock();
    throw e;
  }
  // its own state first: orphan QEMU killed, live VMs watched again (the control plane compares records later)
  const rec = await agent.reconcileVms();
  if (rec.killed.length || rec.removed.length) log.info('reconciled VMs', rec);
  const token = agentToken(options.home);
  const server = await startAgentServer(agent, { token, ...target, ...(tls ? { tls } : {}) });
  const url = o.advertise ?? server.url;
  log.info('agent serving', { name: o.name, url, home: options.home, tls: !!tls });

  const registered = o.controlPlane
    ? register(o.controlPlane, { name: o.name, url, token, protocol: SPOKEN_PROTOCOL }, o.apiToken, () => stopping, o.controlPlaneCa)
    : new Promise<void>(() => undefined);
  registered.catch(() => undefined);
  return {
    name: o.name,
    url,
    registered,
    async stop() {
      if (stopping) return;
      stopping = true;
      // VMs are not stopped: their supervisors keep them running without us
      await server.close();
      await agent.close();
      releaseLock();
      log.info('agent stopped', { name: o.name });
    },
  };
}

/**
 * One JSON request to the control plane's API (unix:/PATH, http:// or https://), with the
 * credential when given; an error status is an ApiError as the CLI's client makes them.
 */
function controlPlaneCall<T>(controlPlane: string, apiPath: string, body: unknown, apiToken?: string, ca?: string): Promise<T> {
  const payload = Buffer.from(JSON.stringify(body));
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': payload.length };
  if (apiToken) headers.authorization = `Bearer ${apiToken}`;
  let request: typeof http.request = http.request;
  let target: { socketPath: string } | { host: string; port: number; ca?: string[] };
  if (controlPlane.startsWith('unix:')) target = { socketPath: controlPlane.slice('unix:'.length).replace(/^\/\/(?=\/)/, '') };
  else {
    let u: URL;
    try {
      u = new URL(/^[a-z]+:\/\//.test(controlPlane) ? controlPlane : `http://${controlPlane}`);
    } catch {
      throw new InvalidArgument(`--control-plane must be unix:/PATH, http://HOST:PORT or https://HOST:PORT, got "${controlPlane}"`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidArgument(`--control-plane must be unix:/PATH, http://HOST:PORT or https://HOST:PORT, got "${controlPlane}"`);
    if (u.protocol === 'https:') request = https.request;
    target = { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || (u.protocol === 'https:' ? 443 : 80)), ...(u.protocol === 'https:' && ca ? { ca: [...rootCertificates, ca] } : {}) };
  }
  return new Promise<T>((resolve, reject) => {
    const req = request({ ...target, method: 'POST', path: apiPath, headers, timeout: 60_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {
          parsed = undefined;
        }
        const status = res.statusCode ?? 500;
        if (status < 400) return resolve(parsed as T);
        const err = (parsed as { error?: { code?: string; message?: string; details?: Record<string, unknown> } } | undefined)?.error;
        reject(new ApiError(status, err?.code ?? 'Internal', err?.message ?? (text || `HTTP ${status}`), err?.details));
      });
    });
    req.on('timeout', () => req.destroy(new Error('the control plane did not answer within 60 s')));
    req.on('error', (e) => reject(new ApiError(0, 'Unavailable', e.message)));
    req.end(payload);
  });
}

/** fn until it succeeds; the control plane may start after us or be restarting. A refusal (4xx) ends it. */
async function withRetry<T>(what: string, controlPlane: string, stopped: () => boolean, fn: () => Promise<T>): Promise<T> {
  let delay = 200;
  for (;;) {
    if (stopped()) throw new Error(`agent stopped before the ${what} succeeded`);
    try {
      return await fn();
    } catch (e) {
      // a refusal (bad name, bad credential, a used token) will not get better by retrying
      if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.code !== 'Unavailable') {
        log.error(`the control plane refused the ${what}`, { controlPlane, code: e.code, error: e.message });
        throw e;
      }
      log.warn(`${what} failed; retrying`, { controlPlane, error: logMessage(e), retryMs: delay });
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

/**
 * Register (again): a TLS agent without a credential (POST /agents/tls; the control plane's
 * mutual-TLS call to it proves it holds the named certificate), a unix-socket one with the
 * administrator's (POST /agents).
 */
async function register(
  controlPlane: string,
  body: { name: string; url: string; token: string; protocol: typeof SPOKEN_PROTOCOL },
  apiToken: string | undefined,
  stopped: () => boolean,
  ca: string | undefined,
): Promise<void> {
  const apiPath = body.url.startsWith('https://') ? '/agents/tls' : '/agents';
  await withRetry('registration', controlPlane, stopped, () => controlPlaneCall(controlPlane, apiPath, body, apiToken, ca));
  log.info('registered with the control plane', { controlPlane, name: body.name });
}
