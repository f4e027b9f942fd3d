/**
 * A second "host" on this machine for multi-host tests: a network namespace joined to this one by
 * a veth pair on a free /30 (this side .1, the namespace .2). remove() deletes both ends.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freeTestSubnet, testNetworkEnv } from '../../src/agent/network/network-test-env.js';
import { run } from '../../src/core/exec.js';
import { untilOutput } from '../../scripts/fixtures/child-output.js';
import { DAEMON_MAIN, type DaemonProcess } from './daemon-process.js';

export interface SecondHost {
  ns: string;
  hostAddress: string;
  agentAddress: string;
  /** The namespace's inode, to compare with /proc/PID/ns/net. */
  inode(): number;
  remove(): Promise<void>;
}

/** prefix names the namespace (nimbus-PREFIX-TAG) and the host-side link (PREFIXTAG, ≤ 15 characters). */
export async function secondHost(prefix: { ns: string; link: string }): Promise<SecondHost> {
  const subnet = freeTestSubnet(30);
  const base = subnet.split('/')[0]!.split('.').map(Number);
  const addr = (n: number) => [...base.slice(0, 3), base[3]! + n].join('.');
  const tag = process.pid.toString(36).slice(-6);
  const ns = `nimbus-${prefix.ns}-${tag}`;
  const hostIf = `${prefix.link}${tag}`;
  const ok = async (args: string[]) => {
    const r = await run('ip', args);
    assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`);
  };
  await ok(['netns', 'add', ns]);
  await ok(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await ok(['addr', 'add', `${addr(1)}/30`, 'dev', hostIf]);
  await ok(['link', 'set', hostIf, 'up']);
  await ok(['-n', ns, 'addr', 'add', `${addr(2)}/30`, 'dev', 'eth0']);
  await ok(['-n', ns, 'link', 'set', 'eth0', 'up']);
  await ok(['-n', ns, 'link', 'set', 'lo', 'up']);
  return {
    ns,
    hostAddress: addr(1),
    agentAddress: addr(2),
    inode: () => statSync(`/run/netns/${ns}`).ino,
    async remove() {
      await run('ip', ['netns', 'del', ns]); // its end of the veth goes with it, and so does ours
      await run('ip', ['link', 'del', hostIf]);
    },
  };
}

/** Mount points under a directory (an agent's home: container root filesystems). */
export const mountsUnder = (dir: string): string[] =>
  readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m && m.startsWith(dir));

export interface NamespaceAgentOptions {
  /** The agent's name (default host-b). */
  name?: string;
  /** Its home is a new temporary directory named PREFIX-XXXXXX. */
  homePrefix: string;
  /** Environment beside the test's network settings (testNetworkEnv) and the log level. */
  env?: Record<string, string>;
  /** More `nimbusd agent` arguments (e.g. --migration-address). */
  args?: string[];
}

export interface NamespaceAgent {
  home: string;
  /** The nftables table its networks use (testNetworkEnv's). */
  table: string;
  /** What it printed since its last start. */
  output(): string;
  /** The agent process's pid while it runs (to freeze it with SIGSTOP, say). */
  pid(): number | undefined;
  /** Starts it (again, on the same home) and waits until it has registered. */
  start(): Promise<void>;
  /** SIGTERM, and waits for its exit. */
  stop(): Promise<void>;
  kill(signal: NodeJS.Signals): Promise<void>;
  /**
   * stop(), then what outlives it goes: processes naming its home (conmon), mounts under it, the
   * home itself. Returns the mounts that were left.
   */
  destroy(): Promise<string[]>;
}

/**
 * `nimbusd agent` in the second host's namespace, joined with a token and registered over the
 * control plane's socket. It listens on TCP, so the token is spent at its first start; a later
 * start on the same home uses the certificate kept there.
 */
export function agentInNamespace(controlPlaneSocket: string, host: SecondHost, joinToken: string, o: NamespaceAgentOptions): NamespaceAgent {
  const home = mkdtempSync(join(tmpdir(), `${o.homePrefix}-`));
  const net = testNetworkEnv();
  const env = { ...process.env, NIMBUS_LOG_LEVEL: process.env.NIMBUS_LOG_LEVEL ?? 'warn', ...o.env, ...net };
  let child: ChildProcess | undefined;
  let out = '';
  const kill = async (signal: NodeJS.Signals) => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill(signal);
    await exited;
  };
  return {
    home,
    table: net.NIMBUS_NFT_TABLE!,
    output: () => out,
    pid: () => (child && child.exitCode === null && child.signalCode === null ? child.pid : undefined),
    async start() {
      out = '';
      // nsenter --net: only the network namespace (ip netns exec would also mount a fresh /sys,
      // hiding the cgroup mounts); it execs node in place, so the child's pid is the agent's
      const c = spawn('nsenter', [`--net=/run/netns/${host.ns}`, '--', process.execPath, '--enable-source-maps', DAEMON_MAIN, 'agent', '--name', o.name ?? 'host-b', '--home', home,
        '--listen', `${host.agentAddress}:0`, ...(o.args ?? []), '--control-plane', `unix:${controlPlaneSocket}`, '--join-token', joinToken], { stdio: ['ignore', 'pipe', 'pipe'], env });
      child = c;
      c.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      c.stderr!.on('data', (b: Buffer) => (out += b.toString()));
      await untilOutput(c, 'registered with', 'nimbusd agent did not register', () => out);
    },
    stop: () => kill('SIGTERM'),
    kill,
    async destroy() {
      await kill('SIGTERM');
      // conmon outlives its agent: whatever a failed test left goes here
      for (const pid of (await run('pgrep', ['-f', home])).stdout.split('\n').filter(Boolean).map(Number)) process.kill(pid, 'SIGKILL');
      const left = mountsUnder(home);
      for (const m of [...left].reverse()) await run('umount', ['-l', m]);
      rmSync(home, { recursive: true, force: true });
      return left;
    },
  };
}

/**
 * What a two-host setup made, gone: every VM and container through the daemon's API, the named
 * networks, the agent (and what outlives it, and its table in its namespace), the daemon, the
 * namespace. Each part is skipped when it was never made.
 */
/** agentInNamespace joined with a fresh token from the daemon, and started (registered); destroyed again if it cannot start. */
export async function startAgentInNamespace(d: DaemonProcess, host: SecondHost, o: NamespaceAgentOptions): Promise<NamespaceAgent> {
  const b = agentInNamespace(d.socket, host, (await d.cliOk(['agent', 'join-token', '--ttl', '5m'])).trim(), o);
  try {
    await b.start();
  } catch (e) {
    await b.destroy().catch(() => undefined);
    throw e;
  }
  return b;
}

/** Force-remove every VM and container the daemon knows, wherever placed (teardown: failures are ignored). */
export async function removeAllInstances(d: DaemonProcess | undefined): Promise<void> {
  if (!d) return;
  for (const kind of ['/vms', '/containers']) {
    const list = await d.api<{ id: string }[]>('GET', `${kind}?all=true`).catch(() => ({ status: 0, body: [] }));
    for (const x of list.body ?? []) await d.api('DELETE', `${kind}/${x.id}?force=true`).catch(() => undefined);
  }
}

export async function tearDownTwoHosts(d: DaemonProcess | undefined, b: NamespaceAgent | undefined, host2: SecondHost | undefined, networks: string[] = []): Promise<void> {
  if (d) {
    await removeAllInstances(d);
    for (const n of networks) await d.cli(['network', 'rm', n]).catch(() => undefined);
  }
  if (b) {
    await b.destroy();
    if (host2) await run('ip', ['netns', 'exec', host2.ns, 'nft', 'delete', 'table', 'inet', b.table]);
  }
  await d?.destroy();
  await host2?.remove();
}
