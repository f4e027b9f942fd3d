/**
 * A container's mounts (volumes, host paths, tmpfs) checked and turned into OCI mounts, on the
 * host that runs it: a bind's source is resolved here (symlinks included) because the path is
 * this host's, and a path the control plane checked by name could point anywhere on arrival.
 */
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgument, NotFound, PermissionDenied } from '../../core/errors.js';
import type { ContainerMount } from '../agent.js';
import type { OciMount } from '../drivers/container/oci-spec.js';

/** Host paths no one binds into a container, whatever their role: the host's root, its kernel interfaces, its runtime sockets. */
export const FORBIDDEN_BIND_SOURCES = ['/', '/proc', '/sys', '/dev', '/var/run', '/run'] as const;
/** Under these nothing may be bound either (the kernel's and the runtime's own trees). */
const FORBIDDEN_TREES = ['/proc', '/sys', '/dev', '/run', '/var/run'];
/** Container paths a mount may not cover: the runtime's own mounts there would be hidden or fight it. */
const RESERVED_TARGETS = ['/', '/proc', '/sys', '/dev'];
const MAX_TMPFS_BYTES = 64 * 1024 ** 3;

/** An absolute, normalised container path that is not the root nor a kernel mount. */
export function checkMountTarget(target: string): string {
  if (typeof target !== 'string' || !target.startsWith('/') || target.length > 4096 || /[\0\n]/.test(target) || target.split('/').includes('..')) {
    throw new InvalidArgument(`a mount's target must be an absolute path inside the container without "..", got ${JSON.stringify(String(target).slice(0, 80))}`, { field: 'target' });
  }
  const t = path.posix.normalize(target).replace(/\/+$/, '') || '/';
  if (RESERVED_TARGETS.some((r) => t === r || (r !== '/' && t.startsWith(`${r}/`)))) {
    throw new InvalidArgument(`a mount cannot go at ${t}: the runtime owns it`, { field: 'target', target: t });
  }
  return t;
}

/** Is this (resolved) host path one nobody may bind? */
export function isForbiddenBindSource(resolved: string): boolean {
  return (FORBIDDEN_BIND_SOURCES as readonly string[]).includes(resolved) || FORBIDDEN_TREES.some((d) => resolved.startsWith(`${d}/`));
}

/** The host path a bind takes, resolved; PermissionDenied for the forbidden ones, NotFound when it does not exist. */
export async function resolveBindSource(source: string): Promise<string> {
  if (typeof source !== 'string' || !path.isAbsolute(source) || /[\0\n]/.test(source)) {
    throw new InvalidArgument(`a bind mount's source must be an absolute host path, got ${JSON.stringify(String(source).slice(0, 80))}`, { field: 'source' });
  }
  // checked as given too: "/run" refused even on a host where it is a symlink to somewhere allowed
  const given = path.posix.normalize(source).replace(/\/+$/, '') || '/';
  if (isForbiddenBindSource(given)) throw new PermissionDenied(`host path ${given} cannot be bound into a container`, { source: given });
  let resolved: string;
  try {
    resolved = await realpath(given);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`host path ${given} does not exist`, { source: given });
    throw e;
  }
  if (isForbiddenBindSource(resolved)) throw new PermissionDenied(`host path ${given} (${resolved}) cannot be bound into a container`, { source: given, resolved });
  await stat(resolved);
  return resolved;
}

/** Whole number of bytes, 1 B to 64 GiB. */
export function checkTmpfsSize(sizeBytes: number | undefined): void {
  if (sizeBytes === undefined) return;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 1 || sizeBytes > MAX_TMPFS_BYTES) {
    throw new InvalidArgument(`a tmpfs size must be 1 byte to 64 GiB, got ${String(sizeBytes)}`, { field: 'sizeBytes' });
  }
}

/**
 * OCI mounts for a container's request, in order. `volumePath` gives a volume's directory on
 * this host (mounting it if needed; NotFound when the host lacks it).
 */
export async function ociMounts(mounts: readonly ContainerMount[], volumePath: (id: string) => Promise<string>): Promise<OciMount[]> {
  const out: OciMount[] = [];
  const seen = new Set<string>();
  for (const m of mounts) {
    const target = checkMountTarget(m.target);
    if (seen.has(target)) throw new InvalidArgument(`two mounts at ${target}`, { target });
    seen.add(target);
    if (m.type === 'volume') {
      const source = await volumePath(m.volumeId);
      out.push({ destination: target, type: 'bind', source, options: ['rbind', 'rprivate', 'nosuid', 'nodev', m.readonly ? 'ro' : 'rw'] });
    } else if (m.type === 'bind') {
      const source = await resolveBindSource(m.source);
      out.push({ destination: target, type: 'bind', source, options: ['rbind', 'rprivate', m.readonly ? 'ro' : 'rw'] });
    } else if (m.type === 'tmpfs') {
      checkTmpfsSize(m.sizeBytes);
      const mode = m.mode ?? 0o1777;
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new InvalidArgument(`a tmpfs mode must be 0 to 07777, got ${String(m.mode)}`);
      // Docker's tmpfs defaults: noexec, nosuid, nodev
      out.push({ destination: target, type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'noexec', `mode=${mode.toString(8)}`, ...(m.sizeBytes ? [`size=${m.sizeBytes}`] : [])] });
    } else {
      throw new InvalidArgument(`unknown mount type ${JSON.stringify((m as { type?: unknown }).type)}`);
    }
  }
  return out;
}
