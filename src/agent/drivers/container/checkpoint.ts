/**
 * A container checkpointed with runc and CRIU for a live move (docs/overlay.md, "Moving
 * containers"): the command lines, where the images go, and CRIU's failures as typed errors.
 *
 * The network namespace stays out of the images: it is the host's (named, with the container's
 * veth), re-made at the destination with the same address and MAC, and CRIU joins it there. runc
 * declares a namespace external to CRIU only when config.json gives it by path; a container's
 * first run gets its namespace from runc (named after), so for those the declaration goes into
 * the container's own CRIU configuration file, which runc hands CRIU (the org.criu.config
 * annotation, set at create).
 */
import { stat, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Conflict, Internal, type NimbusError } from '../../../core/errors.js';

/** The annotation runc reads the container's CRIU configuration file from. */
export const CRIU_CONFIG_ANNOTATION = 'org.criu.config';

/** CRIU's key for an external network namespace (runc's criuNsToKey(CLONE_NEWNET)). */
export const EXTERNAL_NETNS_KEY = 'extRootNetNS';

/** The line that makes CRIU leave the namespace at netnsPath out of the images (and expect it back at restore). */
export async function externalNetnsLine(netnsPath: string): Promise<string> {
  const st = await stat(netnsPath);
  return `external net[${st.ino}]:${EXTERNAL_NETNS_KEY}\n`;
}

/**
 * The container's CRIU configuration for its checkpoint (runc passes no such option itself):
 * connections a listener has not accepted yet are left behind (skip-in-flight; the client's
 * handshake is retried and meets the restored listener), and the extra lines (the external
 * network namespace).
 */
export function criuConfig(extra: string): string {
  return `skip-in-flight\n${extra}`;
}

/**
 * What the restore needs to know beside CRIU's images, written among them (CRIU reads only its
 * own files there): whether the container came from the warm pool, whose stub's bind mounts are
 * in its mount table and must be given again. Read as hostile input at the destination: only
 * the known field, a boolean.
 */
export interface RestoreHints {
  warmMounts?: boolean;
}
const HINTS_FILE = 'nimbus-restore.json';

export async function writeRestoreHints(images: string, hints: RestoreHints): Promise<void> {
  await writeFile(path.join(images, HINTS_FILE), JSON.stringify(hints));
}

export async function readRestoreHints(images: string): Promise<RestoreHints> {
  try {
    const parsed = JSON.parse(await readFile(path.join(images, HINTS_FILE), 'utf8')) as unknown;
    return parsed && typeof parsed === 'object' && (parsed as RestoreHints).warmMounts === true ? { warmMounts: true } : {};
  } catch {
    return {};
  }
}

/** `runc checkpoint`'s arguments after the global ones (the container is dumped and then killed). */
export function checkpointArgs(id: string, images: string, work: string): string[] {
  return ['checkpoint', '--image-path', images, '--work-path', work, id];
}

/** Bytes of the files under dir (a checkpoint's images, for the report). */
export async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += await treeBytes(p);
    else if (e.isFile()) total += (await stat(p)).size;
  }
  return total;
}

/** The last errors of a CRIU log (dump.log / restore.log: the fatal one is last), without their source locations. */
export async function criuLogErrors(file: string, max = 3): Promise<string[]> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.split('\n').filter((l) => /Error \(/.test(l)).slice(-max).map((l) => l.replace(/^.*?Error \([^)]*\):\s*/, '').trim());
}

/**
 * What CRIU refused, as the caller can act on it: what the container holds that cannot be
 * checkpointed is a Conflict naming it (move it cold instead); anything else is Internal with
 * CRIU's words.
 */
export function checkpointFailure(id: string, runtimeMessage: string, logErrors: string[]): NimbusError {
  const all = [runtimeMessage, ...logErrors].join('; ');
  const short = id.slice(0, 12);
  if (/Connected TCP socket|tcp-established/i.test(all)) {
    return new Conflict(`container ${short} has established TCP connections: a live move carries listening sockets, not connections to peers (CRIU's --tcp-established is not used); close them or move it cold`, { container: id, criu: logErrors });
  }
  if (/unix.*(external|peer)|ext-unix-sk|Can't dump unix/i.test(all)) {
    return new Conflict(`container ${short} has a unix socket connected outside it: it cannot be checkpointed; move it cold`, { container: id, criu: logErrors });
  }
  return new Internal(`checkpoint of container ${short} failed: ${logErrors.length ? logErrors.join('; ') : runtimeMessage}`, { container: id, criu: logErrors });
}
