/**
 * What is mounted, from /proc/self/mountinfo (proc(5)). Read synchronously: a procfs file costs
 * no I/O wait, and the file comes one page per read(2) (a host with a few dozen containers has
 * ~20 pages), each a hop through libuv's pool when read asynchronously.
 */
import { readFileSync, realpathSync } from 'node:fs';
import path from 'node:path';

export interface MountInfoEntry {
  mountId: number;
  parentId: number;
  root: string;
  mountPoint: string;
  options: string;
  fsType: string;
  source: string;
  superOptions: string;
}

/** Decode the octal escapes (\040 space, \011 tab, \012 newline, \134 backslash) used in mountinfo. */
function unescapeMountInfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parse /proc/self/mountinfo. */
export function readMountInfoSync(): MountInfoEntry[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const out: MountInfoEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    out.push({
      mountId: Number(left[0]),
      parentId: Number(left[1]),
      root: unescapeMountInfo(left[3] ?? ''),
      mountPoint: unescapeMountInfo(left[4] ?? ''),
      options: left[5] ?? '',
      fsType: right[0] ?? '',
      source: unescapeMountInfo(right[1] ?? ''),
      superOptions: right[2] ?? '',
    });
  }
  return out;
}

export async function readMountInfo(): Promise<MountInfoEntry[]> {
  return readMountInfoSync();
}

function canonical(target: string): string | undefined {
  try {
    return realpathSync(target);
  } catch {
    return undefined;
  }
}

/** True when something is mounted exactly at target (symlinks in target are resolved). */
export async function isMounted(target: string): Promise<boolean> {
  const t = canonical(target);
  if (t === undefined) return false;
  return mountPointsSync().includes(t);
}

/**
 * Every mount point in the table, in its order (a mount stacked on another comes after it). Only
 * the fifth field is decoded: a busy host's table is tens of KiB of overlay options (~0.7 ms a
 * read here with 30 containers), read at every container's unmount.
 */
export function mountPointsSync(): string[] {
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  let at = 0;
  while (at < text.length) {
    let end = text.indexOf('\n', at);
    if (end < 0) end = text.length;
    // fields: mount id, parent id, major:minor, root, mount point, ...
    let f = at;
    for (let i = 0; i < 4 && f >= 0 && f < end; i++) f = text.indexOf(' ', f) + 1;
    const stop = f > 0 ? text.indexOf(' ', f) : -1;
    if (f > 0 && stop > f && stop < end) {
      const field = text.slice(f, stop);
      out.push(field.includes('\\') ? unescapeMountInfo(field) : field);
    }
    at = end + 1;
  }
  return out;
}

/** The mount points at or below dir (deepest first; one that is mounted twice, twice). */
export function mountsUnderSync(dir: string): string[] {
  const d = canonical(dir) ?? path.resolve(dir);
  const prefix = d.endsWith('/') ? d : d + '/';
  const found = mountPointsSync().filter((p) => p === d || p.startsWith(prefix));
  // deepest first; a stack at one point, topmost (listed last) first
  return found.map((p, i) => ({ p, i })).sort((a, b) => b.p.length - a.p.length || b.i - a.i).map((x) => x.p);
}

/** Every mount point at or below dir, deepest first, each once. */
export function distinctMountsUnderSync(dir: string): string[] {
  return [...new Set(mountsUnderSync(dir))];
}

export async function mountsUnder(dir: string): Promise<string[]> {
  return distinctMountsUnderSync(dir);
}
