/**
 * The thin executor under the network drivers' plans: iproute2 in batch mode
 * (one process per namespace per plan, not one per command), sysctl writes,
 * named network namespaces, and nftables transactions.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { Internal } from '../../core/errors.js';
import { CommandRunner } from '../command-runner.js';
import { intToIp, type IpPlan } from './network-driver.js';

export const NETNS_DIR = '/run/netns';

/** ip and nft run from a long-lived shell (command-runner.ts), not spawned from nimbusd each time. */
let runner: CommandRunner | undefined;
const shell = () => (runner ??= new CommandRunner());
const run = async (program: 'ip' | 'nft', args: string[], opts: { input?: string } = {}) => {
  const r = await shell().run(program, args, opts.input ?? '');
  return { code: r.code, stdout: r.output, stderr: r.output };
};

/** Stop the runner's shells (daemon shutdown; a later call starts them again). */
export function closeKernel(): void {
  runner?.close();
  runner = undefined;
}

async function ipBatch(lines: string[][], netns?: string, force = false): Promise<void> {
  if (!lines.length) return;
  const args = [...(netns ? ['-n', netns] : []), ...(force ? ['-force'] : []), '-batch', '-'];
  const r = await run('ip', args, { input: lines.map((l) => l.join(' ')).join('\n') + '\n' });
  if (r.code !== 0) {
    throw new Internal(`ip ${netns ? `-n ${netns} ` : ''}failed: ${r.stderr.trim() || r.stdout.trim()}`, { lines: lines.map((l) => l.join(' ')) });
  }
}

export async function writeSysctls(sysctls: Record<string, string> | undefined): Promise<void> {
  // procfs: written in this turn, no thread-pool round trip
  for (const [key, value] of Object.entries(sysctls ?? {})) writeFileSync(path.join('/proc/sys', key), value);
}

export async function applyPlan(plan: IpPlan): Promise<void> {
  // sysctls naming a device (conf/<dev>/...) can only be written once it exists
  const global = Object.fromEntries(Object.entries(plan.sysctls ?? {}).filter(([k]) => !k.includes('/conf/')));
  const perDevice = Object.fromEntries(Object.entries(plan.sysctls ?? {}).filter(([k]) => k.includes('/conf/')));
  await writeSysctls(global);
  await ipBatch(plan.host);
  await writeSysctls(perDevice);
  if (plan.inNetns) await ipBatch(plan.inNetns.lines, plan.inNetns.netns);
}

/** Several plans as one: one `ip` process for the host's commands, one for the namespace's. */
export function mergePlans(plans: IpPlan[], hostFirst: string[][] = []): IpPlan {
  const ns = plans.find((p) => p.inNetns)?.inNetns?.netns;
  if (plans.some((p) => p.inNetns && p.inNetns.netns !== ns)) throw new Internal('plans for different namespaces cannot be merged');
  const out: IpPlan = { host: [...hostFirst, ...plans.flatMap((p) => p.host)], sysctls: Object.assign({}, ...plans.map((p) => p.sysctls ?? {})) as Record<string, string> };
  if (ns) out.inNetns = { netns: ns, lines: plans.flatMap((p) => p.inNetns?.lines ?? []) };
  return out;
}

/**
 * Undo: every command even if one fails (a link already gone is not an error), in one `ip`
 * process; then what had to go is checked to be gone.
 */
export async function applyUndo(plan: IpPlan, expectGone: { links?: string[]; netns?: string[] } = {}): Promise<void> {
  await ipBatch(plan.host, undefined, true).catch(() => undefined);
  const links = (expectGone.links ?? []).filter((l) => linkExists(l));
  const names = (expectGone.netns ?? []).filter((n) => existsSync(netnsPath(n)));
  if (links.length || names.length) throw new Internal(`could not remove ${[...links, ...names.map((n) => `netns ${n}`)].join(', ')}`);
}

/** /proc/net/dev reflects this process' network namespace (sysfs reflects the one it was mounted in). */
export function linkExists(dev: string): boolean {
  return readFileSync('/proc/net/dev', 'utf8').split('\n').some((l) => l.trimStart().startsWith(`${dev}:`));
}

export function netnsPath(name: string): string {
  return path.join(NETNS_DIR, name);
}

export async function deleteNetns(name: string): Promise<void> {
  if (!existsSync(netnsPath(name))) return;
  const r = await run('ip', ['netns', 'delete', name]);
  if (r.code !== 0 && existsSync(netnsPath(name))) throw new Internal(`ip netns delete ${name} failed: ${r.stderr.trim()}`);
}

export async function listNetns(prefix: string): Promise<string[]> {
  try {
    return (await readdir(NETNS_DIR)).filter((n) => n.startsWith(prefix));
  } catch {
    return [];
  }
}

/** Run an nft script as one transaction. */
export async function nft(script: string): Promise<void> {
  const r = await run('nft', ['-f', '-'], { input: script });
  if (r.code !== 0) throw new Internal(`nft failed: ${r.stderr.trim()}`, { script });
}

export async function nftList(table: string): Promise<string | undefined> {
  const r = await run('nft', ['list', 'table', 'inet', table]);
  return r.code === 0 ? r.stdout : undefined;
}

/** Names of the VXLAN devices in this network namespace. */
export async function vxlanLinks(): Promise<string[]> {
  const r = await run('ip', ['-o', 'link', 'show', 'type', 'vxlan']);
  if (r.code !== 0) return [];
  return r.stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter(Boolean);
}

/** The host's IPv4 routes (this network namespace's /proc/net/route): destination and device. */
export function hostRoutes(): Array<{ subnet: string; dev: string }> {
  const out: Array<{ subnet: string; dev: string }> = [];
  for (const line of readFileSync('/proc/net/route', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const le = (h: string) => Number.parseInt(h.match(/../g)!.reverse().join(''), 16) >>> 0;
    const mask = le(f[7]!);
    if (!mask) continue; // the default route overlaps everything: not a conflict
    const dest = le(f[1]!);
    const prefix = 32 - Math.log2((~mask >>> 0) + 1);
    out.push({ subnet: `${intToIp(dest)}/${prefix}`, dev: f[0]! });
  }
  return out;
}
