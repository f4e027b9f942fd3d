/**
 * A real nimbusd for benchmarks: a child process on a fresh temp home and
 * socket, plus a tiny in-process API client over the unix socket (keep-alive
 * connections, as a long-lived client would hold them). stop() force-removes
 * every container, stops the daemon and removes whatever it left.
 */
import { untilOutput } from '../../scripts/fixtures/child-output.js';
import { GUEST_HOST_DIRS_ENV } from '../../scripts/fixtures/guest.js';
import { freeTestSubnet, removeDaemonNetworks, testNetworkEnv } from '../../src/agent/network/network-test-env.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../src/core/exec.js';
import { DEFAULT_CGROUP_PARENT, detectCgroupLayout, removeCgroupParentIfEmpty } from '../../src/agent/cgroups/cgroups.js';
import { cleanup, pidsMatching, rssKiB, unmountUnder } from './cleanup.js';
import { repoRoot } from './result.js';

export const DAEMON_MAIN = join(repoRoot(), 'dist/src/daemon/main.js');
export const CLI_MAIN = join(repoRoot(), 'dist/src/cli/main.js');

export interface ApiResponse<T> {
  status: number;
  body: T;
}

export class ApiError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly body: unknown,
  ) {
    super(`${method} ${path} → ${status}: ${JSON.stringify(body)}`);
  }
}

/** Minimal REST client over a unix socket. */
export class UnixClient {
  private agent = new Agent({ keepAlive: true, maxSockets: Infinity });
  constructor(readonly socket: string) {}

  request<T = unknown>(method: string, path: string, body?: unknown): Promise<ApiResponse<T>> {
    return new Promise((ok, fail) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        {
          agent: this.agent,
          socketPath: this.socket,
          path,
          method,
          headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : { 'content-length': 0 },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', fail);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            let parsed: unknown = undefined;
            if (text) {
              try {
                parsed = res.headers['content-type']?.includes('ndjson')
                  ? text.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as unknown)
                  : JSON.parse(text);
              } catch {
                parsed = text;
              }
            }
            ok({ status: res.statusCode ?? 0, body: parsed as T });
          });
        },
      );
      req.on('error', fail);
      req.end(payload);
    });
  }

  /** Like request() but any status outside 2xx is an ApiError. */
  async json<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.request<T>(method, path, body);
    if (r.status < 200 || r.status > 299) throw new ApiError(method, path, r.status, r.body);
    return r.body;
  }

  close(): void {
    this.agent.destroy();
  }
}

export interface BenchDaemon {
  home: string;
  socket: string;
  pid: number;
  client: UnixClient;
  output(): string;
  rssKiB(): number;
  /** Pull an image and wait for the operation; throws unless it succeeded. */
  pull(reference: string): Promise<void>;
  /** Force-remove every container, stop the daemon, remove leftovers and the home. Returns what was left behind (should be nothing). */
  stop(): Promise<string[]>;
}

interface Operation {
  id: string;
  status: string;
  error?: unknown;
}

export async function waitOperation(client: UnixClient, id: string, timeoutS = 300): Promise<Operation> {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const op = await client.json<Operation>('GET', `/operations/${encodeURIComponent(id)}/wait?timeout=${Math.min(60, timeoutS)}`);
    if (op.status !== 'running' && op.status !== 'pending' && op.status !== 'queued') return op;
    if (Date.now() > deadline) throw new Error(`operation ${id} still ${op.status} after ${timeoutS} s`);
  }
}

export async function pullImage(client: UnixClient, reference: string): Promise<void> {
  const op = await client.json<Operation>('POST', '/images/pull', { reference });
  const done = await waitOperation(client, op.id);
  if (done.status !== 'succeeded') throw new Error(`pull ${reference}: ${done.status} ${JSON.stringify(done.error ?? done)}`);
}

/** One `run --rm IMAGE true` exactly as the CLI does it, without the node startup. */
export async function nimbusRunRm(client: UnixClient, image: string, runtime?: string, network?: string): Promise<number> {
  const c = await client.json<{ id: string }>('POST', '/containers', { image, cmd: ['true'], autoRemove: true, ...(runtime ? { runtime } : {}), ...(network ? { network } : {}) });
  const id = encodeURIComponent(c.id);
  const exited = client.json<{ exitCode: number }>('POST', `/containers/${id}/wait?condition=removed`);
  const output = client.request('GET', `/containers/${id}/logs?follow=true`).catch(() => undefined);
  await client.json('POST', `/containers/${id}/start`);
  const w = await exited;
  await output;
  if (w.exitCode !== 0) throw new Error(`container exited ${w.exitCode}`);
  return w.exitCode;
}

/** A child's stdout and stderr as they come (the last 64 KiB), for readiness markers and failure messages. */
export function captureOutput(child: ChildProcess): () => string {
  let text = '';
  const add = (b: Buffer) => (text = (text + b.toString()).slice(-64 * 1024));
  child.stdout!.on('data', add);
  child.stderr!.on('data', add);
  return () => text;
}

/**
 * SIGTERM, SIGKILL after the grace period (BENCH_STOP_GRACE_MS, longer when profiling), until it
 * exited. 60 s by default, under systemd's 90: a daemon with a pool of 200 warm containers takes
 * 15-28 s here to destroy them, and a SIGKILL at 15 s left 66 of them for the harness to clean.
 */
export async function terminate(child: ChildProcess, graceMs = Number(process.env.BENCH_STOP_GRACE_MS ?? 60_000)): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Start nimbusd on a fresh temp home; it is registered with the cleanup stack. */
export async function startBenchDaemon(extraArgs: string[] = []): Promise<BenchDaemon> {
  if (!existsSync(DAEMON_MAIN)) throw new Error(`${DAEMON_MAIN} is missing: build first (npx tsc -p tsconfig.json)`);
  const home = mkdtempSync(join(tmpdir(), 'nimbus-bench-'));
  const socket = join(home, 'nimbus.sock');
  // BENCH_DAEMON_NODE_ARGS: extra node flags for the daemon, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" to profile a run.
  const nodeArgs = (process.env.BENCH_DAEMON_NODE_ARGS ?? '').split(' ').filter(Boolean);
  // its own bridge, subnets and nftables table: a bench never touches a running nimbusd's nimbus0.
  // The bridge a /20, not the tests' /24: a warm pool holds at most a quarter of its network's
  // addresses (63 on a /24 capped the burst bench's pool), and the product's default is a /16.
  const netEnv: Record<string, string> = { ...testNetworkEnv(), NIMBUS_BRIDGE_SUBNET: freeTestSubnet(20, 200, 50) };
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, '--enable-source-maps', DAEMON_MAIN, '--home', home, '--socket', socket, ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...GUEST_HOST_DIRS_ENV, ...netEnv },
  });
  const output = captureOutput(child);
  const client = new UnixClient(socket);
  let stopped = false;
  let lastLeftovers: string[] = [];

  const stop = async (): Promise<string[]> => {
    if (stopped) return [];
    stopped = true;
    const leftovers: string[] = [];
    try {
      if (child.exitCode === null && child.signalCode === null) {
        const list = await client.json<{ id: string }[]>('GET', '/containers?all=true').catch(() => []);
        await Promise.all(list.map((c) => client.request('DELETE', `/containers/${c.id}?force=true`).catch(() => undefined)));
        await terminate(child);
      }
    } finally {
      client.close();
      // Whatever the daemon left (it should be nothing), do not leave it on the host.
      for (const pid of pidsMatching('conmon', home)) {
        leftovers.push(`conmon pid ${pid}`);
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      for (const root of runtimeRoots(home)) {
        const ids = (await run(root.runtime, ['--root', root.dir, 'list', '-q']).catch(() => ({ stdout: '' }))).stdout.split('\n').filter(Boolean);
        for (const id of ids) {
          leftovers.push(`${root.runtime} container ${id}`);
          await run(root.runtime, ['--root', root.dir, 'delete', '-f', id]).catch(() => undefined);
        }
      }
      for (const m of await unmountUnder(home)) leftovers.push(`mount ${m}`);
      // as the daemon's own shutdown does once no container is left (it left one if stopped mid-create)
      await removeCgroupParentIfEmpty(await detectCgroupLayout(), DEFAULT_CGROUP_PARENT);
      await removeDaemonNetworks(home, netEnv.NIMBUS_NFT_TABLE!);
      rmSync(home, { recursive: true, force: true });
      lastLeftovers = leftovers;
    }
    return leftovers;
  };
  const unregister = cleanup.add(`nimbusd ${home}`, stop);

  try {
    await untilOutput(child, 'ready:', 'nimbusd did not become ready', output);
  } catch (e) {
    await unregister();
    throw e;
  }

  return {
    home,
    socket,
    pid: child.pid!,
    client,
    output,
    rssKiB: () => rssKiB(child.pid!),
    pull: (reference) => pullImage(client, reference),
    stop: async () => {
      await unregister();
      return lastLeftovers;
    },
  };
}

/** OCI runtime state roots the daemon keeps under its home (…/runtime/runc, …/runtime/crun). */
export function runtimeRoots(home: string): { runtime: string; dir: string }[] {
  const out: { runtime: string; dir: string }[] = [];
  const walk = (dir: string, depth: number) => {
    if (depth > 4) return;
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(dir, n);
      if ((n === 'runc' || n === 'crun') && dir.endsWith('/runtime')) out.push({ runtime: n, dir: p });
      else if (!n.includes('.') && !['snapshots', 'content', 'blobs', 'rootfs'].includes(n)) {
        try {
          if (statSync(p).isDirectory()) walk(p, depth + 1);
        } catch {
          /* gone */
        }
      }
    }
  };
  walk(home, 0);
  return out;
}


export interface BenchAgent {
  name: string;
  home: string;
  /** Stop it (SIGTERM) and remove its home; its VMs must be gone first. */
  stop(): Promise<void>;
}

/**
 * The `--join-token` argument a TCP agent needs on its first start (agents on TCP speak mutual
 * TLS with a certificate the control plane signs); none once its home holds a certificate.
 */
export async function joinTokenArgs(controlPlaneSocket: string, agentHome: string): Promise<string[]> {
  if (existsSync(join(agentHome, 'tls'))) return [];
  const client = new UnixClient(controlPlaneSocket);
  try {
    const { token } = await client.json<{ token: string }>('POST', '/agents/join-tokens', {});
    return ['--join-token', token];
  } finally {
    client.close();
  }
}

/** `nimbusd agent` on a fresh temp home, joined to and registered with the daemon at `controlPlaneSocket`. */
export async function startBenchAgent(controlPlaneSocket: string, name: string): Promise<BenchAgent> {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-bench-agent-'));
  const join_ = await joinTokenArgs(controlPlaneSocket, home);
  const child: ChildProcess = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, 'agent', '--name', name, '--home', home, '--listen', '127.0.0.1:0', '--control-plane', `unix:${controlPlaneSocket}`, ...join_], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...GUEST_HOST_DIRS_ENV, ...testNetworkEnv() },
  });
  const output = captureOutput(child);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await terminate(child);
    for (const pid of pidsMatching('qemu-system-x86', home)) process.kill(pid, 'SIGKILL'); // comm is cut at 15 characters
    rmSync(home, { recursive: true, force: true });
  };
  const unregister = cleanup.add(`nimbusd agent ${home}`, stop);
  try {
    await untilOutput(child, 'registered with', 'nimbusd agent did not register', output);
  } catch (e) {
    await unregister();
    throw e;
  }
  return { name, home, stop: unregister };
}
