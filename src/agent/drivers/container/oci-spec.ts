/**
 * Build an OCI runtime-spec config.json (1.0.2) from an InstanceSpec and facts
 * about the host. buildOciSpec() is pure: everything it needs (the rootfs'
 * /etc/passwd and /etc/group, this process' hard rlimits, the cgroups path) is
 * passed in. The impure helpers below it read those facts.
 *
 * Defaults follow Docker/runc: Docker's default capability set, runc's masked and
 * read-only paths, /dev as tmpfs (the runtime creates the standard devices).
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { readUnderRoot } from '../../../core/read-under-root.js';
import path from 'node:path';
import { InvalidArgument } from '../../../core/errors.js';
import type { InstanceSpec } from '../instance-driver.js';
import type { OciSeccomp } from './seccomp.js';


// ------------------------------------------------------------------ OCI types (the subset we write)

export interface OciUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}
export interface OciRlimit {
  type: string;
  soft: number;
  hard: number;
}
export interface OciCapabilities {
  bounding: string[];
  effective: string[];
  permitted: string[];
  inheritable?: string[];
  ambient?: string[];
}
export interface OciProcess {
  terminal: boolean;
  user: OciUser;
  args: string[];
  env: string[];
  cwd: string;
  capabilities: OciCapabilities;
  rlimits: OciRlimit[];
  noNewPrivileges: boolean;
  oomScoreAdj?: number;
}
export interface OciMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}
export interface OciNamespace {
  type: 'pid' | 'network' | 'mount' | 'ipc' | 'uts' | 'user' | 'cgroup';
  path?: string;
}
export interface OciResources {
  devices: { allow: boolean; access?: string; type?: string; major?: number; minor?: number }[];
  memory?: { limit?: number; swap?: number; disableOOMKiller?: boolean };
  cpu?: { quota?: number; period?: number; shares?: number };
  pids?: { limit: number };
}
export interface OciSpec {
  ociVersion: string;
  process: OciProcess;
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  annotations?: Record<string, string>;
  linux: {
    namespaces: OciNamespace[];
    resources: OciResources;
    cgroupsPath: string;
    maskedPaths: string[];
    readonlyPaths: string[];
    seccomp?: OciSeccomp;
  };
}

// ------------------------------------------------------------------ defaults

export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Docker's default capability set (moby oci/caps/defaults.go). */
/**
 * A container's processes when its request names no limit: a tenant's fork bomb stops at its own
 * cgroup instead of taking the host's pid space from every other tenant. podman's default is 2048
 * (containers.conf `pids_limit`); Docker has none, as it serves one user.
 */
export const DEFAULT_PIDS_LIMIT = 4096;

/**
 * A container without a memory limit is best effort, as Kubernetes' QoS class of that name: the
 * first the kernel's OOM killer picks when the host runs out (oom_score_adj 1000, kubelet's value),
 * before sized containers, VMs and the daemon. Sized ones get 0 explicitly (not what the daemon
 * that launched them has), as dockerd writes its default into every container's spec.
 */
export const BEST_EFFORT_OOM_SCORE_ADJ = 1000;

export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/** runc `spec` defaults. */
export const DEFAULT_MASKED_PATHS = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/sys/firmware',
  '/proc/scsi',
];
export const DEFAULT_READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** What we ask for unless told otherwise; clamped to what this process holds. */
export const DEFAULT_RLIMITS: OciRlimit[] = [
  { type: 'RLIMIT_NOFILE', soft: 1024, hard: 1024 },
  { type: 'RLIMIT_NPROC', soft: 4096, hard: 4096 },
];

export const CPU_PERIOD_US = 100_000;

export function defaultMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
  ];
}

// ------------------------------------------------------------------ passwd / group

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}
export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const f = line.split(':');
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!f[0] || f[2] === '' || f[3] === '' || !Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    out.push({ name: f[0], uid, gid, home: f[5] || '/' });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const f = line.split(':');
    const gid = Number(f[2]);
    if (!f[0] || f[2] === '' || !Number.isInteger(gid)) continue;
    out.push({ name: f[0], gid, members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}

export interface UserDb {
  passwd: PasswdEntry[];
  group: GroupEntry[];
}

const isNumeric = (s: string) => /^\d+$/.test(s);
/** (uid_t)-1 means "unchanged" to setresuid: the largest id a process can have is 2^32 - 2. */
const MAX_ID = 2 ** 32 - 2;
function id(s: string, what: string, user: string): number {
  const n = Number(s);
  if (!(n <= MAX_ID)) throw new InvalidArgument(`${what} ${s} out of range (0 to ${MAX_ID})`, { user });
  return n;
}

/**
 * Resolve "uid[:gid]" or "name[:group]" (any mix) against the rootfs' user
 * database, the way Docker does: a user without a group takes the primary group
 * from /etc/passwd (0 when a numeric uid has no entry); supplementary groups are
 * the /etc/group entries listing the user's name.
 */
export function resolveUser(user: string, db: UserDb): { user: OciUser; home: string } {
  const spec = user.trim();
  if (spec === '') return { user: { uid: 0, gid: 0 }, home: '/root' };
  const colon = spec.indexOf(':');
  const u = colon < 0 ? spec : spec.slice(0, colon);
  const g = colon < 0 ? undefined : spec.slice(colon + 1);
  let entry: PasswdEntry | undefined;
  let uid: number;
  if (isNumeric(u)) {
    uid = id(u, 'uid', user);
    entry = db.passwd.find((p) => p.uid === uid);
  } else {
    entry = db.passwd.find((p) => p.name === u);
    if (!entry) throw new InvalidArgument(`user ${JSON.stringify(u)} not found in the image's /etc/passwd`, { user });
    uid = entry.uid;
  }
  let gid: number;
  if (g === undefined || g === '') {
    gid = entry ? entry.gid : 0;
  } else if (isNumeric(g)) {
    gid = id(g, 'gid', user);
  } else {
    const ge = db.group.find((x) => x.name === g);
    if (!ge) throw new InvalidArgument(`group ${JSON.stringify(g)} not found in the image's /etc/group`, { user });
    gid = ge.gid;
  }
  const out: OciUser = { uid, gid };
  if (entry && (g === undefined || g === '')) {
    const name = entry.name;
    const extra = [...new Set(db.group.filter((x) => x.members.includes(name) && x.gid !== gid).map((x) => x.gid))];
    if (extra.length) out.additionalGids = extra;
  }
  return { user: out, home: entry?.home ?? (uid === 0 ? '/root' : '/') };
}

// ------------------------------------------------------------------ rlimits

/** Hard limits held by a process: RLIMIT_* → number (Infinity = unlimited). */
export type HardLimits = Record<string, number>;

const LIMIT_NAMES: Record<string, string> = {
  'Max cpu time': 'RLIMIT_CPU',
  'Max file size': 'RLIMIT_FSIZE',
  'Max data size': 'RLIMIT_DATA',
  'Max stack size': 'RLIMIT_STACK',
  'Max core file size': 'RLIMIT_CORE',
  'Max resident set': 'RLIMIT_RSS',
  'Max processes': 'RLIMIT_NPROC',
  'Max open files': 'RLIMIT_NOFILE',
  'Max locked memory': 'RLIMIT_MEMLOCK',
  'Max address space': 'RLIMIT_AS',
  'Max file locks': 'RLIMIT_LOCKS',
  'Max pending signals': 'RLIMIT_SIGPENDING',
  'Max msgqueue size': 'RLIMIT_MSGQUEUE',
  'Max nice priority': 'RLIMIT_NICE',
  'Max realtime priority': 'RLIMIT_RTPRIO',
  'Max realtime timeout': 'RLIMIT_RTTIME',
};

/** Parse /proc/<pid>/limits into the hard limits. */
export function parseProcLimits(text: string): HardLimits {
  const out: HardLimits = {};
  for (const line of text.split('\n')) {
    for (const [label, name] of Object.entries(LIMIT_NAMES)) {
      if (!line.startsWith(label + ' ')) continue;
      const fields = line.slice(label.length).trim().split(/\s+/);
      const hard = fields[1];
      if (hard === undefined) continue;
      out[name] = hard === 'unlimited' ? Infinity : Number(hard);
    }
  }
  return out;
}

/**
 * Clamp requested rlimits to the hard limits this process holds: without
 * CAP_SYS_RESOURCE nothing below us can raise them, and runc would fail with
 * "error setting rlimits ... operation not permitted".
 */
export function clampRlimits(requested: OciRlimit[], hard: HardLimits): { rlimits: OciRlimit[]; warnings: string[] } {
  const warnings: string[] = [];
  const rlimits = requested.map((r) => {
    const max = hard[r.type];
    if (max === undefined || (r.hard <= max && r.soft <= max)) return { ...r };
    const next = { type: r.type, hard: Math.min(r.hard, max), soft: Math.min(r.soft, max) };
    warnings.push(
      `${r.type} ${r.soft}:${r.hard} clamped to ${next.soft}:${next.hard} (the hard limit this process holds; raising it needs CAP_SYS_RESOURCE)`,
    );
    return next;
  });
  return { rlimits, warnings };
}

// ------------------------------------------------------------------ the builder

export interface HostFacts {
  /** Hard rlimits of this process (parseProcLimits of /proc/self/limits). */
  hardLimits: HardLimits;
  /** e.g. "/nimbus/<id>" (cgroupfs driver). */
  cgroupsPath: string;
  /** The rootfs' user database (readUserDb); empty when the image has none. */
  userDb: UserDb;
  /** The container's seccomp filter for its capabilities (seccomp.ts); absent: unconfined. */
  seccomp?: (capabilities: readonly string[]) => OciSeccomp;
}

export interface BuildOptions {
  /** Override the default rlimits (still clamped). */
  rlimits?: OciRlimit[];
  readonlyRootfs?: boolean;
  /** Path of the root inside the bundle. */
  rootPath?: string;
  /** Extra mounts appended after the defaults (volumes). */
  mounts?: OciMount[];
}

export interface BuildResult {
  config: OciSpec;
  warnings: string[];
}

function envKey(kv: string): string {
  const i = kv.indexOf('=');
  return i < 0 ? kv : kv.slice(0, i);
}

/** Merge env lists: later entries override earlier ones with the same key; order kept. */
export function mergeEnv(...lists: string[][]): string[] {
  const map = new Map<string, string>();
  for (const l of lists) for (const kv of l) map.set(envKey(kv), kv);
  return [...map.values()];
}

export function cpuQuota(cpus: number): { quota: number; period: number } {
  if (!(cpus > 0)) throw new InvalidArgument(`cpus must be > 0, got ${cpus}`);
  return { quota: Math.max(1000, Math.round(cpus * CPU_PERIOD_US)), period: CPU_PERIOD_US };
}

export function buildOciSpec(spec: InstanceSpec, host: HostFacts, opts: BuildOptions = {}): BuildResult {
  if (!spec.id) throw new InvalidArgument('instance id is required');
  if (spec.process.args.length === 0) throw new InvalidArgument('process.args must not be empty', { id: spec.id });
  const warnings: string[] = [];
  const hostname = spec.hostname ?? spec.id.slice(0, 12);
  const { user, home } = resolveUser(spec.process.user, host.userDb);

  const env = mergeEnv([`PATH=${DEFAULT_PATH}`, `HOSTNAME=${hostname}`, `HOME=${home}`], spec.process.env);

  const clamp = clampRlimits(opts.rlimits ?? DEFAULT_RLIMITS, host.hardLimits);
  warnings.push(...clamp.warnings);

  const resources: OciResources = { devices: [{ allow: false, access: 'rwm' }] };
  const r = spec.resources;
  if (r.memoryBytes !== undefined) {
    if (!(r.memoryBytes > 0) || !Number.isInteger(r.memoryBytes)) {
      throw new InvalidArgument(`memoryBytes must be a positive integer, got ${r.memoryBytes}`);
    }
    // swap == limit: memory+swap capped at the limit, so going over OOM-kills instead of swapping
    resources.memory = { limit: r.memoryBytes, swap: r.memoryBytes, disableOOMKiller: false };
  }
  if (r.cpus !== undefined) resources.cpu = cpuQuota(r.cpus);
  if (r.pidsLimit !== undefined && (!(r.pidsLimit > 0) || !Number.isInteger(r.pidsLimit))) {
    throw new InvalidArgument(`pidsLimit must be a positive integer, got ${r.pidsLimit}`);
  }
  resources.pids = { limit: r.pidsLimit ?? DEFAULT_PIDS_LIMIT };

  const namespaces: OciNamespace[] = [
    { type: 'pid' },
    { type: 'ipc' },
    { type: 'uts' },
    { type: 'mount' },
  ];
  if (!spec.hostNetwork) namespaces.push(spec.netnsPath ? { type: 'network', path: spec.netnsPath } : { type: 'network' });

  const caps = [...DEFAULT_CAPABILITIES];
  const config: OciSpec = {
    ociVersion: '1.0.2',
    process: {
      terminal: spec.process.terminal ?? false,
      user,
      args: [...spec.process.args],
      env,
      cwd: spec.process.cwd || '/',
      capabilities: { bounding: caps, effective: [...caps], permitted: [...caps] },
      rlimits: clamp.rlimits,
      noNewPrivileges: true,
      oomScoreAdj: r.memoryBytes === undefined ? BEST_EFFORT_OOM_SCORE_ADJ : 0,
    },
    root: { path: opts.rootPath ?? 'rootfs', readonly: opts.readonlyRootfs ?? false },
    hostname,
    mounts: [...defaultMounts(), ...(opts.mounts ?? [])],
    linux: {
      namespaces,
      resources,
      cgroupsPath: host.cgroupsPath,
      maskedPaths: [...DEFAULT_MASKED_PATHS],
      readonlyPaths: [...DEFAULT_READONLY_PATHS],
      ...(host.seccomp ? { seccomp: host.seccomp(caps) } : {}),
    },
  };
  if (spec.labels && Object.keys(spec.labels).length) config.annotations = { ...spec.labels };
  if (!path.posix.isAbsolute(config.process.cwd)) {
    throw new InvalidArgument(`cwd must be absolute, got ${JSON.stringify(config.process.cwd)}`);
  }
  return { config, warnings };
}

// ------------------------------------------------------------------ impure helpers

/** The largest /etc/passwd or /etc/group read (LDAP dumps run to a few MiB); beyond it, as if there were none. */
const USER_DB_MAX_BYTES = 16 * 1024 * 1024;

async function readInRootfs(rootfs: string, rel: string): Promise<string | undefined> {
  // a symlink on the way (etc itself included) would be resolved against the host, not the
  // rootfs: the image and the workload own it, so none is followed
  return (await readUnderRoot(rootfs, rel, USER_DB_MAX_BYTES))?.toString('utf8');
}

/** Read and parse the rootfs' /etc/passwd and /etc/group (absent files → empty). */
export async function readUserDb(rootfs: string): Promise<UserDb> {
  const [p, g] = await Promise.all([readInRootfs(rootfs, 'etc/passwd'), readInRootfs(rootfs, 'etc/group')]);
  return { passwd: p ? parsePasswd(p) : [], group: g ? parseGroup(g) : [] };
}

let lastLimits: { file: string; text: string; limits: HardLimits; readAt: number } | undefined;
/** How long a read of this process's limits stands: they change only by prlimit(1) from outside. */
const LIMITS_FRESH_MS = 1000;

/**
 * Hard rlimits of this process. Every create asks: the file is read at most once a second (procfs,
 * read synchronously: no disk behind it; ~0.15 ms each, 3 % of a repeated burst's event loop when
 * read per container) and parsed again only when it changed.
 */
export async function readHardLimits(file = '/proc/self/limits'): Promise<HardLimits> {
  const now = performance.now();
  if (lastLimits?.file === file && now - lastLimits.readAt < LIMITS_FRESH_MS) return { ...lastLimits.limits };
  const text = file.startsWith('/proc/') ? readFileSync(file, 'utf8') : await readFile(file, 'utf8');
  lastLimits = { file, text, limits: lastLimits?.text === text ? lastLimits.limits : parseProcLimits(text), readAt: now };
  return { ...lastLimits.limits };
}
