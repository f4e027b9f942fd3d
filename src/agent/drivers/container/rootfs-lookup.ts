/**
 * The container's program, looked up in its rootfs before the runtime runs it, so a missing one is
 * the caller's error (400) on the cold and the warm path alike, not a runtime failure (cold) or an
 * exit 127 after a successful start (warm).
 *
 * Paths are resolved from the host without leaving the rootfs (securejoin's rule): every symlink
 * is followed as the container will see it — an absolute target from the rootfs' root, '..'
 * stopping at that root — and never against the host's tree. The lookup follows runc 1.1's
 * (Go 1.19 exec.LookPath in the container's cwd): a name with a '/' is that path; a bare name is
 * searched in PATH, where the first executable match wins and one in a relative entry is refused.
 *
 * Synchronous calls: a lookup is a dozen or two lstats of an image's directories, which the
 * kernel has cached; through the thread pool a PATH search took ~0.6 ms here, on the warm path.
 */
import { lstatSync, readlinkSync, type Stats } from 'node:fs';
import path from 'node:path';
import { InvalidArgument } from '../../../core/errors.js';

const MAX_LINKS = 40; // the kernel's bound on symlinks in one lookup (ELOOP)

/** lstat results of one lookup's host paths (a PATH search walks /usr, /usr/local... once each); undefined: none there. */
export type LstatCache = Map<string, Stats | undefined>;

function lstatIn(hostPath: string, cache: LstatCache): Stats | undefined {
  if (cache.has(hostPath)) return cache.get(hostPath);
  let st: Stats | undefined;
  try {
    st = lstatSync(hostPath, { throwIfNoEntry: false }); // the common miss of a PATH search, without an Error's cost
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOTDIR') throw e;
  }
  cache.set(hostPath, st);
  return st;
}

export type InRoot =
  | { found: true; hostPath: string; mode: number; isDirectory: boolean }
  | { found: false; reason: string }
  /** The path leads under a mount the rootfs directory does not show (e.g. /proc): not knowable here. */
  | { found: 'unknown' };

/**
 * Resolve the container path p (relative ones from cwd) inside root. opaque(containerPath) says
 * whether a container path is a mount point the host's view of root cannot see into.
 */
export function resolveInRoot(
  root: string,
  p: string,
  cwd = '/',
  opaque: (containerPath: string) => boolean = () => false,
  cache: LstatCache = new Map(),
): InRoot {
  const pending = (p.startsWith('/') ? p : `${cwd}/${p}`).split('/');
  const current: string[] = [];
  let links = 0;
  while (pending.length) {
    const c = pending.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      current.pop();
      continue;
    }
    const containerPath = '/' + [...current, c].join('/');
    if (opaque(containerPath)) return { found: 'unknown' };
    const hostPath = path.join(root, ...current, c);
    const st = lstatIn(hostPath, cache);
    if (!st) return { found: false, reason: 'no such file' };
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) return { found: false, reason: 'too many levels of symbolic links' };
      const target = readlinkSync(hostPath);
      if (target.startsWith('/')) current.length = 0;
      pending.unshift(...target.split('/'));
      continue;
    }
    if (pending.some((x) => x !== '' && x !== '.') && !st.isDirectory()) return { found: false, reason: 'not a directory' };
    current.push(c);
  }
  const hostPath = path.join(root, ...current);
  const st = lstatIn(hostPath, cache) ?? lstatSync(hostPath);
  return { found: true, hostPath, mode: st.mode, isDirectory: st.isDirectory() };
}

/** The PATH a process gets: the last PATH= entry (later entries override earlier ones). */
export const pathOf = (env: readonly string[]): string | undefined => env.filter((kv) => kv.startsWith('PATH=')).pop()?.slice(5);

const shown = (s: string) => JSON.stringify(s.length > 100 ? `${s.slice(0, 100)}…` : s);

/**
 * Refuse (InvalidArgument naming it) a program the runtime would not find or could not execute
 * in the rootfs: what runc's create would fail on, found before it runs.
 */
export function checkExecutable(
  root: string,
  proc: { args: string[]; env: string[]; cwd: string },
  opaque: (containerPath: string) => boolean = () => false,
): void {
  const argv0 = proc.args[0] ?? '';
  const details = { field: 'cmd', executable: argv0 };
  const refuse = (why: string) => new InvalidArgument(`cannot run ${shown(argv0)}: ${why}`, details);
  const usable = (r: InRoot): string | undefined => {
    if (r.found === 'unknown') return undefined;
    if (!r.found) return `${r.reason} in the image`;
    if (r.isDirectory) return 'it is a directory';
    if ((r.mode & 0o111) === 0) return 'it is not executable (no x permission)';
    return undefined;
  };
  // a name longer than a file's can be is not there, as Go's exec.LookPath and runc see it (the
  // API's fuzz sent a ~300-character one: an ENAMETOOLONG here was a 500); copies keep the error
  const lookUp = (p: string, cache?: LstatCache): InRoot => {
    try {
      return resolveInRoot(root, p, proc.cwd, opaque, cache);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENAMETOOLONG') return { found: false, reason: 'no such file (a name in its path is too long)' };
      throw e;
    }
  };
  if (argv0 === '') throw refuse('no program given');
  if (argv0.includes('/')) {
    const why = usable(lookUp(argv0));
    if (why) throw refuse(why);
    return;
  }
  const pathVar = pathOf(proc.env) ?? '';
  const cache: LstatCache = new Map();
  for (const dir of pathVar.split(':')) {
    const d = dir === '' ? '.' : dir;
    const r = lookUp(`${d}/${argv0}`, cache);
    if (r.found === 'unknown') return;
    if (!r.found || r.isDirectory || (r.mode & 0o111) === 0) continue;
    if (!d.startsWith('/')) throw refuse(`it is found only relative to the working directory (PATH entry ${shown(dir)})`);
    return;
  }
  throw refuse(`executable file not found in $PATH (${shown(pathVar)}) in the image`);
}
