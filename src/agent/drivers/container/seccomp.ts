/**
 * The seccomp filter every container runs under (Docker's default behaviour; docs/security.md).
 *
 * The syscall list is the host's own: the profile Debian ships for podman and buildah
 * (`/usr/share/containers/seccomp.json`, golang-github-containers-common; in Docker's JSON format,
 * kept up to date with the kernel's syscalls by its maintainers), folded for this host's
 * architecture, kernel and the container's capabilities as Docker folds its own (a rule's
 * `includes`/`excludes` of caps, arches, minKernel). On top of it, what Docker refuses a
 * container without CAP_SYS_ADMIN and containers/common leaves to capabilities: new namespaces
 * (`unshare`, `setns`, `clone` with a CLONE_NEW* flag; `clone3`, whose flags a filter cannot
 * read, answers ENOSYS so libc falls back to `clone`), mounts, and the kernel keyring, which
 * is not namespaced. An unprivileged user namespace is the door to most of the kernel's
 * local-root bugs of recent years (nf_tables among them): a tenant's process does not get one.
 * For the native architecture only (see ociSeccomp).
 */
import { readFile } from 'node:fs/promises';
import { release } from 'node:os';
import { InvalidArgument, Unavailable } from '../../../core/errors.js';

/** Where Debian's containers-common keeps the profile; `NIMBUS_SECCOMP_PROFILE` names another, or `unconfined`. */
export const DEFAULT_SECCOMP_PROFILE = '/usr/share/containers/seccomp.json';

export interface OciSeccompArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}
export interface OciSeccompRule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: OciSeccompArg[];
}
export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: OciSeccompRule[];
}

interface ProfileFilter {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}
interface ProfileRule {
  names?: string[];
  name?: string;
  action: string;
  errnoRet?: number;
  args?: OciSeccompArg[] | null;
  includes?: ProfileFilter;
  excludes?: ProfileFilter;
}
export interface SeccompProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap?: Array<{ architecture: string; subArchitectures?: string[] | null }> | null;
  syscalls: ProfileRule[];
}

/** Node's architecture → the profile's (Go's) name and libseccomp's. */
const ARCHES: Record<string, { go: string; scmp: string }> = {
  x64: { go: 'amd64', scmp: 'SCMP_ARCH_X86_64' },
  arm64: { go: 'arm64', scmp: 'SCMP_ARCH_AARCH64' },
};

const EPERM = 1;
const ENOSYS = 38;
/** CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME. */
const CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080;
/** Refused (EPERM) to a container without CAP_SYS_ADMIN, whatever the base profile allows. */
const ADMIN_ONLY = [
  'unshare', 'setns', 'mount', 'umount', 'umount2', 'pivot_root',
  'mount_setattr', 'move_mount', 'open_tree', 'fsopen', 'fsconfig', 'fsmount', 'fspick',
];
/** Refused to every container: the keyring is not namespaced. */
const NEVER = ['keyctl', 'add_key', 'request_key'];

/** "6.1.0-13-amd64" → [6, 1]. */
function kernelVersion(text: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(text);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}
const atLeast = (have: [number, number], want: string) => {
  const w = kernelVersion(want);
  return have[0] > w[0] || (have[0] === w[0] && have[1] >= w[1]);
};

function applies(rule: ProfileRule, caps: ReadonlySet<string>, arch: string, kernel: [number, number]): boolean {
  const inc = rule.includes ?? {};
  const exc = rule.excludes ?? {};
  if (inc.arches?.length && !inc.arches.includes(arch)) return false;
  if (exc.arches?.length && exc.arches.includes(arch)) return false;
  if (inc.caps?.length && !inc.caps.every((c) => caps.has(c))) return false;
  if (exc.caps?.length && exc.caps.some((c) => caps.has(c))) return false;
  if (inc.minKernel && !atLeast(kernel, inc.minKernel)) return false;
  if (exc.minKernel && atLeast(kernel, exc.minKernel)) return false;
  return true;
}

/**
 * The OCI filter for a container with these capabilities, from a profile in Docker's format.
 * `platform` is for tests (this host's architecture and kernel otherwise).
 */
export function ociSeccomp(profile: SeccompProfile, capabilities: readonly string[], platform: { arch: string; kernel: string } = { arch: process.arch, kernel: release() }): OciSeccomp {
  const arch = ARCHES[platform.arch];
  if (!arch) throw new Unavailable(`no seccomp profile for architecture ${platform.arch}`);
  const caps = new Set(capabilities);
  const kernel = kernelVersion(platform.kernel);
  const taken = new Set([...(caps.has('CAP_SYS_ADMIN') ? [] : [...ADMIN_ONLY, 'clone', 'clone3']), ...NEVER]);
  const syscalls: OciSeccompRule[] = [];
  for (const rule of profile.syscalls) {
    if (!applies(rule, caps, arch.go, kernel)) continue;
    const names = (rule.names ?? (rule.name ? [rule.name] : [])).filter((n) => !taken.has(n));
    if (!names.length) continue;
    syscalls.push({ names, action: rule.action, ...(rule.errnoRet !== undefined ? { errnoRet: rule.errnoRet } : {}), ...(rule.args?.length ? { args: rule.args } : {}) });
  }
  const refused = [...taken].filter((n) => n !== 'clone' && n !== 'clone3');
  syscalls.push({ names: refused, action: 'SCMP_ACT_ERRNO', errnoRet: EPERM });
  if (!caps.has('CAP_SYS_ADMIN')) {
    // a thread or a process, never a namespace (arg 0 is clone's flags on x86_64 and arm64)
    syscalls.push({ names: ['clone'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, value: CLONE_NEW_FLAGS, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }] });
    syscalls.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS });
  }
  return {
    defaultAction: profile.defaultAction,
    ...(profile.defaultErrnoRet !== undefined ? { defaultErrnoRet: profile.defaultErrnoRet } : {}),
    // The native architecture only, not its archMap's 32-bit ones (x86, x32 beside x86_64): runc
    // 1.1 compiles the filter per architecture at every start, and a `runc run` took +5 ms with
    // one, +12 with two, +20 with three (22 ms without a filter). A 32-bit program in a container
    // is then killed at its first syscall (libseccomp's bad-architecture action), as a filter for
    // x86_64 alone means; Docker lists them and runs such programs.
    architectures: [arch.scmp],
    syscalls,
  };
}

/** The profile at `file`, checked for the shape it is folded from. */
export async function readSeccompProfile(file: string): Promise<SeccompProfile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new Unavailable(
      `the seccomp profile ${file} cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)}): install golang-github-containers-common, ` +
        'or name a profile with NIMBUS_SECCOMP_PROFILE (containers then run unconfined only with NIMBUS_SECCOMP_PROFILE=unconfined)',
    );
  }
  const p = JSON.parse(text) as Partial<SeccompProfile>;
  if (typeof p.defaultAction !== 'string' || !Array.isArray(p.syscalls) || !p.syscalls.every((r) => r && typeof r.action === 'string')) {
    throw new InvalidArgument(`the seccomp profile ${file} is not in Docker's format (defaultAction, syscalls)`);
  }
  return p as SeccompProfile;
}

/** What a container's bundle gets: the folded filter for its capabilities (memoised per set). */
export type SeccompFilter = (capabilities: readonly string[]) => OciSeccomp;

/**
 * The filter the driver applies, from its `seccompProfile` option: a profile file (default
 * DEFAULT_SECCOMP_PROFILE), or `unconfined` (undefined: no filter, an administrator's choice).
 * Read once; a failure is not kept, so a profile installed later is read by the next create.
 */
export function seccompLoader(profile: string | undefined): () => Promise<SeccompFilter | undefined> {
  if (profile === 'unconfined') return async () => undefined;
  let loading: Promise<SeccompFilter> | undefined;
  return () => {
    loading ??= readSeccompProfile(profile ?? DEFAULT_SECCOMP_PROFILE).then(
      (p) => {
        const folded = new Map<string, OciSeccomp>();
        return (caps) => {
          const key = [...caps].sort().join(',');
          let f = folded.get(key);
          if (!f) folded.set(key, (f = ociSeccomp(p, caps)));
          return f;
        };
      },
      (e: unknown) => {
        loading = undefined;
        throw e;
      },
    );
    return loading;
  };
}
