/**
 * Two control-plane replicas on one PostgreSQL and one real agent, for the replicas end-to-end
 * test and the failover bench:
 *   - two `nimbusd --store postgres://… --no-agent --tcp 127.0.0.1:0` on homes and sockets of
 *     their own, with the same network settings (they share the store's networks);
 *   - one `nimbusd agent` on TCP on this host's loopback (so TLS with the agent CA is in play,
 *     and the registry fixture on loopback is reachable as is), joined once through replica A.
 * Each home makes its own agent CA (HOME/agent-ca) on first start; an agent joined through A
 * holds a certificate of A's CA and accepts calls signed by it only, so B starts on a copy of
 * A's (`startReplica(…, agentCaFrom)`: agent-ca.ts, "control-plane processes sharing a store must
 * share this directory too").
 */
import { untilOutput } from '../../scripts/fixtures/child-output.js';
import { GUEST_HOST_DIRS_ENV } from '../../scripts/fixtures/guest.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI_MAIN, DAEMON_MAIN } from './daemon-process.js';
import { call } from './http.js';
import { removeDaemonNetworks, testNetworkEnv } from '../../src/agent/network/network-test-env.js';
import { run } from '../../src/core/exec.js';

export const ADMIN_PASSWORD = 'replicas-e2e-admin-pw';

export interface ReplicaRow { id: string; pid: number; live: boolean; leader: boolean; apiUrl: string | null }
export interface ReplicaList { self: string; leader: string | null; replicas: ReplicaRow[] }

/** One nimbusd replica process on a home of its own (kept across restarts). */
export interface Replica {
  readonly name: string;
  home: string;
  socket: string;
  /** The current process (a restart makes another). */
  child(): ChildProcess;
  pid(): number;
  output(): string;
  /** The TCP port of its current process (a restart picks a new one). */
  port(): number;
  /** tcp://127.0.0.1:PORT */
  url(): string;
  restart(): Promise<void>;
  kill(signal: NodeJS.Signals): Promise<void>;
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  cli(args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }>;
  replicas(): Promise<ReplicaList>;
  /** Force-remove every container (if it runs), stop it, delete its home. */
  destroy(): Promise<void>;
}

/** The TCP port printed on the last ready line ("ready: unix:… tcp:127.0.0.1:PORT"). */
function tcpPortOf(output: string): number {
  const ports = [...output.matchAll(/ready: unix:\S+ tcp:127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
  const port = ports.at(-1);
  if (!port) throw new Error(`no tcp port on nimbusd's ready line:\n${output}`);
  return port;
}

/**
 * `nimbusd --store URL --no-agent --tcp 127.0.0.1:0` on a new home; with agentCaFrom, that
 * replica's HOME/agent-ca is copied in before the first start (every process on one store needs
 * the same CA). Rejects (home removed) if it does not become ready.
 */
export async function startReplica(name: string, storeUrl: string, networkEnv: Record<string, string>, agentCaFrom?: Replica): Promise<Replica> {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-replica-'));
  const socket = join(home, 'nimbus.sock');
  if (agentCaFrom) cpSync(join(agentCaFrom.home, 'agent-ca'), join(home, 'agent-ca'), { recursive: true });
  let log = '';
  let child!: ChildProcess;
  const launch = async () => {
    child = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, '--home', home, '--socket', socket, '--store', storeUrl, '--no-agent', '--tcp', '127.0.0.1:0'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: home,
      env: { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...GUEST_HOST_DIRS_ENV, ...networkEnv, NIMBUS_ADMIN_PASSWORD: ADMIN_PASSWORD },
    });
    const c = child;
    c.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`nimbusd ${name} did not become ready:\n${log}`)), 30_000);
      c.stdout!.on('data', (b: Buffer) => {
        log += b.toString();
        if (log.includes('ready:')) {
          clearTimeout(timer);
          ok();
        }
      });
      c.once('exit', (code) => {
        clearTimeout(timer);
        fail(new Error(`nimbusd ${name} exited with ${code} before ready:\n${log}`));
      });
    });
  };
  const kill = async (signal: NodeJS.Signals) => {
    const c = child;
    if (c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill(signal);
    await exited;
  };
  const api = <T>(method: string, path: string, body?: unknown) => {
    const opts = body === undefined ? {} : { body };
    return call({ socketPath: socket }, method, path, opts).then((r) => ({ status: r.status, body: r.body as T }));
  };
  const self: Replica = {
    name,
    home,
    socket,
    child: () => child,
    pid: () => child.pid!,
    output: () => log,
    port: () => tcpPortOf(log),
    url: () => `tcp://127.0.0.1:${tcpPortOf(log)}`,
    restart: launch,
    kill,
    api,
    async cli(args, env = {}) {
      const r = await run(process.execPath, [CLI_MAIN, ...args], {
        env: { ...process.env, NIMBUS_SOCKET: socket, NIMBUS_CONFIG: join(home, 'client-config'), ...env }, // never a developer's stored login
        timeoutMs: 120_000,
      });
      return { code: r.code, stdout: r.stdout, stderr: r.stderr };
    },
    async replicas() {
      const r = await api<ReplicaList>('GET', '/replicas');
      if (r.status !== 200) throw new Error(`GET /replicas on ${name}: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body;
    },
    async destroy() {
      try {
        if (child.exitCode === null && child.signalCode === null) {
          const list = await api<unknown>('GET', '/containers?all=true&project=*').catch(() => ({ status: 0, body: [] }));
          for (const c of Array.isArray(list.body) ? (list.body as Array<{ id: string }>) : []) await api('DELETE', `/containers/${c.id}?force=true`).catch(() => undefined);
        }
      } finally {
        await kill('SIGTERM');
        rmSync(home, { recursive: true, force: true });
      }
    },
  };
  try {
    await launch();
  } catch (e) {
    // one that never became ready leaves neither its process nor its home
    await kill('SIGKILL');
    rmSync(home, { recursive: true, force: true });
    throw e;
  }
  return self;
}

export interface AgentProcess {
  name: string;
  home: string;
  output(): string;
  child(): ChildProcess | undefined;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** The container ids with state under its home. */
  containerIds(): string[];
  /** Stop it, kill what outlives it (conmon), unmount and delete its home and networks; the mounts it had left. */
  destroy(): Promise<string[]>;
}

/** `nimbusd agent` on 127.0.0.1 (TCP, mutual TLS), registered over a replica's unix socket with a join token. */
export function agentProcess(name: string, controlPlaneSocket: string, joinToken: string, networkEnv: Record<string, string>): AgentProcess {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-replicas-agent-'));
  const env = { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...GUEST_HOST_DIRS_ENV, ...networkEnv };
  let child: ChildProcess | undefined;
  let out = '';
  const stop = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    await exited;
  };
  return {
    name,
    home,
    output: () => out,
    child: () => child,
    async start() {
      const c = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, 'agent', '--name', name, '--home', home,
        '--listen', '127.0.0.1:0', '--control-plane', `unix:${controlPlaneSocket}`, '--join-token', joinToken], { stdio: ['ignore', 'pipe', 'pipe'], env });
      child = c;
      c.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      c.stderr!.on('data', (b: Buffer) => (out += b.toString()));
      await untilOutput(c, 'registered with', 'nimbusd agent did not register', () => out);
    },
    stop,
    containerIds() {
      const dir = join(home, 'containers', 'containers');
      return existsSync(dir) ? readdirSync(dir) : [];
    },
    async destroy() {
      await stop();
      // conmon outlives its agent: whatever a failed run left goes here
      for (const pid of (await run('pgrep', ['-f', home])).stdout.split('\n').filter(Boolean).map(Number)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m && m.startsWith(home));
      for (const m of [...mounts].reverse()) await run('umount', ['-l', m]);
      await removeDaemonNetworks(home, networkEnv.NIMBUS_NFT_TABLE!);
      rmSync(home, { recursive: true, force: true });
      return mounts;
    },
  };
}

/** One network setting for every process of the cluster: the replicas share the store's networks, the agent lays them out. */
export const clusterNetworkEnv = (): Record<string, string> => testNetworkEnv();

/** A session token for the admin, through a replica's TCP API. */
export async function loginToken(r: Replica): Promise<string> {
  const res = await call({ port: r.port() }, 'POST', '/auth/login', { body: { user: 'admin', password: ADMIN_PASSWORD } });
  if (res.status !== 201) throw new Error(`login on ${r.name}: ${res.status} ${res.text}`);
  return (res.body as { token: string }).token;
}

/** The replica whose process leads now, as the replica asked sees it. */
export async function leaderOf(asked: Replica, all: Replica[]): Promise<Replica | undefined> {
  const l = await asked.replicas();
  const row = l.replicas.find((r) => r.id === l.leader);
  return row ? all.find((r) => r.pid() === row.pid) : undefined;
}
