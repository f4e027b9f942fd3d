/**
 * Free space on the filesystems images land on (the content store and the snapshots), so a pull
 * is refused before it downloads what cannot fit and an unpack stops before the disk is full.
 *
 * Each filesystem keeps a reserve: min(reserveBytes, reserveRatio × its size), 1 GiB and 5% by
 * default, so a small disk is not refused everything and a large one keeps 1 GiB. Messages say
 * sizes only, never paths: they reach tenants.
 */
import { stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { ResourceExhausted } from '../../core/errors.js';

export const DEFAULT_RESERVE_BYTES = 1024 ** 3;
export const DEFAULT_RESERVE_RATIO = 0.05;

/** One filesystem's space: `id` tells two directories on the same filesystem apart from two on different ones. */
export interface FsSpace {
  id: string;
  availBytes: number;
  totalBytes: number;
}
export type SpaceProbe = (dir: string) => Promise<FsSpace>;

/** statfs(2) of the nearest existing ancestor (a store creates its directories lazily). */
export const statfsProbe: SpaceProbe = async (dir) => {
  let d = path.resolve(dir);
  for (;;) {
    try {
      const [fs, st] = await Promise.all([statfs(d), stat(d)]);
      return { id: String(st.dev), availBytes: fs.bavail * fs.bsize, totalBytes: fs.blocks * fs.bsize };
    } catch (e) {
      const parent = path.dirname(d);
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || parent === d) throw e;
      d = parent;
    }
  }
};

export interface DiskSpaceOptions {
  reserveBytes?: number;
  reserveRatio?: number;
  probe?: SpaceProbe;
}

/** What a pull or import is about to write: blobs into the content store, files into snapshots. */
export interface SpaceNeed {
  content: number;
  snapshots: number;
}

/** The narrow view pulls and imports use (refuse early). */
export interface RoomCheck {
  ensureRoom(need: SpaceNeed, what: string): Promise<void>;
}
/** The narrow view an unpack uses: bytes it may still write to the snapshot filesystem (refuses at 0). */
export interface UnpackRoom {
  snapshotRoom(what: string): Promise<number>;
}

/** Free space is asked again after at most this much written (less as the room left shrinks). */
const ROOM_CHECK_MAX_BYTES = 64 * 1024 ** 2;
const ROOM_CHECK_MIN_BYTES = 256 * 1024;

/**
 * When a writer asks an UnpackRoom again: once what it wrote passes the next check, which comes
 * sooner the less room there is (half of it, between 256 KiB and 64 MiB), so the reserve is never
 * written through.
 */
export class RoomPacer {
  /** Bytes after which the room is asked again (0: before the first write). */
  private next = 0;

  constructor(
    private readonly room: UnpackRoom,
    private readonly what: string,
  ) {}

  /** Whether the room must be asked before the writer goes past `written` bytes in all. */
  due(written: number): boolean {
    return written >= this.next;
  }

  /** Ask it (ResourceExhausted at the reserve) and set when to ask next. */
  async check(written: number): Promise<void> {
    const room = await this.room.snapshotRoom(this.what);
    this.next = written + Math.min(ROOM_CHECK_MAX_BYTES, Math.max(ROOM_CHECK_MIN_BYTES, Math.floor(room / 2)));
  }
}

const mib = (n: number) => {
  const m = Math.max(0, n) / 1024 ** 2;
  return m >= 10 ? `${Math.floor(m)} MiB` : `${m.toFixed(1)} MiB`;
};

export class DiskSpace implements RoomCheck, UnpackRoom {
  private readonly reserveBytes: number;
  private readonly reserveRatio: number;
  private readonly probe: SpaceProbe;

  constructor(
    private readonly dirs: { content: string; snapshots: string },
    opts: DiskSpaceOptions = {},
  ) {
    this.reserveBytes = opts.reserveBytes ?? DEFAULT_RESERVE_BYTES;
    this.reserveRatio = opts.reserveRatio ?? DEFAULT_RESERVE_RATIO;
    this.probe = opts.probe ?? statfsProbe;
  }

  private reserveOf(fs: FsSpace): number {
    return Math.min(this.reserveBytes, Math.floor(fs.totalBytes * this.reserveRatio));
  }

  /** Bytes writable on fs before its reserve. */
  private roomOn(fs: FsSpace): number {
    return fs.availBytes - this.reserveOf(fs);
  }

  /**
   * Refuse (ResourceExhausted) unless every filesystem involved keeps its reserve after `need`;
   * the content store and the snapshots add up when they share a filesystem.
   */
  async ensureRoom(need: SpaceNeed, what: string): Promise<void> {
    const [c, s] = await Promise.all([this.probe(this.dirs.content), this.probe(this.dirs.snapshots)]);
    const checks = c.id === s.id ? [{ fs: c, bytes: need.content + need.snapshots }] : [{ fs: c, bytes: need.content }, { fs: s, bytes: need.snapshots }];
    for (const { fs, bytes } of checks) {
      const room = this.roomOn(fs);
      if (room > 0 && bytes <= room) continue;
      throw new ResourceExhausted(
        `not enough disk space for ${what}: needs at least ${mib(bytes)}, ${mib(room)} free beyond the ${mib(this.reserveOf(fs))} reserve`,
        { neededBytes: bytes, availableBytes: Math.max(0, room), reserveBytes: this.reserveOf(fs) },
      );
    }
  }

  async snapshotRoom(what: string): Promise<number> {
    const fs = await this.probe(this.dirs.snapshots);
    const room = this.roomOn(fs);
    if (room <= 0) {
      throw new ResourceExhausted(`disk space for images fell to its ${mib(this.reserveOf(fs))} reserve while unpacking ${what}`, {
        availableBytes: Math.max(0, fs.availBytes),
        reserveBytes: this.reserveOf(fs),
      });
    }
    return room;
  }
}
