/**
 * The host as the crash campaign sees it: a snapshot of what exists (mounts, cgroups
 * under the nimbus parent in every hierarchy, network namespaces, links, nftables tables,
 * processes), and the leaks of one daemon home found by comparing against a snapshot taken
 * before its round. Only things that name this home, its nftables table or an id the round
 * saw count: the machine runs other daemons and tests at the same time.
 */
import { runtimeRoots } from '../bench/lib/daemon.js';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';

export interface ProcInfo {
  pid: number;
  ppid: number;
  comm: string;
  cmdline: string;
  cgroups: string[];
}

export interface HostSnapshot {
  mounts: Set<string>;
  cgroups: Set<string>;
  netns: Set<string>;
  links: Set<string>;
  tables: Set<string>;
  pids: Set<number>;
}

/** What identifies one daemon home's footprint on the host. */
export interface HomeIdentity {
  home: string;
  /** NIMBUS_NFT_TABLE: also the prefix of its named network namespaces (`<table>-<id>`). */
  table: string;
  /** NIMBUS_BRIDGE: the default network's device. */
  bridge: string;
  /** Container, VM and network ids the round saw (API answers and files in the home). */
  ids: Set<string>;
}

export interface Leak {
  kind: 'mount' | 'cgroup' | 'netns' | 'link' | 'nft' | 'process' | 'lease' | 'quota' | 'record' | 'file' | 'round';
  what: string;
}

const CGROUP_PARENT = 'nimbus';
/** The snapshotters' directories and their own entries (not per snapshot). */
const SNAPSHOTTERS = new Set(['overlayfs', 'native']);
const SNAPSHOTTER_FILES = new Set(['snapshots', 'metadata.json', 'metadata.journal', 'disks']);
const KEEP: Record<string, Set<string>> = { snapshots: SNAPSHOTTERS, 'snapshots/overlayfs': SNAPSHOTTER_FILES, 'snapshots/native': SNAPSHOTTER_FILES };

/** Mount points of cgroup hierarchies (v1 controllers and the v2 unified one). */
export function cgroupMounts(): string[] {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'cgroup' || f[2] === 'cgroup2')
    .map((f) => f[1]!)
    .filter((m, i, all) => all.indexOf(m) === i);
}

/** Every directory under <hierarchy>/nimbus (two levels: runc may nest). */
function nimbusCgroups(): string[] {
  const out: string[] = [];
  for (const m of cgroupMounts()) {
    const parent = join(m, CGROUP_PARENT);
    const walk = (dir: string, depth: number) => {
      let names: string[] = [];
      try {
        names = readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
      } catch {
        return;
      }
      for (const n of names) {
        out.push(join(dir, n));
        if (depth < 2) walk(join(dir, n), depth + 1);
      }
    };
    walk(parent, 1);
  }
  return out;
}

function mountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m)
    .map((m) => m.replace(/\\040/g, ' '));
}

export function processes(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      out.push({
        pid: Number(e),
        ppid,
        comm: readFileSync(`/proc/${e}/comm`, 'utf8').trim(),
        cmdline: readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ').trim(),
        cgroups: readFileSync(`/proc/${e}/cgroup`, 'utf8').split('\n').map((l) => l.slice(l.indexOf(':', l.indexOf(':') + 1) + 1)).filter(Boolean),
      });
    } catch {
      /* exited while we looked */
    }
  }
  return out;
}

async function netnsNames(): Promise<string[]> {
  return (await run('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0] ?? '').filter(Boolean);
}

async function linkNames(): Promise<string[]> {
  return (await run('ip', ['-o', 'link', 'show'])).stdout.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter(Boolean);
}

async function nftTables(): Promise<string[]> {
  return (await run('nft', ['list', 'tables'])).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
}

export async function snapshotHost(): Promise<HostSnapshot> {
  return {
    mounts: new Set(mountPoints()),
    cgroups: new Set(nimbusCgroups()),
    netns: new Set(await netnsNames()),
    links: new Set(await linkNames()),
    tables: new Set(await nftTables()),
    pids: new Set(processes().map((p) => p.pid)),
  };
}

/** Ids of containers, VMs and networks named by files in the home (state the daemon keeps per id). */
export function idsInHome(home: string): string[] {
  const ids: string[] = [];
  const add = (dir: string, strip = /\.json$/) => {
    try {
      for (const n of readdirSync(dir)) if (/^[0-9a-f]{12,64}(\.json)?$/.test(n)) ids.push(n.replace(strip, ''));
    } catch {
      /* absent */
    }
  };
  add(join(home, 'containers'));
  add(join(home, 'containers', 'containers'));
  add(join(home, 'containers', 'exits'));
  add(join(home, 'containers', 'requests'));
  add(join(home, 'vms'));
  add(join(home, 'vms', 'instances'));
  add(join(home, 'network', 'endpoints'));
  add(join(home, 'network', 'networks'));
  for (const root of runtimeRoots(home)) add(root.dir);
  return ids;
}

/** OCI runtime state roots under a home: the bench's walk, shared. */
export { runtimeRoots };

/** An id the round saw whose 8- or 12-character prefix is `prefix`. */
const knownPrefix = (ids: Set<string>, prefix: string) => [...ids].some((id) => id.startsWith(prefix));

/** Processes of this home: monitors and QEMUs naming it, and whatever runs in a cgroup of one of its ids. */
export function homeProcesses(me: HomeIdentity, before?: HostSnapshot): ProcInfo[] {
  const all = processes();
  const ours = new Set<number>();
  for (const p of all) {
    if (before?.pids.has(p.pid)) continue;
    if (p.pid === process.pid) continue;
    const inOurCgroup = p.cgroups.some((cg) => {
      const m = new RegExp(`/${CGROUP_PARENT}/([^/]+)`).exec(cg);
      return !!m && me.ids.has(m[1]!);
    });
    if (p.cmdline.includes(me.home) || inOurCgroup) ours.add(p.pid);
  }
  // children of those (a container's init before it joined its cgroup, runc's helpers)
  for (let changed = true; changed; ) {
    changed = false;
    for (const p of all) {
      if (!ours.has(p.pid) && ours.has(p.ppid) && !before?.pids.has(p.pid)) {
        ours.add(p.pid);
        changed = true;
      }
    }
  }
  return all.filter((p) => ours.has(p.pid));
}

/** Is this a network device the home made (by the daemon's naming rules)? */
export function ourLink(name: string, me: HomeIdentity): boolean {
  if (name === me.bridge) return true;
  let m = /^n[br]-([0-9a-f]{12})$/.exec(name); // a user network's bridge or routed network
  if (m) return knownPrefix(me.ids, m[1]!);
  m = /^n[vr]([0-9a-f]{12})\d+$/.exec(name); // a container endpoint's host end
  if (m) return knownPrefix(me.ids, m[1]!);
  m = /^vif([0-9a-f]{8})\.\d+$/.exec(name); // a VM's tap
  if (m) return knownPrefix(me.ids, m[1]!);
  return false;
}

/**
 * What this home left on the host, after its daemon stopped. `keepLinks` are the devices of
 * networks that still exist in the store (the project's default bridge stays, as docker0 does).
 */
export async function findLeaks(me: HomeIdentity, before: HostSnapshot, keepLinks: Set<string>): Promise<Leak[]> {
  const leaks: Leak[] = [];
  for (const m of mountPoints()) if (m === me.home || m.startsWith(me.home + '/')) leaks.push({ kind: 'mount', what: m });
  for (const cg of nimbusCgroups()) {
    if (before.cgroups.has(cg)) continue;
    const name = cg.split('/').pop()!;
    if (me.ids.has(name) || [...me.ids].some((id) => name.includes(id))) leaks.push({ kind: 'cgroup', what: cg });
  }
  for (const n of await netnsNames()) if (n.startsWith(`${me.table}-`)) leaks.push({ kind: 'netns', what: n });
  for (const l of await linkNames()) {
    if (before.links.has(l) || keepLinks.has(l)) continue;
    if (ourLink(l, me)) leaks.push({ kind: 'link', what: l });
  }
  const table = (await run('nft', ['list', 'table', 'inet', me.table])).stdout;
  for (const line of table.split('\n')) {
    // per-endpoint state: published ports (elements of the port maps, commented with their
    // container's id: the two rules that look them up are always there) and routed endpoints' interfaces
    const iface = /"(n[vr][0-9a-f]{12}\d+|vif[0-9a-f]{8}\.\d+)"/.exec(line);
    const port = /comment "[0-9a-f]+" : \d+\.\d+\.\d+\.\d+ \. \d+/.test(line);
    if (port || (iface && ourLink(iface[1]!, me))) leaks.push({ kind: 'nft', what: `${me.table}: ${line.trim()}` });
  }
  for (const p of homeProcesses(me, before)) leaks.push({ kind: 'process', what: `${p.pid} ${p.comm}: ${p.cmdline.slice(0, 160)}` });
  return leaks;
}

/** What a leaked VM state directory holds: its files and its record's lifecycle (which step left it). */
function vmStateSummary(dir: string): string {
  let rec = '';
  try {
    const r = JSON.parse(readFileSync(join(dir, 'vm.json'), 'utf8')) as { lifecycle?: string; qemuPid?: number };
    rec = `lifecycle ${r.lifecycle ?? '?'}${r.qemuPid ? `, qemuPid ${r.qemuPid}` : ''}; `;
  } catch {
    /* no record */
  }
  try {
    return `(${rec}files: ${readdirSync(dir).join(' ')})`;
  } catch {
    return `(${rec})`;
  }
}

/** Leftover files in the home's own scratch and per-instance directories. */
export function homeFileLeaks(home: string): Leak[] {
  const leaks: Leak[] = [];
  // vms/instances: the VM driver's per-VM state (record, overlay, sockets, console log)
  for (const sub of ['tmp', 'containers', 'vms', 'vms/instances', 'network/endpoints']) {
    const dir = join(home, sub);
    if (!existsSync(dir)) continue;
    for (const n of readdirSync(dir)) {
      // the container driver's and agent's per-id directories (runtime state: below)
      if (sub === 'containers' && !/^[0-9a-f]{12,64}$/.test(n)) {
        const inner = join(dir, n);
        if (n === 'runtime' || !statSync(inner).isDirectory()) continue;
        for (const r of readdirSync(inner)) leaks.push({ kind: 'file', what: join(inner, r) });
        continue;
      }
      if (sub === 'vms' && !/^[0-9a-f]{12,64}$/.test(n)) continue; // the accelerator choice and such
      leaks.push({ kind: 'file', what: join(dir, n) + (sub === 'vms/instances' ? ` ${vmStateSummary(join(dir, n))}` : '') });
    }
  }
  for (const root of runtimeRoots(home)) for (const n of readdirSync(root.dir)) leaks.push({ kind: 'file', what: `${root.runtime} state ${join(root.dir, n)}` });
  // every image was removed: garbage collection leaves no blob, ingest or snapshot
  // disks: sized writable layers' filesystem images (every one goes with its snapshot)
  for (const sub of ['content/ingest', 'content/blobs/sha256', 'snapshots', 'snapshots/overlayfs', 'snapshots/native', 'snapshots/overlayfs/snapshots', 'snapshots/native/snapshots', 'snapshots/overlayfs/disks', 'snapshots/native/disks']) {
    const dir = join(home, sub);
    if (!existsSync(dir)) continue;
    const keep = KEEP[sub];
    for (const n of readdirSync(dir)) if (!keep?.has(n)) leaks.push({ kind: 'file', what: join(dir, n) });
  }
  // a loop device left attached to an image in the home (a sized layer's or a volume's) holds it even unlinked
  for (const dev of existsSync('/sys/block') ? readdirSync('/sys/block').filter((n) => n.startsWith('loop')) : []) {
    const backing = join('/sys/block', dev, 'loop', 'backing_file');
    const file = existsSync(backing) ? readFileSync(backing, 'utf8').trim() : '';
    if (file.startsWith(`${home}/`)) leaks.push({ kind: 'mount', what: `/dev/${dev} on ${file}` });
  }
  return leaks;
}
