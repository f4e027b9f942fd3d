/**
 * overlayfs snapshotter, modelled on containerd's overlay snapshotter:
 *
 *   <root>/metadata.json        the snapshot records, replaced atomically (write+fsync+rename)
 *   <root>/metadata.journal     the changes since, a line each (metadata-journal.ts)
 *   <root>/snapshots/<n>/fs     the snapshot's own layer (upperdir when active)
 *   <root>/snapshots/<n>/work   overlay workdir
 *   <root>/disks/<n>.ext4       a sized writable snapshot's own filesystem (prepare's sizeBytes),
 *                               loop-mounted at snapshots/<n>: its fs and work are inside it
 *
 * Snapshots are stored under short numeric ids so lowerdir option strings stay
 * short. mount(2) takes its options in one page (4096 bytes); with a root of
 * ~40 characters each layer costs ~55 bytes, so about 70 layers fit directly.
 * mount.ts then applies containerd's trick (relative lowerdirs from their common
 * parent, ~12 bytes per layer) which fits up to the kernel's limit; beyond
 * MAX_LAYERS (or if even the compact form cannot fit) prepare/view refuse with
 * InvalidArgument instead of failing later at mount time.
 *
 * The shared machinery (metadata, locking, key rules) lives in DirSnapshotter,
 * which the native snapshotter reuses.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, realpath, rm, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AlreadyExists, Conflict, Internal, InvalidArgument, NotFound, ResourceExhausted } from '../../core/errors.js';
import { addHostRoots } from '../../core/redaction.js';
import { Limiter } from '../../core/limiter.js';
import { logger } from '../../core/log.js';
import { removeTree } from '../../core/tree-removal.js';
import { run } from '../../core/exec.js';
import { spreadSubdirectories } from '../spread-directories.js';
import { MOUNT_OPTIONS_MAX, compactOverlayOptions, readMountInfo, unmount } from './mount.js';
import { detachStrayLoops, makeExt4Image, mountExt4Image } from './ext4-image.js';
import { MetadataJournal, applyChange, type MetadataChange, type MetadataFile, type SnapshotRecord } from './metadata-journal.js';
import { MAX_LAYER_SIZE_BYTES, MIN_LAYER_SIZE_BYTES, type MountSpec, type PrepareOptions, type SnapshotInfo, type SnapshotKind, type Snapshotter } from './snapshotter.js';

const log = logger('agent.snapshots');

/** overlayfs refuses more than 500 lower layers (OVL_MAX_STACK); stay below it. */
export const MAX_LAYERS = 120;

export type { SnapshotRecord };

/** Keys are free-form (containerd uses chain ids and "extract-..." keys) but bounded. */
function checkKey(key: unknown, what = 'key'): asserts key is string {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1024 || key.includes('\0')) {
    throw new InvalidArgument(`invalid snapshot ${what}: must be 1..1024 characters without NUL`, { [what]: key });
  }
}

const MiB = 1024 * 1024;

function checkLayerSize(n: unknown): asserts n is number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n % MiB !== 0 || n < MIN_LAYER_SIZE_BYTES || n > MAX_LAYER_SIZE_BYTES) {
    throw new InvalidArgument(`a writable layer's size must be a whole number of MiB from ${MIN_LAYER_SIZE_BYTES / MiB} MiB to 16 TiB, got ${String(n)}`, { sizeBytes: n });
  }
}

/** Disk usage of a tree like `du`: allocated blocks, hard links counted once, never following symlinks. */
export async function diskUsage(dir: string): Promise<{ size: number; inodes: number }> {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      inodes++;
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      for (const name of await readdir(p)) await walk(path.join(p, name));
    }
  };
  try {
    await walk(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { size: 0, inodes: 0 };
    throw e;
  }
  return { size, inodes };
}

/**
 * Common base: metadata kept by the snapshotter itself (a base and a journal of changes,
 * metadata-journal.ts), every read and change of it serialised by an in-process lock, and
 * snapshot directories created before / removed after the metadata changes (outside the
 * lock, under ids never given twice) so a crash leaves at most orphan directories, which
 * the next start removes.
 */
export abstract class DirSnapshotter implements Snapshotter {
  abstract readonly name: string;
  abstract readonly parentIndependent: boolean;
  readonly root: string;
  /** One read or change of the metadata at a time within this process. */
  protected readonly lock = new Limiter(1);
  private meta: MetadataFile | undefined;
  /** Keys being created, until their records are written or their creates fail (create). */
  private readonly creating = new Map<string, Promise<void>>();
  /** Ids handed to creates under way are below this one (the metadata's nextId follows when they are written). */
  private reservedId = 0;
  /** New snapshots' records waiting for the next write (record()). */
  private readonly unwritten: Array<{ key: string; rec: SnapshotRecord; resolve(): void; reject(e: unknown): void }> = [];
  private writingRecords: Promise<void> | undefined;
  private readonly journal: MetadataJournal;

  constructor(root: string) {
    const abs = path.resolve(root);
    // ',' and ':' would break overlay option strings; keep the rule for every implementation.
    if (/[,:\n\\]/.test(abs)) throw new InvalidArgument(`snapshotter root must not contain , : \\ or newlines: ${abs}`);
    this.root = abs;
    this.journal = new MetadataJournal(abs);
    // its layers' and snapshots' directories are the host's: no member reads their paths (core/redaction.ts)
    addHostRoots([abs]);
  }

  /** Fill a new snapshot's fs dir (overlay: nothing; native: copy of the parent). */
  protected abstract populate(fsDir: string, parentFs: string | undefined, kind: SnapshotKind): Promise<void>;
  /** The mounts of an active or view snapshot. */
  protected abstract mountsOf(key: string, rec: SnapshotRecord, chain: SnapshotRecord[]): MountSpec[];
  /** Checked before a snapshot is created with this chain of parents (top first). */
  protected checkChain(_chain: SnapshotRecord[], _kind: SnapshotKind): void {}

  protected snapshotDir(id: number): string {
    return path.join(this.root, 'snapshots', String(id));
  }
  protected fsDir(id: number): string {
    return path.join(this.snapshotDir(id), 'fs');
  }
  protected workDir(id: number): string {
    return path.join(this.snapshotDir(id), 'work');
  }
  private get disksDir(): string {
    return path.join(this.root, 'disks');
  }
  protected diskImage(id: number): string {
    return path.join(this.disksDir, `${id}.ext4`);
  }
  private async load(): Promise<MetadataFile> {
    if (this.meta) return this.meta;
    await mkdir(path.join(this.root, 'snapshots'), { recursive: true });
    await spreadSubdirectories(path.join(this.root, 'snapshots'));
    const meta = await this.journal.load();
    this.meta = meta;
    await this.removeOrphans(meta);
    await this.mountDisks(meta);
    return meta;
  }

  /**
   * The names of the snapshot directories something is mounted on (sized snapshots' filesystems),
   * compared by their real path: mountinfo's are canonical, and a home reached through a symlink
   * would otherwise never match (and be mounted twice).
   */
  private async mountedSnapshotDirs(): Promise<Set<string>> {
    const dir = await realpath(path.join(this.root, 'snapshots'));
    return new Set((await readMountInfo()).filter((m) => path.dirname(m.mountPoint) === dir).map((m) => path.basename(m.mountPoint)));
  }

  /** Sized snapshots' filesystems, mounted again where a host restart left them unmounted. */
  private async mountDisks(meta: MetadataFile): Promise<void> {
    const sized = Object.values(meta.snapshots).filter((r) => r.sizeBytes !== undefined);
    if (!sized.length) return;
    const mounted = await this.mountedSnapshotDirs();
    for (const r of sized) {
      if (mounted.has(String(r.id))) continue;
      try {
        await mountExt4Image(this.diskImage(r.id), this.snapshotDir(r.id));
        log.info('mounted a sized snapshot again', { id: r.id });
      } catch (e) {
        log.error('a sized snapshot could not be mounted again', { id: r.id, error: String(e) });
      }
    }
  }

  /**
   * A snapshot's directory is made under a random name and renamed to its id. ext4 places the
   * children of a directory marked +T (spread-directories.ts) by a hash of their name, and a fresh
   * home numbers its snapshots from 1 again: made as "6", the 2,000-file layer of the bench image
   * landed in the block group where the last home's "6" had just been removed, and its creates
   * paid the scan over those freed inodes (0.8-0.95 s of system time in a fresh daemon's pull,
   * 0.07-0.14 s on a running daemon whose ids had moved on). The inode keeps its group when renamed.
   */
  private async makeSnapshotDir(dir: string): Promise<void> {
    const made = path.join(this.root, 'snapshots', `.new-${randomBytes(6).toString('hex')}`);
    // in this turn: ~50-110 µs of CPU each here, a thread-pool round trip ~60 µs more
    mkdirSync(made, { mode: 0o755 });
    try {
      renameSync(made, dir);
    } catch (e) {
      await rm(made, { recursive: true, force: true }).catch(() => undefined);
      throw e;
    }
  }

  /**
   * Directories without a record are leftovers of a crash between the two steps (or of one before a
   * rename); a sized one's filesystem is unmounted first (never removed through), and images
   * without a sized record go too.
   */
  private async removeOrphans(meta: MetadataFile): Promise<void> {
    const known = new Set(Object.values(meta.snapshots).map((r) => String(r.id)));
    const mounted = await this.mountedSnapshotDirs();
    for (const name of await readdir(path.join(this.root, 'snapshots'))) {
      if (known.has(name)) continue;
      const dir = path.join(this.root, 'snapshots', name);
      try {
        if (mounted.has(name)) await unmount(dir);
        await rm(dir, { recursive: true, force: true });
        log.info('removed orphan snapshot directory', { dir });
      } catch (e) {
        log.warn('could not remove orphan snapshot directory', { dir, error: e });
      }
    }
    for (const dev of await detachStrayLoops(this.disksDir)) log.info('detached a stray loop device of a snapshot image', { dev });
    const sized = new Set(Object.values(meta.snapshots).filter((r) => r.sizeBytes !== undefined).map((r) => `${r.id}.ext4`));
    for (const name of await readdir(this.disksDir).catch(() => [] as string[])) {
      if (sized.has(name)) continue;
      await rm(path.join(this.disksDir, name), { force: true }).catch((e: unknown) => log.warn('could not remove an orphan snapshot image', { name, error: e }));
      log.info('removed orphan snapshot image', { name });
    }
  }

  /**
   * A sized snapshot's filesystem at its directory: made, mounted, fs and work inside. Refused
   * (ResourceExhausted) when the host's filesystem has not the room to fill it, as a volume is: the
   * image is sparse, but a size that cannot be written on the day it is given is a promise not kept.
   */
  private async makeDisk(id: number, sizeBytes: number): Promise<void> {
    const free = await statfs(this.root);
    const avail = free.bavail * free.bsize;
    if (avail < sizeBytes) {
      throw new ResourceExhausted(`this host has ${Math.floor(avail / MiB)} MiB free, not the ${sizeBytes / MiB} MiB of the writable layer asked for`, { availBytes: avail, sizeBytes });
    }
    await mkdir(this.disksDir, { recursive: true, mode: 0o700 });
    await rm(this.diskImage(id), { force: true }); // a crashed create's, if the metadata never had it
    await makeExt4Image(this.diskImage(id), sizeBytes, `nimbus-layer-${id}`);
    await mountExt4Image(this.diskImage(id), this.snapshotDir(id));
  }

  /** A sized snapshot's filesystem unmounted and its image removed; unsized, nothing. */
  private async dropDisk(id: number): Promise<void> {
    await unmount(this.snapshotDir(id));
    await rm(this.diskImage(id), { force: true });
  }

  /**
   * Apply a change to the metadata and persist it; undone in memory if the save fails. In place,
   * under the lock every reader takes, so none sees it before it is saved: a copy of the whole
   * metadata per change (structuredClone) cost 1.1 ms of the event loop with 500 snapshots and
   * 4.0 ms with 2,000, on top of the JSON.stringify the save needs anyway.
   */
  private async mutate(meta: MetadataFile, change: MetadataChange): Promise<void> {
    const nextId = meta.nextId;
    // each key the change touches, as it was before it
    const before = new Map<string, SnapshotRecord | undefined>();
    for (const k of [...(change.del ?? []), ...(change.set ?? []).map(([k]) => k)]) {
      if (!before.has(k)) before.set(k, Object.prototype.hasOwnProperty.call(meta.snapshots, k) ? meta.snapshots[k] : undefined);
    }
    applyChange(meta, change);
    try {
      await this.journal.append(change, meta);
    } catch (e) {
      meta.nextId = nextId;
      for (const [k, rec] of before) {
        if (rec === undefined) delete meta.snapshots[k];
        else meta.snapshots[k] = rec;
      }
      throw e;
    }
  }

  private get(meta: MetadataFile, key: string): SnapshotRecord {
    const rec = Object.prototype.hasOwnProperty.call(meta.snapshots, key) ? meta.snapshots[key] : undefined;
    if (!rec) throw new NotFound(`snapshot ${JSON.stringify(key)} not found`, { key, snapshotter: this.name });
    return rec;
  }

  private has(meta: MetadataFile, key: string): boolean {
    return Object.prototype.hasOwnProperty.call(meta.snapshots, key);
  }

  /** The record's ancestors, nearest first. */
  private chain(meta: MetadataFile, rec: SnapshotRecord): SnapshotRecord[] {
    const out: SnapshotRecord[] = [];
    let p = rec.parent;
    while (p !== undefined) {
      const r = this.get(meta, p);
      out.push(r);
      p = r.parent;
      if (out.length > 10_000) throw new Internal('snapshot parent cycle');
    }
    return out;
  }

  private info(key: string, rec: SnapshotRecord): SnapshotInfo {
    const i: SnapshotInfo = { key, kind: rec.kind, createdAt: rec.createdAt };
    if (rec.parent !== undefined) i.parent = rec.parent;
    if (rec.sizeBytes !== undefined) i.sizeBytes = rec.sizeBytes;
    return i;
  }

  /**
   * A new snapshot in three steps: its key and an id reserved under the lock; its directory made
   * (and, for a native snapshot, its parent copied) outside it; its record written under the lock
   * with those of other creates that came meanwhile (record()), once its parent is checked again.
   * Under a first burst of 200 the whole create held the lock (~8 ms, 31 at p90, two fsyncs among
   * it) and every other snapshot operation waited up to 4-6 s for it.
   */
  private async create(kind: 'active' | 'view', key: string, parent: string | undefined, sizeBytes?: number): Promise<MountSpec[]> {
    checkKey(key);
    if (parent !== undefined) checkKey(parent, 'parent');
    if (sizeBytes !== undefined) checkLayerSize(sizeBytes);
    let done!: () => void;
    let reserved: { rec: SnapshotRecord; mounts: MountSpec[]; parentFs: string | undefined } | undefined;
    while (!reserved) {
      // the same key being created: its outcome first, so a second create sees it exists (its
      // caller then asks its mounts) or makes it itself, as when creates were serialised whole
      await this.creating.get(key);
      reserved = await this.lock.run(async () => {
        const meta = await this.load();
        if (this.has(meta, key)) throw new AlreadyExists(`snapshot ${JSON.stringify(key)} already exists`, { key });
        if (this.creating.has(key)) return undefined; // taken since: wait for that one
        const chain = this.chainFor(meta, parent);
        this.checkChain(chain, kind);
        const rec: SnapshotRecord = { id: Math.max(meta.nextId, this.reservedId), kind, createdAt: new Date().toISOString() };
        if (parent !== undefined) rec.parent = parent;
        if (sizeBytes !== undefined) rec.sizeBytes = sizeBytes;
        this.reservedId = rec.id + 1;
        this.creating.set(key, new Promise<void>((resolve) => (done = resolve)));
        return { rec, mounts: this.mountsOf(key, rec, chain), parentFs: chain[0] ? this.fsDir(chain[0].id) : undefined };
      });
    }
    const { rec, mounts, parentFs } = reserved;
    const dir = this.snapshotDir(rec.id);
    try {
      // a directory left by a crash under a reused id (looked for in this turn: it rarely is)
      if (existsSync(dir)) await rm(dir, { recursive: true, force: true });
      await this.makeSnapshotDir(dir);
      if (sizeBytes !== undefined) await this.makeDisk(rec.id, sizeBytes);
      mkdirSync(this.fsDir(rec.id), { mode: 0o755 });
      mkdirSync(this.workDir(rec.id), { mode: 0o700 });
      await this.populate(this.fsDir(rec.id), parentFs, kind);
      await this.record(key, rec);
    } catch (e) {
      if (sizeBytes !== undefined) await this.dropDisk(rec.id).catch((x: unknown) => log.warn('a sized snapshot left behind; removed at next start', { key, error: String(x) }));
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw e;
    } finally {
      this.creating.delete(key);
      done();
    }
    return mounts;
  }

  /**
   * Write a new snapshot's record. Records that come while the lock is held by another write
   * are written together, in one save (two fsyncs): a first burst's creates queued one save each
   * behind each other. A record whose parent was removed meanwhile (it had no child on record
   * yet) is refused with its parent's NotFound; a failed save fails every record it held.
   */
  private record(key: string, rec: SnapshotRecord): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.unwritten.push({ key, rec, resolve, reject });
      this.writeRecords();
    });
  }

  private writeRecords(): void {
    if (this.writingRecords) return;
    this.writingRecords = this.lock
      .run(async () => {
        const batch = this.unwritten.splice(0);
        try {
          const meta = await this.load();
          const kept = batch.filter((b) => {
            try {
              this.chainFor(meta, b.rec.parent);
              return true;
            } catch (e) {
              b.reject(e);
              return false;
            }
          });
          if (kept.length) {
            await this.mutate(meta, { set: kept.map((b) => [b.key, b.rec] as const), nextId: Math.max(...kept.map((b) => b.rec.id + 1)) });
          }
          for (const b of kept) b.resolve();
        } catch (e) {
          for (const b of batch) b.reject(e); // a settled one stays as it was
        }
      })
      .finally(() => {
        this.writingRecords = undefined;
        if (this.unwritten.length) this.writeRecords();
      });
  }

  /** The committed parent's chain (top first), or none without a parent. */
  private chainFor(meta: MetadataFile, parent: string | undefined): SnapshotRecord[] {
    if (parent === undefined) return [];
    const p = this.get(meta, parent);
    if (p.kind !== 'committed') {
      throw new InvalidArgument(`parent ${JSON.stringify(parent)} is not a committed snapshot (${p.kind})`, {
        parent,
      });
    }
    return [p, ...this.chain(meta, p)];
  }

  prepare(key: string, parent?: string, opts: PrepareOptions = {}): Promise<MountSpec[]> {
    return this.create('active', key, parent, opts.sizeBytes);
  }

  view(key: string, parent?: string): Promise<MountSpec[]> {
    return this.create('view', key, parent);
  }

  async mounts(key: string): Promise<MountSpec[]> {
    checkKey(key);
    return this.lock.run(async () => {
      const meta = await this.load();
      const rec = this.get(meta, key);
      if (rec.kind === 'committed') {
        throw new Conflict(`snapshot ${JSON.stringify(key)} is committed and has no mounts; create a view of it`, {
          key,
        });
      }
      return this.mountsOf(key, rec, this.chain(meta, rec));
    });
  }

  async commit(name: string, key: string, opts: { parent?: string } = {}): Promise<void> {
    checkKey(name, 'name');
    checkKey(key);
    const parent = opts.parent;
    if (parent !== undefined) {
      checkKey(parent, 'parent');
      if (!this.parentIndependent) throw new InvalidArgument(`the ${this.name} snapshotter cannot give a snapshot its parent at commit`);
    }
    return this.lock.run(async () => {
      const meta = await this.load();
      const rec = this.get(meta, key);
      if (rec.kind !== 'active') {
        throw new Conflict(`snapshot ${JSON.stringify(key)} is ${rec.kind}; only active snapshots can be committed`, {
          key,
        });
      }
      if (this.has(meta, name) || this.creating.has(name)) throw new AlreadyExists(`snapshot ${JSON.stringify(name)} already exists`, { name });
      const committed: SnapshotRecord = { ...rec, kind: 'committed', createdAt: new Date().toISOString() };
      if (parent !== undefined) {
        if (rec.parent !== undefined) throw new InvalidArgument(`snapshot ${JSON.stringify(key)} already has a parent`, { key });
        const p = this.get(meta, parent);
        if (p.kind !== 'committed') throw new InvalidArgument(`parent ${JSON.stringify(parent)} is not a committed snapshot (${p.kind})`, { parent });
        const chain = [p, ...this.chain(meta, p)];
        this.checkChain(chain, 'committed');
        committed.parent = parent;
      }
      await this.mutate(meta, { del: [key], set: [[name, committed]] });
      // the overlay workdir is only scratch space for the kernel; empty it
      await rm(this.workDir(rec.id), { recursive: true, force: true }).catch(() => undefined);
      await mkdir(this.workDir(rec.id), { mode: 0o700 }).catch(() => undefined);
    });
  }

  async remove(key: string): Promise<void> {
    checkKey(key);
    const gone = await this.lock.run(async () => {
      const meta = await this.load();
      const rec = this.get(meta, key);
      const children = Object.entries(meta.snapshots)
        .filter(([, r]) => r.parent === key)
        .map(([k]) => k);
      if (children.length > 0) {
        throw new Conflict(`snapshot ${JSON.stringify(key)} has children: ${children.slice(0, 5).join(', ')}`, {
          key,
          children,
        });
      }
      await this.mutate(meta, { del: [key] });
      return rec;
    });
    // its record is gone and ids are never given again: the directory is nobody's, outside the lock
    const dir = this.snapshotDir(gone.id);
    if (gone.sizeBytes !== undefined) {
      try {
        await this.dropDisk(gone.id);
      } catch (e) {
        log.warn('a sized snapshot left mounted; removed at next start', { key, dir, error: e });
        return;
      }
    }
    // rename first so a half-removed tree never looks like a live snapshot
    const trash = path.join(this.root, 'snapshots', `rm-${gone.id}-${randomBytes(4).toString('hex')}`);
    try {
      renameSync(dir, trash);
      await removeTree(trash);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        log.warn('snapshot directory left behind; removed at next start', { key, dir, error: e });
      }
    }
  }

  async stat(key: string): Promise<SnapshotInfo> {
    checkKey(key);
    return this.lock.run(async () => this.info(key, this.get(await this.load(), key)));
  }

  list(): Promise<SnapshotInfo[]> {
    return this.lock.run(async () => {
      const meta = await this.load();
      return Object.entries(meta.snapshots).map(([k, r]) => this.info(k, r));
    });
  }

  async usage(key: string): Promise<{ size: number; inodes: number }> {
    checkKey(key);
    // walk outside the lock: a big tree must not stall other snapshot operations
    const rec = await this.lock.run(async () => this.get(await this.load(), key));
    return diskUsage(this.fsDir(rec.id));
  }
}

export class OverlaySnapshotter extends DirSnapshotter {
  readonly name = 'overlayfs';
  readonly parentIndependent = true;

  protected populate(): Promise<void> {
    return Promise.resolve();
  }

  protected override checkChain(chain: SnapshotRecord[], kind: SnapshotKind): void {
    // a view over one parent is a bind mount; anything else is an overlay with `chain` lowers
    if (chain.length > MAX_LAYERS) {
      throw new InvalidArgument(
        `snapshot chain of ${chain.length} layers exceeds the overlayfs snapshotter limit of ${MAX_LAYERS}`,
        { layers: chain.length, max: MAX_LAYERS, kind },
      );
    }
  }

  protected mountsOf(_key: string, rec: SnapshotRecord, chain: SnapshotRecord[]): MountSpec[] {
    const fs = this.fsDir(rec.id);
    if (rec.kind === 'view') {
      if (chain.length === 0) return [{ type: 'bind', source: fs, options: ['bind', 'ro'] }];
      if (chain.length === 1) return [{ type: 'bind', source: this.fsDir(chain[0]!.id), options: ['bind', 'ro'] }];
      return [this.overlay(['ro', `lowerdir=${chain.map((r) => this.fsDir(r.id)).join(':')}`])];
    }
    if (chain.length === 0) return [{ type: 'bind', source: fs, options: ['bind', 'rw'] }];
    return [
      this.overlay([
        `workdir=${this.workDir(rec.id)}`,
        `upperdir=${fs}`,
        `lowerdir=${chain.map((r) => this.fsDir(r.id)).join(':')}`,
      ]),
    ];
  }

  private overlay(options: string[]): MountSpec {
    const compact = compactOverlayOptions(options).options.join(',');
    if (compact.length > MOUNT_OPTIONS_MAX) {
      throw new InvalidArgument(
        `overlay mount options would be ${compact.length} bytes, over the ${MOUNT_OPTIONS_MAX}-byte limit of mount(2); use a shorter snapshotter root or fewer layers`,
        { length: compact.length },
      );
    }
    return { type: 'overlay', source: 'overlay', options };
  }
}

/**
 * Really try an overlay mount (two lowers, an upper, a write, an unmount) in a
 * temporary directory under dir. undefined = overlayfs works there; otherwise the reason.
 */
export async function overlayfsSupported(dir: string): Promise<string | undefined> {
  let tmp: string | undefined;
  let mounted = false;
  const merged = () => path.join(tmp!, 'merged');
  try {
    await mkdir(dir, { recursive: true });
    tmp = await mkdtemp(path.join(dir, '.overlay-probe-'));
    for (const d of ['l1', 'l2', 'upper', 'work', 'merged']) await mkdir(path.join(tmp, d));
    await writeFile(path.join(tmp, 'l1', 'a'), 'a');
    await writeFile(path.join(tmp, 'l2', 'b'), 'b');
    const opts = `lowerdir=${tmp}/l2:${tmp}/l1,upperdir=${tmp}/upper,workdir=${tmp}/work`;
    const r = await run('mount', ['-t', 'overlay', 'overlay', '-o', opts, '--', merged()]);
    if (r.code !== 0) return `overlay mount failed: ${r.stderr.trim() || `exit ${r.code}`}`;
    mounted = true;
    const names = (await readdir(merged())).sort().join(',');
    if (names !== 'a,b') return `overlay mount shows ${names || 'nothing'} instead of a,b`;
    await writeFile(path.join(merged(), 'c'), 'c');
    await rm(path.join(merged(), 'a'));
    return undefined;
  } catch (e) {
    return `overlay probe failed: ${(e as Error).message}`;
  } finally {
    if (tmp !== undefined) {
      if (mounted) {
        const u = await run('umount', ['--', merged()]);
        if (u.code !== 0) await run('umount', ['-l', '--', merged()]);
      }
      await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    }
  }
}
