/**
 * Block volumes on this host (docs/volumes.md "Block volumes"): each one a qcow2 file VMs attach
 * as a virtio-blk disk, and snapshots of them as frozen qcow2 files a volume's chain (or a clone)
 * is backed by.
 *
 *   <root>/<id>/volume.json        the agent's manifest: id, size, the snapshot it was cloned from
 *   <root>/<id>/disk.qcow2         the volume's active layer: what a VM opens (never a backing file)
 *   <root>/<id>/disk.raw           instead, for a shared volume: a sparse raw file several VMs may write
 *                                  (qcow2's metadata cannot take two writers), without snapshots
 *   <root>/snapshots/<sid>.qcow2   a snapshot: the volume's active layer as it was, frozen
 *   <root>/snapshots/<sid>.json    its manifest (id, volume, size)
 *
 * A snapshot moves the active layer aside (it becomes the snapshot, unchanged from then on) and
 * puts an empty overlay backed by it in its place: O(1), whatever the size. A clone is an overlay
 * backed by a snapshot. Removing a snapshot first folds it into whatever is backed by it
 * (`qemu-img rebase`, safe mode: their contents do not change), then deletes it. Files a running
 * QEMU holds are locked by QEMU itself, so a snapshot of an attached volume, or the removal of a
 * snapshot under a running VM's disk, fails on the lock: Conflict.
 */
import { mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Conflict, Internal, InvalidArgument, NotFound, ResourceExhausted, wholeForAdmins } from '../../core/errors.js';
import { redactAbsolutePaths } from '../../core/redaction.js';
import { run } from '../../core/exec.js';
import { logger } from '../../core/log.js';
import { replaceStateFile } from '../../core/state-files.js';
import { statfsProbe } from '../content/disk-space.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { checkVolumeSize, readVolumeManifest } from './volume-store.js';

const log = logger('agent.block-volumes');
const MiB = 1024 * 1024;
const ID = /^[0-9a-f]{12,64}$/;
/** Made this recently: never removed by reconcile (its row may be younger than the list). */
const YOUNG_MS = 10 * 60_000;
/** Every change to a chain (create from a snapshot, snapshot, snapshot removal, volume removal) holds this one key. */
const CHAIN = 'chain';

export interface HostBlockVolume {
  id: string;
  sizeBytes: number;
  /** The qcow2 file a VM opens. */
  path: string;
  /** Bytes the file takes on the host (qcow2 allocates as the guest writes). */
  allocatedBytes: number;
  format: 'qcow2' | 'raw';
}

export interface HostBlockSnapshot {
  id: string;
  volumeId: string;
  sizeBytes: number;
}

interface Manifest {
  id: string;
  sizeBytes: number;
  createdAt: string;
  fromSnapshot?: string;
  /** Absent: qcow2. */
  format?: 'raw';
}

interface SnapshotManifest {
  id: string;
  volumeId: string;
  sizeBytes: number;
  createdAt: string;
}

function checkId(id: string, what = 'volume'): void {
  if (typeof id !== 'string' || !ID.test(id)) throw new InvalidArgument(`invalid ${what} id ${JSON.stringify(String(id).slice(0, 80))}`);
}

/** qemu-img; its lock errors (a running QEMU holds the file) become Conflict. */
async function qemuImg(args: string[], what: string): Promise<string> {
  const r = await run('qemu-img', args, { timeoutMs: 600_000 });
  if (r.code === 0) return r.stdout;
  const msg = (r.stderr || r.stdout).trim();
  // qemu-img's words name the volume's host files: its owner reads them without, administrators whole
  const locked = /lock/i.test(msg);
  const whole = locked ? `${what}: the disk is in use by a running VM (${msg.split('\n')[0]})` : `qemu-img ${args.join(' ')} failed (exit ${r.code}): ${msg}`;
  const message = redactAbsolutePaths(whole);
  throw new (locked ? Conflict : Internal)(message, undefined, wholeForAdmins(message, whole));
}

interface ImgInfo {
  'virtual-size': number;
  'actual-size'?: number;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
}

async function info(file: string): Promise<ImgInfo> {
  // -U: read even while a running QEMU holds it (this only looks)
  return JSON.parse(await qemuImg(['info', '-U', '--output=json', file], `reading ${path.basename(file)}`)) as ImgInfo;
}

const backingOf = (i: ImgInfo): string | undefined => i['full-backing-filename'] ?? i['backing-filename'];

export class BlockVolumeStore {
  private readonly locks = new KeyedLock();

  constructor(private readonly root: string) {}

  private dir(id: string): string {
    return path.join(this.root, id);
  }
  /** The qcow2 file a VM opens (whether or not the volume exists). */
  diskPath(id: string): string {
    checkId(id);
    return path.join(this.dir(id), 'disk.qcow2');
  }
  private snapshotDir(): string {
    return path.join(this.root, 'snapshots');
  }
  private snapshotFile(sid: string): string {
    return path.join(this.snapshotDir(), `${sid}.qcow2`);
  }

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    return this.locks.run(CHAIN, fn);
  }

  private manifest(id: string): Promise<Manifest | undefined> {
    return readVolumeManifest<Manifest>(this.dir(id), id);
  }

  private async snapshotManifest(sid: string): Promise<SnapshotManifest | undefined> {
    try {
      const m = JSON.parse(await readFile(path.join(this.snapshotDir(), `${sid}.json`), 'utf8')) as SnapshotManifest;
      return m.id === sid && existsSync(this.snapshotFile(sid)) ? m : undefined;
    } catch {
      return undefined;
    }
  }

  private rawPath(id: string): string {
    return path.join(this.dir(id), 'disk.raw');
  }

  private async view(m: Manifest): Promise<HostBlockVolume> {
    const file = m.format === 'raw' ? this.rawPath(m.id) : this.diskPath(m.id);
    let allocatedBytes = 0;
    try {
      allocatedBytes = (await stat(file)).blocks * 512;
    } catch {
      // a snapshot in flight moved it for a moment
    }
    return { id: m.id, sizeBytes: m.sizeBytes, path: file, allocatedBytes, format: m.format ?? 'qcow2' };
  }

  /**
   * Make the volume: an empty qcow2 of its size, or an overlay on a snapshot (a clone; at least the
   * snapshot's size). Idempotent for the same request; Conflict when the id exists otherwise.
   * ResourceExhausted when the host's filesystem has less room than the size.
   */
  async create(id: string, sizeBytes: number, opts: { fromSnapshot?: string; shared?: boolean } = {}): Promise<HostBlockVolume> {
    checkId(id);
    checkVolumeSize(sizeBytes);
    const { fromSnapshot } = opts;
    if (fromSnapshot !== undefined) checkId(fromSnapshot, 'snapshot');
    if (fromSnapshot !== undefined && opts.shared) throw new InvalidArgument('a shared volume is raw: it cannot be cloned from a snapshot');
    return this.locked(async () => {
      const had = await this.manifest(id);
      if (had) {
        if (had.sizeBytes !== sizeBytes || had.fromSnapshot !== fromSnapshot || (had.format === 'raw') !== (opts.shared === true)) throw new Conflict(`block volume ${id} exists on this host with another size or source`, { id });
        return this.view(had);
      }
      let backing: string | undefined;
      if (fromSnapshot !== undefined) {
        const s = await this.snapshotManifest(fromSnapshot);
        if (!s) throw new NotFound(`snapshot ${fromSnapshot} is not on this host`, { snapshot: fromSnapshot });
        if (sizeBytes < s.sizeBytes) throw new InvalidArgument(`a clone must be at least its snapshot's size (${s.sizeBytes / MiB} MiB), got ${sizeBytes / MiB} MiB`, { field: 'size' });
        backing = this.snapshotFile(fromSnapshot);
      }
      await mkdir(this.root, { recursive: true, mode: 0o700 });
      const space = await statfsProbe(this.root);
      if (space.availBytes < sizeBytes) {
        throw new ResourceExhausted(`this host has ${Math.floor(space.availBytes / MiB)} MiB free, not the ${sizeBytes / MiB} MiB the volume needs`, { availBytes: space.availBytes, sizeBytes });
      }
      await rm(this.dir(id), { recursive: true, force: true }); // what a cut-short create left
      await mkdir(this.dir(id), { recursive: true, mode: 0o700 });
      try {
        if (opts.shared) await qemuImg(['create', '-q', '-f', 'raw', this.rawPath(id), String(sizeBytes)], `creating volume ${id}`);
        else await qemuImg(['create', '-q', '-f', 'qcow2', ...(backing ? ['-F', 'qcow2', '-b', backing] : []), this.diskPath(id), String(sizeBytes)], `creating volume ${id}`);
        const m: Manifest = { id, sizeBytes, createdAt: new Date().toISOString(), ...(fromSnapshot ? { fromSnapshot } : {}), ...(opts.shared ? { format: 'raw' as const } : {}) };
        // the manifest last: a directory without one is a cut-short create, removed by reconcile
        await replaceStateFile(path.join(this.dir(id), 'volume.json'), JSON.stringify(m));
        return await this.view(m);
      } catch (e) {
        await rm(this.dir(id), { recursive: true, force: true }).catch(() => undefined);
        throw e;
      }
    });
  }

  /** The volume as it is here; NotFound when the host has none of that id. */
  async get(id: string): Promise<HostBlockVolume> {
    checkId(id);
    const m = await this.manifest(id);
    if (!m) throw new NotFound(`block volume ${id} is not on this host`, { id });
    return this.view(m);
  }

  /**
   * A point-in-time snapshot: the active layer becomes the snapshot, a new empty overlay on it the
   * active layer. Conflict while a running VM has the volume open (QEMU's lock; the control plane
   * refuses first). Idempotent for a snapshot id already taken of this volume.
   */
  async snapshot(id: string, sid: string): Promise<HostBlockSnapshot> {
    checkId(id);
    checkId(sid, 'snapshot');
    return this.locked(async () => {
      const had = await this.snapshotManifest(sid);
      if (had) {
        if (had.volumeId !== id) throw new Conflict(`snapshot ${sid} exists on this host for another volume`, { snapshot: sid });
        return { id: sid, volumeId: id, sizeBytes: had.sizeBytes };
      }
      const m = await this.manifest(id);
      if (!m) throw new NotFound(`block volume ${id} is not on this host`, { id });
      if (m.format === 'raw') throw new InvalidArgument(`volume ${id} is shared (raw): it has no snapshots`);
      const disk = this.diskPath(id);
      // without -U: fails on the lock a running QEMU holds on an attached disk
      await qemuImg(['info', '--output=json', disk], `snapshot of volume ${id}`);
      await mkdir(this.snapshotDir(), { recursive: true, mode: 0o700 });
      const file = this.snapshotFile(sid);
      await rename(disk, file);
      try {
        await qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', file, disk, String(m.sizeBytes)], `snapshot of volume ${id}`);
      } catch (e) {
        await rename(file, disk).catch((x: unknown) => log.error('putting a volume back after a failed snapshot failed', { id, error: String(x) }));
        throw e;
      }
      const s: SnapshotManifest = { id: sid, volumeId: id, sizeBytes: m.sizeBytes, createdAt: new Date().toISOString() };
      await replaceStateFile(path.join(this.snapshotDir(), `${sid}.json`), JSON.stringify(s));
      return { id: sid, volumeId: id, sizeBytes: s.sizeBytes };
    });
  }

  /** Every qcow2 file here (volumes' active layers and snapshots) with what it is backed by. */
  private async chainFiles(): Promise<Array<{ file: string; backing?: string }>> {
    const files: string[] = [];
    for (const n of await readdir(this.root).catch(() => [] as string[])) {
      if (ID.test(n) && existsSync(this.diskPath(n))) files.push(this.diskPath(n));
    }
    for (const n of await readdir(this.snapshotDir()).catch(() => [] as string[])) {
      if (n.endsWith('.qcow2')) files.push(path.join(this.snapshotDir(), n));
    }
    const out: Array<{ file: string; backing?: string }> = [];
    for (const file of files) {
      const b = backingOf(await info(file));
      out.push(b ? { file, backing: path.resolve(path.dirname(file), b) } : { file });
    }
    return out;
  }

  /**
   * Remove a snapshot: every file backed by it (its volume's next layer, clones made from it) is
   * rebased onto the snapshot's own backing file first (their contents unchanged), then it goes.
   * Conflict when one of those is held by a running VM. Idempotent: an unknown id is a no-op.
   */
  async removeSnapshot(sid: string): Promise<void> {
    checkId(sid, 'snapshot');
    return this.locked(async () => {
      const file = this.snapshotFile(sid);
      if (existsSync(file)) {
        const base = backingOf(await info(file));
        const baseAbs = base ? path.resolve(path.dirname(file), base) : undefined;
        for (const f of await this.chainFiles()) {
          if (f.backing !== file) continue;
          await qemuImg(['rebase', '-q', '-f', 'qcow2', ...(baseAbs ? ['-F', 'qcow2', '-b', baseAbs] : ['-b', '']), f.file], `removing snapshot ${sid}`);
        }
      }
      await rm(file, { force: true });
      await rm(path.join(this.snapshotDir(), `${sid}.json`), { force: true });
    });
  }

  /** Delete the volume and its data. Its snapshots stay (they are files of their own). Idempotent. */
  async remove(id: string): Promise<void> {
    checkId(id);
    return this.locked(async () => {
      for (const f of [this.diskPath(id), this.rawPath(id)]) {
        // without -U: a running QEMU's lock means a VM still has it (the control plane detaches first)
        if (existsSync(f)) await qemuImg(['info', '--output=json', f], `removing volume ${id}`);
      }
      await rm(this.dir(id), { recursive: true, force: true });
    });
  }

  /**
   * Agent start, told which volumes and snapshots the store holds here: directories of other
   * volumes are removed (an active layer backs nothing), other snapshots too unless something kept
   * is backed by them; anything made in the last ten minutes stays. Listed ones missing are returned.
   */
  async reconcile(volumes: readonly string[], snapshots: readonly string[]): Promise<{ removed: string[]; missing: string[] }> {
    return this.locked(async () => {
      const keepV = new Set(volumes);
      const keepS = new Set(snapshots);
      const removed: string[] = [];
      const young = (iso: string | undefined) => iso !== undefined && Date.now() - Date.parse(iso) < YOUNG_MS;
      const presentV = new Set<string>();
      for (const n of await readdir(this.root).catch(() => [] as string[])) {
        if (!ID.test(n)) continue;
        const m = await this.manifest(n);
        if (m && keepV.has(n)) {
          presentV.add(n);
          continue;
        }
        if (m && young(m.createdAt)) continue;
        await rm(this.dir(n), { recursive: true, force: true });
        removed.push(n);
      }
      const presentS = new Set<string>();
      const backing = new Set((await this.chainFiles()).map((f) => f.backing).filter((b): b is string => b !== undefined));
      for (const n of await readdir(this.snapshotDir()).catch(() => [] as string[])) {
        if (!n.endsWith('.qcow2')) continue;
        const sid = n.slice(0, -'.qcow2'.length);
        const m = await this.snapshotManifest(sid);
        if (keepS.has(sid) && m) {
          presentS.add(sid);
          continue;
        }
        if ((m && young(m.createdAt)) || backing.has(this.snapshotFile(sid))) continue;
        await rm(this.snapshotFile(sid), { force: true });
        await rm(path.join(this.snapshotDir(), `${sid}.json`), { force: true });
        removed.push(sid);
      }
      return { removed, missing: [...volumes.filter((v) => !presentV.has(v)), ...snapshots.filter((s) => !presentS.has(s))] };
    });
  }
}
