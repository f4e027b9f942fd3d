/**
 * What the network tests share: subnets and device names no other test process
 * on this host is using, and "containers" that are plain processes in their own
 * network namespace (unshare -n), so the plumbing is tested without a runtime.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { run } from '../../core/exec.js';
import { hostRoutes } from './kernel.js';
import { intToIp, ipToInt, parseCidr, cidrsOverlap } from './network-driver.js';

/** Subnets in use on this host (its routes), so a test picks one nobody else has. */
function hostSubnets(): string[] {
  return hostRoutes().map((r) => r.subnet);
}

/**
 * A subnet no route of this host overlaps, in 10.<first>.0.0 – 10.<first + span - 1>.255.255
 * (tests use 10.150-249: never a real network here). Random, so parallel test processes rarely
 * collide; a collision shows as an overlap error, not as shared state.
 */
export function freeTestSubnet(prefix = 24, first = 200, span = 50): string {
  const used = hostSubnets().map((s) => parseCidr(s));
  const size = 2 ** (32 - prefix);
  for (let i = 0; i < 500; i++) {
    const b = randomBytes(4).readUInt32BE(0);
    const base = ipToInt(`10.${first}.0.0`) + ((b % (span * 65536)) - ((b % (span * 65536)) % size));
    const cidr = `${intToIp(base)}/${prefix}`;
    if (!used.some((u) => cidrsOverlap(u, parseCidr(cidr)))) return cidr;
  }
  throw new Error('no free test subnet');
}

/** A TCP port free on 127.0.0.1 right now (for a published port). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

export function gatewayOf(subnet: string): string {
  return intToIp(parseCidr(subnet).network + 1);
}

export function nthAddress(subnet: string, n: number): string {
  return intToIp(parseCidr(subnet).network + n);
}

export function testDevice(tag: string): string {
  return `nt${randomBytes(3).toString('hex')}${tag}`.slice(0, 15);
}

/** A process alone in a new network namespace (what runc create leaves before start). */
export interface NetnsProcess {
  pid: number;
  child: ChildProcess;
  kill(): Promise<void>;
}

export async function spawnInNewNetns(): Promise<NetnsProcess> {
  const child = spawn('unshare', ['--net', '/bin/busybox', 'sleep', '600'], { stdio: 'ignore' });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', reject);
  });
  // unshare execs sleep once the namespace exists: wait until the pid's namespace differs from ours
  const mine = (await run('readlink', ['/proc/self/ns/net'])).stdout.trim();
  for (let i = 0; i < 200; i++) {
    const theirs = (await run('readlink', [`/proc/${child.pid}/ns/net`])).stdout.trim();
    if (theirs && theirs !== mine) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    pid: child.pid!,
    child,
    kill: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
}

/** Run busybox in a named network namespace (nsenter: the network namespace only). */
export function inNetns(netnsPath: string, args: string[], timeoutMs = 10_000) {
  return run('nsenter', [`--net=${netnsPath}`, '/bin/busybox', ...args], { timeoutMs });
}

/**
 * An HTTP GET from inside a namespace: busybox nc (Debian's static busybox wget segfaults here).
 * Resolves to the body, or undefined when the connection fails or times out.
 */
export async function httpGetFromNetns(netnsPath: string, host: string, port: number, timeoutSec = 2): Promise<string | undefined> {
  const r = await run('nsenter', [`--net=${netnsPath}`, '/bin/busybox', 'nc', '-w', String(timeoutSec), host, String(port)], {
    input: `GET / HTTP/1.0\r\nHost: ${host}\r\n\r\n`,
    timeoutMs: (timeoutSec + 3) * 1000,
  });
  const i = r.stdout.indexOf('\r\n\r\n');
  return r.code === 0 && i >= 0 ? r.stdout.slice(i + 4) : undefined;
}

/** Start a busybox httpd serving `text` at / inside a namespace; returns a stopper. */
export async function serveHttp(netnsPath: string, port: number, dir: string): Promise<() => Promise<void>> {
  const child = spawn('nsenter', [`--net=${netnsPath}`, '/bin/busybox', 'httpd', '-f', '-p', String(port), '-h', dir], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 200));
  return () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
}

/** Interfaces, nftables tables and named namespaces on the host: what a test must leave as it found. */
export async function hostFootprint(): Promise<{ links: string[]; tables: string[]; netns: string[] }> {
  const links = (await run('ip', ['-o', 'link', 'show'])).stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter(Boolean).sort();
  const tables = (await run('nft', ['list', 'tables'])).stdout.split('\n').filter(Boolean).sort();
  const netns = (await run('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean).sort();
  return { links, tables, netns };
}

/**
 * Network settings of its own for each test or bench daemon: several run at once on a host, and
 * each would otherwise lay out the same nimbus0, 10.88.0.0/16 and nftables table.
 */
export function testNetworkEnv(): Record<string, string> {
  const tag = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`.slice(-7);
  return {
    NIMBUS_BRIDGE: `nt-${tag}`,
    NIMBUS_BRIDGE_SUBNET: freeTestSubnet(24, 200, 50),
    NIMBUS_SUBNET_POOL: freeTestSubnet(20, 150, 50),
    NIMBUS_NFT_TABLE: `nimbus_${tag}`,
    // names the networks do not know are not forwarded: tests talk to nothing beyond this host
    NIMBUS_DNS_UPSTREAMS: '',
  };
}

/**
 * Remove what a stopped daemon's networks left on the host: nimbusd keeps its networks (as docker
 * keeps docker0), and a daemon killed before it tore its warm containers down leaves their
 * endpoints (a restarted one would reconcile them; a test's home is deleted instead).
 */
export async function removeDaemonNetworks(home: string, table: string): Promise<void> {
  const read = (sub: string) => {
    const dir = path.join(home, 'network', sub);
    try {
      return readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as unknown);
    } catch {
      return [];
    }
  };
  for (const e of read('endpoints') as Array<{ endpoints?: Array<{ hostIf: string }> }>) {
    for (const ep of e.endpoints ?? []) await run('ip', ['link', 'del', ep.hostIf]);
  }
  for (const n of (await run('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0] ?? '')) {
    if (n.startsWith(`${table}-`)) await run('ip', ['netns', 'delete', n]);
  }
  for (const spec of read('networks') as Array<{ device: string }>) await run('ip', ['link', 'del', spec.device]);
  await run('nft', ['delete', 'table', 'inet', table]);
}

/** Why this kernel makes no VXLAN devices (tried in a namespace of its own, named after `tag`), or undefined when it does. */
export async function vxlanMissing(tag: string): Promise<string | undefined> {
  const ns = `ovprobe-${tag}`;
  if ((await run('ip', ['netns', 'add', ns])).code !== 0) return 'cannot make network namespaces';
  try {
    const r = await run('ip', ['-n', ns, 'link', 'add', 'vxp', 'type', 'vxlan', 'id', '1', 'local', '127.0.0.1', 'dstport', '4789', 'nolearning', 'proxy']);
    return r.code === 0 ? undefined : `no VXLAN in this kernel: ${r.stderr.trim()}`;
  } finally {
    await run('ip', ['netns', 'del', ns]);
  }
}
