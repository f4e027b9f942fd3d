/**
 * A nimbusd for the crash campaign: a child process on its own temp home, socket,
 * bridge, subnets and nftables table (testNetworkEnv), that can be SIGKILLed and
 * started again on the same home. Homes are named nimbus-chaos-<campaign pid>-… and
 * hold chaos.json (the network names) so a later sweep can remove what a crashed
 * campaign left.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { removeDaemonNetworks, testNetworkEnv } from '../src/agent/network/network-test-env.js';
import { joinTokenArgs, UnixClient } from '../bench/lib/daemon.js';
import { cgroupMounts, homeProcesses, idsInHome, runtimeRoots, type HomeIdentity } from './chaos-host.js';

const ROOT = join(import.meta.dirname, '../..'); // dist/scripts → repo root
export const DAEMON_MAIN = join(ROOT, 'dist/src/daemon/main.js');
export const HOME_PREFIX = 'nimbus-chaos-';

export interface ChaosDaemon {
  readonly home: string;
  readonly socket: string;
  readonly net: Record<string, string>;
  readonly client: UnixClient;
  readonly pid: number | undefined;
  output(): string;
  start(): Promise<void>;
  /** SIGKILL, and wait until it is gone. */
  kill(): Promise<void>;
  /** SIGTERM and wait (SIGKILL after graceMs); true when it exited on its own. */
  stop(graceMs?: number): Promise<boolean>;
  alive(): boolean;
}

/** Run as `nimbusd agent --name NAME` registered with the control plane on `controlPlane` (its unix socket). */
export interface AgentMode {
  name: string;
  controlPlane: string;
}

/** A nimbusd, or with `agent` a `nimbusd agent` (ready once registered; its `client` is unused). */
export function createChaosDaemon(extraEnv: Record<string, string> = {}, agent?: AgentMode): ChaosDaemon {
  const home = mkdtempSync(join(tmpdir(), `${HOME_PREFIX}${process.pid}-`));
  const net = testNetworkEnv();
  writeFileSync(join(home, 'chaos.json'), JSON.stringify({ campaign: process.pid, ...net }));
  const socket = join(home, 'nimbus.sock');
  let child: ChildProcess | undefined;
  let log = '';
  let client = new UnixClient(socket);
  const alive = () => !!child && child.exitCode === null && child.signalCode === null;

  const waitExit = (c: ChildProcess) => (c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => c.once('exit', () => r())));

  return {
    home,
    socket,
    net,
    get client() {
      return client;
    },
    get pid() {
      return child?.pid;
    },
    output: () => log,
    alive,
    async start() {
      client.close();
      client = new UnixClient(socket);
      log = '';
      const args = agent
        ? ['agent', '--name', agent.name, '--home', home, '--listen', '127.0.0.1:0', '--control-plane', `unix:${agent.controlPlane}`, ...(await joinTokenArgs(agent.controlPlane, home))]
        : ['--home', home, '--socket', socket];
      const ready = agent ? 'registered with' : 'ready:';
      const c = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
        cwd: home,
        env: { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...net, ...extraEnv },
      });
      child = c;
      const add = (b: Buffer) => (log = (log + b.toString()).slice(-64 * 1024));
      c.stderr!.on('data', add);
      c.stdout!.on('data', add);
      await new Promise<void>((ok, fail) => {
        const done = (e?: Error) => {
          clearTimeout(timer);
          c.stdout!.off('data', check);
          c.off('exit', onExit);
          if (e) fail(e);
          else ok();
        };
        const check = () => {
          if (log.includes(ready)) done();
        };
        const what = agent ? 'nimbusd agent' : 'nimbusd';
        const onExit = (code: number | null, sig: string | null) => done(new Error(`${what} exited (${code ?? sig}) before ready:\n${log}`));
        const timer = setTimeout(() => done(new Error(`${what} not ready in 60 s:\n${log}`)), 60_000);
        c.stdout!.on('data', check);
        c.once('exit', onExit);
      }).catch(async (e: unknown) => {
        if (alive()) c.kill('SIGKILL');
        await waitExit(c);
        throw e;
      });
    },
    async kill() {
      if (!child || !alive()) return;
      const exited = waitExit(child);
      child.kill('SIGKILL');
      await exited;
    },
    async stop(graceMs = 60_000) {
      if (!child || !alive()) return false;
      const c = child;
      const exited = waitExit(c);
      c.kill('SIGTERM');
      let forced = false;
      const timer = setTimeout(() => {
        forced = true;
        c.kill('SIGKILL');
      }, graceMs);
      await exited;
      clearTimeout(timer);
      client.close();
      return !forced && c.exitCode === 0;
    },
  };
}

/**
 * Remove everything a chaos home may have left on the host, whatever state it is in:
 * its processes, runtime containers, mounts, cgroups of its ids, networks, and the home.
 * Returns what it had to remove beyond the home itself.
 */
export async function sweepHome(home: string, extraIds: Iterable<string> = []): Promise<string[]> {
  const removed: string[] = [];
  let net: Record<string, string> = {};
  try {
    net = JSON.parse(readFileSync(join(home, 'chaos.json'), 'utf8')) as Record<string, string>;
  } catch {
    /* a home whose campaign died before writing it */
  }
  const me: HomeIdentity = { home, table: net.NIMBUS_NFT_TABLE ?? '-', bridge: net.NIMBUS_BRIDGE ?? '-', ids: new Set([...idsInHome(home), ...extraIds]) };
  // a daemon still running on it first (its pid file), then monitors, QEMUs and container processes
  for (const p of homeProcesses(me)) {
    try {
      process.kill(p.pid, 'SIGKILL');
      removed.push(`process ${p.pid} ${p.comm}`);
    } catch {
      /* gone */
    }
  }
  await new Promise((r) => setTimeout(r, 200));
  for (const root of runtimeRoots(home)) {
    for (const id of readdirSync(root.dir)) {
      await run(root.runtime, ['--root', root.dir, 'delete', '-f', id]);
      removed.push(`${root.runtime} container ${id}`);
    }
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m && m.startsWith(home + '/'));
  for (const m of mounts.sort((a, b) => b.length - a.length)) {
    await run('umount', ['-l', m]);
    removed.push(`mount ${m}`);
  }
  for (const mnt of cgroupMounts()) {
    for (const id of me.ids) {
      const dir = join(mnt, 'nimbus', id);
      if (!existsSync(dir)) continue;
      // children first (runc may nest), then the container's own
      const r = await run('find', [dir, '-depth', '-type', 'd', '-exec', 'rmdir', '{}', ';']);
      removed.push(`cgroup ${dir}${r.code ? ' (rmdir failed)' : ''}`);
    }
  }
  if (net.NIMBUS_NFT_TABLE) await removeDaemonNetworks(home, net.NIMBUS_NFT_TABLE);
  rmSync(home, { recursive: true, force: true });
  return removed;
}

/** Homes of campaigns that are no longer running (a crashed or SIGKILLed chaos run), or of this one when `mine`. */
export function chaosHomes(mine: boolean): string[] {
  const out: string[] = [];
  for (const n of readdirSync(tmpdir())) {
    const m = new RegExp(`^${HOME_PREFIX}(\\d+)-`).exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    let running = false;
    try {
      process.kill(pid, 0);
      running = true;
    } catch {
      /* dead */
    }
    if (mine ? pid === process.pid : !running) out.push(join(tmpdir(), n));
  }
  return out;
}
