/**
 * The thin executor under the network drivers' plans: iproute2 in batch mode
 * (one process per namespace per plan, not one per command), sysctl writes,
 * named network namespaces, and nftables transactions.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Internal } from '../../core/errors.js';
import { run } from '../../core/exec.js';
import { intToIp, type IpPlan } from './network-driver.js';

export const NETNS_DIR = '/run/netns';

async function ipBatch(lines: string[][], netns?: string): Promise<void> {
  if (!lines.length) return;
  const args = netns ? ['-n', netns, '-batch', '-'] : ['-batch', '-'];
  const r = await run('ip', args, { input: lines.map((l) => l.join(' ')).join('\n') + '\n' });
  if (r.code !== 0) {
    throw new Internal(`ip ${netns ? `-n ${netns} ` : ''}failed: ${r.stderr.trim() || r.stdout.trim()}`, { lines: lines.map((l) => l.join(' ')) });
  }
}

export async function writeSysctls(sysctls: Record<string, string> | undefined): Promise<void> {
  for (const [key, value] of Object.entries(sysctls ?? {})) await writeFile(path.join('/proc/sys', key), value);
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

/** Undo plans are best-effort: each command alone, a missing link is not an error. */
export async function applyUndo(plan: IpPlan): Promise<void> {
  for (const line of plan.host) {
    const r = await run('ip', line);
    if (r.code !== 0 && !/Cannot find device|does not exist|No such/i.test(r.stderr)) {
      throw new Internal(`ip ${line.join(' ')} failed: ${r.stderr.trim()}`);
    }
  }
}

/** /proc/net/dev reflects this process' network namespace (sysfs reflects the one it was mounted in). */
export function linkExists(dev: string): boolean {
  return readFileSync('/proc/net/dev', 'utf8').split('\n').some((l) => l.trimStart().startsWith(`${dev}:`));
}

export function netnsPath(name: string): string {
  return path.join(NETNS_DIR, name);
}

/** Give a name to the network namespace a process is in (ip netns attach). */
export async function attachNetnsName(name: string, pid: number): Promise<string> {
  const r = await run('ip', ['netns', 'attach', name, String(pid)]);
  if (r.code !== 0 && !/File exists/.test(r.stderr)) throw new Internal(`ip netns attach ${name} ${pid} failed: ${r.stderr.trim()}`);
  return netnsPath(name);
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
