/**
 * Runs a real nimbusd as a child process on a private home and socket, the way
 * a user would, so tests can also kill -9 it and start it again.
 */
import { GUEST_HOST_DIRS_ENV } from '../../scripts/fixtures/guest.js';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'node:http';
import { run } from '../../src/core/exec.js';
import { qemuUnder } from './qemu.js';
import { removeDaemonNetworks, testNetworkEnv } from '../../src/agent/network/network-test-env.js';

const ROOT = resolve(import.meta.dirname, '../../..'); // dist/test/helpers → repo root
export const DAEMON_MAIN = join(ROOT, 'dist/src/daemon/main.js');
export const CLI_MAIN = join(ROOT, 'dist/src/cli/main.js');

export interface DaemonProcess {
  home: string;
  /** NIMBUS_BRIDGE, NIMBUS_BRIDGE_SUBNET, NIMBUS_SUBNET_POOL, NIMBUS_NFT_TABLE, NIMBUS_DNS_UPSTREAMS of this daemon. */
  network: Record<string, string>;
  socket: string;
  /** The daemon's working directory: empty, so a test can prove nothing is dropped there. */
  cwd: string;
  child: ChildProcess;
  output(): string;
  /** Start it again on the same home (after kill or stop). */
  restart(): Promise<void>;
  kill(signal: NodeJS.Signals): Promise<void>;
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  cli(args: string[], opts?: { input?: string; env?: NodeJS.ProcessEnv }): Promise<{ code: number; stdout: string; stderr: string }>;
  /** The CLI's stdout, after asserting it exited 0 (the message names the command and its stderr). */
  cliOk(args: string[], opts?: { input?: string; env?: NodeJS.ProcessEnv }): Promise<string>;
  /** Force-remove every container, stop the daemon, check for leftover mounts, delete the home. */
  destroy(): Promise<void>;
}

export async function startDaemonProcess(extraArgs: string[] = [], extraEnv: Record<string, string> = {}): Promise<DaemonProcess> {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-e2e-'));
  const netEnv = { ...testNetworkEnv(), ...extraEnv };
  const socket = join(home, 'nimbus.sock');
  const cwd = join(home, 'cwd');
  mkdirSync(cwd);
  let log = '';
  let child!: ChildProcess;

  const launch = async () => {
    child = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, '--home', home, '--socket', socket, ...extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd,
      env: { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...GUEST_HOST_DIRS_ENV, ...netEnv },
    });
    child.stderr!.on('data', (b: Buffer) => (log += b.toString()));
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`nimbusd did not become ready:\n${log}`)), 30_000);
      child.stdout!.on('data', (b: Buffer) => {
        log += b.toString();
        if (log.includes('ready:')) {
          clearTimeout(timer);
          ok();
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        fail(new Error(`nimbusd exited with ${code} before ready:\n${log}`));
      });
    });
  };

  const api = <T>(method: string, path: string, body?: unknown) =>
    new Promise<{ status: number; body: T }>((ok, fail) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        { socketPath: socket, path, method, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            const ndjson = res.headers['content-type'] === 'application/x-ndjson';
            const parsed = !text ? undefined : ndjson ? text.trim().split('\n').map((l) => JSON.parse(l) as unknown) : JSON.parse(text);
            ok({ status: res.statusCode ?? 0, body: parsed as T });
          });
        },
      );
      req.on('error', fail);
      req.end(payload);
    });

  try {
    await launch();
  } catch (e) {
    // A daemon that never became ready must not leave its process or home behind.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await removeDaemonNetworks(home, netEnv.NIMBUS_NFT_TABLE!);
    rmSync(home, { recursive: true, force: true });
    throw e;
  }
  const self: DaemonProcess = {
    home,
    network: netEnv,
    cwd,
    socket,
    get child() {
      return child;
    },
    output: () => log,
    restart: launch,
    async kill(signal) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill(signal);
      await exited;
    },
    api,
    async cli(args, opts = {}) {
      const r = await run(process.execPath, [CLI_MAIN, ...args], {
        env: { ...process.env, NIMBUS_SOCKET: socket, NIMBUS_CONFIG: join(home, 'client-config'), ...opts.env }, // never a developer's stored login
        ...(opts.input !== undefined ? { input: opts.input } : {}),
        timeoutMs: 120_000,
      });
      return { code: r.code, stdout: r.stdout, stderr: r.stderr };
    },
    async cliOk(args, opts = {}) {
      const r = await self.cli(args, opts);
      assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    },
    async destroy() {
      try {
        if (child.exitCode === null && child.signalCode === null) {
          const list = await api<{ id: string }[]>('GET', '/containers?all=true&project=*').catch(() => ({ status: 0, body: [] }));
          for (const c of list.body ?? []) await api('DELETE', `/containers/${c.id}?force=true`).catch(() => undefined);
          // VMs too: a test that failed before removing its own leaves a QEMU, which outlives nimbusd by design
          const vms = await api<{ id: string }[]>('GET', '/vms?project=*').catch(() => ({ status: 0, body: [] }));
          for (const v of Array.isArray(vms.body) ? vms.body : []) await api('DELETE', `/vms/${v.id}?force=true`).catch(() => undefined);
          await self.kill('SIGTERM');
        }
      } finally {
        // Whatever the daemon left (it should be nothing), do not leave it on the host.
        for (const pid of qemuUnder(home)) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m && m.startsWith(home));
        for (const m of mounts.reverse()) await run('umount', ['-l', m]);
        // a daemon that stopped cleanly leaves its networks (as docker leaves docker0) but no endpoint
        const prefix = `${netEnv.NIMBUS_NFT_TABLE!}-`;
        const namespaces = (await run('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter((n) => n.startsWith(prefix));
        const stoppedCleanly = child.exitCode !== null && child.signalCode === null;
        await removeDaemonNetworks(home, netEnv.NIMBUS_NFT_TABLE!);
        rmSync(home, { recursive: true, force: true });
        if (mounts.length) throw new Error(`nimbusd left ${mounts.length} mount(s) under ${home}: ${mounts.join(', ')}`);
        if (stoppedCleanly && namespaces.length) throw new Error(`nimbusd left ${namespaces.length} network namespace(s): ${namespaces.join(', ')}`);
      }
    },
  };
  return self;
}
