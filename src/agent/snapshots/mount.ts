/**
 * The thin executor for snapshotter MountSpecs: mounts and unmounts with the
 * util-linux `mount`/`umount` binaries; what is mounted comes from the mount table
 * (core/mount-table.ts). Snapshotters never mount; this file is the only place that does.
 */
import { CommandRunner } from '../command-runner.js';
import { Internal, InvalidArgument, wholeForAdmins, type NimbusError } from '../../core/errors.js';
import { redactAbsolutePaths } from '../../core/redaction.js';
import { logger } from '../../core/log.js';
import type { MountSpec } from './snapshotter.js';

const log = logger('agent.snapshots.mount');

/** mount(2) copies its data argument into one page: options longer than this fail. */
export const MOUNT_OPTIONS_MAX = 4095;

/** Options that only make sense on the bind step or the remount step, never passed to `-t`. */
const BIND_FLAGS = new Set(['bind', 'rbind']);

import { isMounted, mountsUnderSync } from '../../core/mount-table.js';

export { readMountInfo, isMounted, mountsUnder, type MountInfoEntry } from '../../core/mount-table.js';

function commonDirPrefix(paths: string[]): string {
  if (paths.length === 0) return '';
  let parts = (paths[0] ?? '').split('/');
  for (const p of paths.slice(1)) {
    const q = p.split('/');
    let i = 0;
    while (i < parts.length && i < q.length - 1 && parts[i] === q[i]) i++;
    parts = parts.slice(0, i);
  }
  // never take the whole of a path: each entry must keep a relative remainder
  const prefix = parts.join('/');
  return prefix;
}

/**
 * containerd's `compactLowerdirOption` trick, taken further: an overlay is mounted from its
 * directories' common parent with every lowerdir, the upperdir and the workdir relative to it.
 * Options too long for a page then fit, and the kernel keeps the options as given: the mount
 * table's line for each container's root is ~250 bytes instead of ~510, and runc reads that table
 * several times per container (a `runc run` cost 52-54 ms of CPU here beside 200 overlays with
 * absolute options, 48 with relative ones, 39-46 with none). A container reading its own mount
 * table sees no host path. Options whose directories are not all absolute under one parent stay
 * as they are.
 */
export function compactOverlayOptions(options: string[]): { options: string[]; cwd?: string } {
  const PATH_KEYS = ['lowerdir=', 'upperdir=', 'workdir='];
  const dirs: string[] = [];
  for (const o of options) {
    const key = PATH_KEYS.find((k) => o.startsWith(k));
    if (key) dirs.push(...o.slice(key.length).split(':'));
  }
  if (dirs.length < 2 || !dirs.every((d) => d.startsWith('/') && !d.includes(','))) return { options };
  const prefix = commonDirPrefix(dirs);
  if (prefix.length <= 1) return { options };
  const relative = (d: string) => d.slice(prefix.length + 1);
  if (dirs.some((d) => !d.startsWith(prefix + '/') || relative(d) === '')) return { options };
  const next = options.map((o) => {
    const key = PATH_KEYS.find((k) => o.startsWith(k));
    return key ? key + o.slice(key.length).split(':').map(relative).join(':') : o;
  });
  return { options: next, cwd: prefix };
}

/** The agent's mounts go through long-lived shells (command-runner.ts): no fork of nimbusd per mount. */
let shells: CommandRunner | undefined;
const hostShells = () => (shells ??= new CommandRunner(2));

/** mount/umount through a host shell where the arguments allow it, else spawned directly; stdout and stderr together. */
/** A mount-related host program from a long-lived host shell (no fork of the daemon), or spawned when its arguments need quoting. */
export function hostCommand(program: 'mount' | 'umount' | 'losetup' | 'mkfs.ext4', args: string[], cwd?: string): Promise<{ code: number; output: string }> {
  return hostShells().runOrSpawn(program, args, cwd);
}

/**
 * A failed mount, umount or other host tool on the agent's files (ext4-image.ts too). Every path in
 * its arguments and words is one of the host's (snapshot directories, a container's rootfs, an
 * image): anyone reads it with them replaced, administrators and the log read it whole (adminMessage).
 */
export function mountFailure(whole: string): NimbusError {
  const message = redactAbsolutePaths(whole);
  return new Internal(message, undefined, wholeForAdmins(message, whole));
}

async function mountCmd(args: string[], cwd?: string): Promise<void> {
  const r = await hostCommand('mount', args, cwd);
  if (r.code !== 0) throw mountFailure(`mount ${args.join(' ')}${cwd ? ` (in ${cwd})` : ''} failed (exit ${r.code}): ${r.output.trim()}`);
}

/** Mount one spec at target. */
export async function mountOne(spec: MountSpec, target: string): Promise<void> {
  const isBind = spec.type === 'bind' || spec.options.some((o) => BIND_FLAGS.has(o));
  if (isBind) {
    const recursive = spec.options.includes('rbind');
    await mountCmd([recursive ? '--rbind' : '--bind', '--', spec.source, target]);
    // Per-mount flags (ro, nosuid, nodev, noexec...) on a bind only take effect through a
    // remount of the new mount point; `mount -o bind,ro` does it implicitly on new util-linux,
    // doing it explicitly keeps it version-independent.
    const flags = spec.options.filter((o) => !BIND_FLAGS.has(o) && o !== 'rw');
    if (flags.length > 0) {
      try {
        await mountCmd(['-o', ['remount', 'bind', ...flags].join(','), '--', target]);
      } catch (e) {
        await unmount(target).catch(() => undefined);
        throw e;
      }
    }
    return;
  }
  let options = spec.options;
  let cwd: string | undefined;
  if (spec.type === 'overlay') {
    const c = compactOverlayOptions(options);
    options = c.options;
    cwd = c.cwd;
  }
  const joined = options.join(',');
  if (joined.length > MOUNT_OPTIONS_MAX) {
    throw new InvalidArgument(
      `mount options for ${spec.type} are ${joined.length} bytes, more than the ${MOUNT_OPTIONS_MAX}-byte page limit of mount(2)`,
      { type: spec.type, length: joined.length },
    );
  }
  const args = ['-t', spec.type];
  if (joined) args.push('-o', joined);
  args.push('--', spec.source, target);
  await mountCmd(args, cwd);
}

/**
 * Mount every spec at target, in order (later ones stack on earlier ones, as in
 * containerd's mount.All). On failure the ones already mounted are undone.
 */
export async function mountAll(mounts: MountSpec[], target: string): Promise<void> {
  let done = 0;
  try {
    for (const m of mounts) {
      await mountOne(m, target);
      done++;
    }
  } catch (e) {
    for (let i = 0; i < done; i++) await unmount(target).catch(() => undefined);
    throw e;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Unmount the topmost mount at target. Idempotent: nothing mounted is success.
 * Retries on EBUSY, and only as a last resort detaches lazily (umount -l).
 */
export async function unmount(target: string, opts: { retries?: number } = {}): Promise<void> {
  const retries = opts.retries ?? 5;
  let last = '';
  for (let attempt = 0; attempt <= retries; attempt++) {
    if (!(await isMounted(target))) return;
    const r = await hostCommand('umount', ['--', target]);
    if (r.code === 0) return;
    last = r.output.trim();
    if (!(await isMounted(target))) return; // raced with another unmount
    await sleep(20 * 2 ** attempt);
  }
  if (!(await isMounted(target))) return;
  log.warn('unmount busy; detaching lazily', { target, error: last });
  const r = await hostCommand('umount', ['-l', '--', target]);
  if (r.code !== 0 && (await isMounted(target))) {
    throw mountFailure(`umount ${target} failed: ${r.output.trim() || last}`);
  }
}

/**
 * Unmount everything stacked at target (and below it, deepest first). Idempotent. The table is
 * read once for what it lists, and again only after an unmount that did not go as asked.
 */
export async function unmountAll(target: string): Promise<void> {
  for (let round = 0; round < 128; round++) {
    const listed = mountsUnderSync(target);
    if (listed.length === 0) return;
    let clean = true;
    for (const m of listed) {
      const r = await hostCommand('umount', ['--', m]);
      if (r.code !== 0) {
        clean = false;
        await unmount(m); // its retries, and at last a lazy detach
      }
    }
    if (clean) return;
  }
  throw mountFailure(`could not unmount everything at ${target}`);
}
