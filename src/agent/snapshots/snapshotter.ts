/**
 * Snapshotter contract, modelled on containerd core/snapshots: it returns mount
 * specifications and never mounts anything itself (see mount.ts for that).
 */
import { hasCode } from '../../core/errors.js';

export interface MountSpec {
  type: string; // "overlay" | "bind"
  source: string;
  options: string[];
}

export type SnapshotKind = 'committed' | 'active' | 'view';

export interface SnapshotInfo {
  key: string;
  parent?: string;
  kind: SnapshotKind;
  createdAt: string;
  /** A sized writable snapshot's size (PrepareOptions.sizeBytes). */
  sizeBytes?: number;
}

/** Smallest and largest size of a writable snapshot's own filesystem (ext4's journal and metadata need the first). */
export { MIN_STORAGE_BYTES as MIN_LAYER_SIZE_BYTES, MAX_STORAGE_BYTES as MAX_LAYER_SIZE_BYTES } from '../../core/limits.js';

export interface PrepareOptions {
  /**
   * What the writable snapshot may hold, in bytes (a whole number of MiB): its layer gets a
   * filesystem of that size of its own, and writes past it fail with ENOSPC (Docker's
   * `--storage-opt size`). Absent: it shares the snapshotter's filesystem, unbounded.
   */
  sizeBytes?: number;
}

export interface Snapshotter {
  readonly name: string;
  /** A writable snapshot on top of parent (a committed snapshot), or empty. */
  prepare(key: string, parent?: string, opts?: PrepareOptions): Promise<MountSpec[]>;
  /** A read-only snapshot of parent. */
  view(key: string, parent?: string): Promise<MountSpec[]>;
  mounts(key: string): Promise<MountSpec[]>;
  /**
   * A layer's own directory does not depend on its parent's content (overlayfs: the upper dir
   * alone), so layers can be unpacked in parallel and given their parent at commit.
   */
  readonly parentIndependent: boolean;
  /**
   * Turn the active snapshot `key` into the committed snapshot `name`. `opts.parent` (only when
   * parentIndependent, and only for a snapshot prepared without a parent) commits it on top of
   * that committed snapshot.
   */
  commit(name: string, key: string, opts?: { parent?: string }): Promise<void>;
  /** Refused with Conflict while other snapshots have it as parent. */
  remove(key: string): Promise<void>;
  stat(key: string): Promise<SnapshotInfo>;
  list(): Promise<SnapshotInfo[]>;
  /** Bytes used by this snapshot's own layer. */
  usage(key: string): Promise<{ size: number; inodes: number }>;
}

/** A container's writable layer as the snapshotter makes it: of its own size, or unbounded. */
export function layerSize(c: { storageBytes?: number }): PrepareOptions {
  return c.storageBytes !== undefined ? { sizeBytes: c.storageBytes } : {};
}

/** Whether the snapshotter has a snapshot of this key (its stat's NotFound: no; any other error is thrown). */
export async function snapshotExists(snapshotter: Snapshotter, key: string): Promise<boolean> {
  try {
    await snapshotter.stat(key);
    return true;
  } catch (e) {
    if (hasCode(e, 'NotFound')) return false;
    throw e;
  }
}
