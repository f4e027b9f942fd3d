/**
 * `nimbusd agent`: one host's agent in a process of its own, serving the agent protocol
 * (src/agent/remote/) and registering with a control plane — as nova-compute is to Nova.
 * It holds no database: its state is its home directory (content, VMs, networks), and the
 * control plane holds the records. It registers again on every start.
 *
 * States: starting → reconciling → serving (→ registered) → stopping → stopped.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { compileOptions, type NimbusOptions } from '../core/config.js';
import { InvalidArgument, toNimbusError } from '../core/errors.js';
import { logger } from '../core/log.js';
import { LocalAgent } from '../agent/local-agent.js';
import { startAgentServer } from '../agent/remote/agent-server.js';
import { ApiClient, ApiError } from '../cli/client.js';
import { takePidLock } from './daemon.js';

const log = logger('nimbusd-agent');

export interface AgentProcessOptions {
  home: string;
  /** The name it registers under (unique per control plane). */
  name: string;
  /** Where it serves the agent protocol: HOST:PORT (port 0: any free one) or unix:/PATH. */
  listen: string;
  /** The control plane's API: unix:/PATH or http://HOST:PORT. Absent: serve only (register by hand). */
  controlPlane?: string;
  /** The URL the control plane reaches it by, when not the listener's own (NAT, a proxy). */
  advertise?: string;
  /** Credential for the control plane's API (an administrator's token or API key). */
  apiToken?: string;
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

function listenTarget(listen: string): { socketPath: string } | { host: string; port: number } {
  if (listen.startsWith('unix:')) return { socketPath: listen.slice('unix:'.length) };
  const i = listen.lastIndexOf(':');
  const port = Number(listen.slice(i + 1));
  if (i < 1 || !Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgument(`--listen must be HOST:PORT or unix:/PATH, got "${listen}"`);
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

export async function startAgentProcess(o: AgentProcessOptions): Promise<RunningAgentProcess> {
  // no warm pool: warm containers lease addresses from the control plane in-process only
  const options = compileOptions({ warmPerImage: 0, ...o.overrides, home: o.home, agentName: o.name });
  for (const d of [options.home, options.contentDir, options.snapshotsDir, options.containersDir, options.vmsDir, options.tmpDir]) {
    mkdirSync(d, { recursive: true, mode: 0o711 });
  }
  const releaseLock = takePidLock(options.home, 'nimbusd agent');
  const agent = await LocalAgent.create(options);
  // its own state first: orphan QEMU killed, live VMs watched again (the control plane compares records later)
  const rec = await agent.reconcileVms();
  if (rec.killed.length || rec.removed.length) log.info('reconciled VMs', rec);
  const token = agentToken(options.home);
  const server = await startAgentServer(agent, { token, ...listenTarget(o.listen) });
  const url = o.advertise ?? server.url;
  log.info('agent serving', { name: o.name, url, home: options.home });

  let stopping = false;
  const registered = o.controlPlane ? register(o.controlPlane, { name: o.name, url, token }, o.apiToken, () => stopping) : new Promise<void>(() => undefined);
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

/** POST /agents until the control plane accepts (it may start after us, or be restarting). */
async function register(controlPlane: string, body: { name: string; url: string; token: string }, apiToken: string | undefined, stopped: () => boolean): Promise<void> {
  const env: NodeJS.ProcessEnv = apiToken ? { NIMBUS_TOKEN: apiToken } : {};
  const client = controlPlane.startsWith('unix:')
    ? new ApiClient({ socket: controlPlane.slice('unix:'.length), env })
    : new ApiClient({ host: controlPlane, env });
  let delay = 200;
  for (;;) {
    if (stopped()) throw new Error('agent stopped before registering');
    try {
      await client.json('POST', '/agents', body);
      log.info('registered with the control plane', { controlPlane, name: body.name });
      return;
    } catch (e) {
      // a refusal (bad name, bad credential) will not get better by retrying
      if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.code !== 'Unavailable') {
        log.error('the control plane refused the registration', { controlPlane, code: e.code, error: e.message });
        throw e;
      }
      log.warn('registration failed; retrying', { controlPlane, error: toNimbusError(e).message, retryMs: delay });
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}
