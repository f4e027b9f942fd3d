/**
 * Named volumes on this host (docs/volumes.md): each one a sparse ext4 image file of its size,
 * loop-mounted under the agent's home, so what a container writes cannot grow past the size
 * (the filesystem is full: ENOSPC) and takes no host disk until written.
 *
 *   <root>/<id>/volume.json   the agent's own manifest: id and size (what reconcile reads)
 *   <root>/<id>/image.ext4    the sparse image
 *   <root>/<id>/mnt           its mount point; containers get mnt/_data (Docker's layout: the
 *                             filesystem's root holds lost+found, which is none of theirs)
 *
 * The control plane's store says which volumes exist; reconcile() is told that list on start and
 * mounts those present, removes the others (a volume whose create or remove was cut short).
 */
import { mkdir, readFile, readdir, rm, statfs } from 'node:fs/promises';
import path from 'node:path';
import { Conflict, InvalidArgument, NotFound, ResourceExhausted } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { replaceStateFile } from '../../core/state-files.js';
import { isMounted, unmount } from '../snapshots/mount.js';
import { makeExt4Image, mountExt4Image } from '../snapshots/ext4-image.js';
import { statfsProbe } from '../content/disk-space.js';
import { KeyedLock } from '../../core/keyed-lock.js';

const log = logger('agent.volumes');

const MiB = 1024 * 1024;
/** Below this ext4 leaves almost nothing for data (journal and metadata). */
export const MIN_VOLUME_BYTES = 16 * MiB;
/** ext4 with 4 KiB blocks and default features holds 16 TiB. */
export const MAX_VOLUME_BYTES = 16 * 1024 * 1024 * MiB;
const ID = /^[0-9a-f]{12,64}$/;
/** A volume made this recently is never removed by reconcile: its row may be younger than the list reconcile was given. */
const YOUNG_MS = 10 * 60_000;

export interface HostVolume {
  id: string;
  sizeBytes: number;
  /** The directory a container's mount takes (mnt/_data). */
  path: string;
  mounted: boolean;
}

export interface VolumeUsage extends HostVolume {
  usedBytes: number;
}

interface Manifest {
  id: string;
  sizeBytes: number;
  createdAt: string;
}

/** A volume directory's volume.json when it is whole and names this volume (a torn or foreign one is none). */
export async function readVolumeManifest<M extends { id: string; sizeBytes: number }>(dir: string, id: string): Promise<M | undefined> {
  try {
    const m = JSON.parse(await readFile(path.join(dir, 'volume.json'), 'utf8')) as M;
    return m.id === id && Number.isSafeInteger(m.sizeBytes) ? m : undefined;
  } catch {
    return undefined;
  }
}

export function checkVolumeSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < MIN_VOLUME_BYTES || sizeBytes > MAX_VOLUME_BYTES || sizeBytes % MiB !== 0) {
    throw new InvalidArgument(`a volume's size must be a whole number of MiB from ${MIN_VOLUME_BYTES / MiB} MiB to 16 TiB, got ${String(sizeBytes)} bytes`, { sizeBytes });
  }
}

function checkId(id: string): void {
  if (!ID.test(id)) throw new InvalidArgument(`invalid volume id ${JSON.stringify(id.slice(0, 80))}`);
}

export class VolumeStore {
  /** One operation per volume at a time (create, mount, remove). */
  private readonly locks = new KeyedLock();

  constructor(private readonly root: string) {}

  private dir(id: string): string {
    return path.join(this.root, id);
  }
  private image(id: string): string {
    return path.join(this.dir(id), 'image.ext4');
  }
  private mnt(id: string): string {
    return path.join(this.dir(id), 'mnt');
  }
  /** The directory containers mount (inside the mounted filesystem). */
  dataPath(id: string): string {
    return path.join(this.mnt(id), '_data');
  }

  private locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  private manifest(id: string): Promise<Manifest | undefined> {
    return readVolumeManifest<Manifest>(this.dir(id), id);
  }

  /**
   * Make and mount the volume. Idempotent for the same size (a retried create); Conflict when
   * the id exists with another size. Refused (ResourceExhausted) when the host's filesystem
   * has not the room to fill it: the image is sparse, but a volume that cannot hold its size
   * on the day it is made is a promise not kept.
   */
  async create(id: string, sizeBytes: number): Promise<HostVolume> {
    checkId(id);
    checkVolumeSize(sizeBytes);
    return this.locked(id, async () => {
      const had = await this.manifest(id);
      if (had) {
        if (had.sizeBytes !== sizeBytes) throw new Conflict(`volume ${id} exists on this host with another size`, { id });
        return this.mountLocked(id, had);
      }
      await mkdir(this.root, { recursive: true, mode: 0o700 });
      const space = await statfsProbe(this.root);
      if (space.availBytes < sizeBytes) {
        throw new ResourceExhausted(`this host has ${Math.floor(space.availBytes / MiB)} MiB free, not the ${sizeBytes / MiB} MiB the volume needs`, { availBytes: space.availBytes, sizeBytes });
      }
      await rm(this.dir(id), { recursive: true, force: true }); // what a cut-short create left
      await mkdir(this.mnt(id), { recursive: true, mode: 0o700 });
      try {
        await makeExt4Image(this.image(id), sizeBytes, `nimbus-${id.slice(0, 8)}`);
        const m: Manifest = { id, sizeBytes, createdAt: new Date().toISOString() };
        const v = await this.mountLocked(id, m, true);
        // the manifest last: a volume without one is a cut-short create, removed by reconcile
        await replaceStateFile(path.join(this.dir(id), 'volume.json'), JSON.stringify(m));
        return v;
      } catch (e) {
        await this.removeLocked(id).catch((x: unknown) => log.warn('cleaning up a failed volume create failed', { id, error: String(x) }));
        throw e;
      }
    });
  }

  private async mountLocked(id: string, m: Manifest, fresh = false): Promise<HostVolume> {
    const mnt = this.mnt(id);
    if (!(await isMounted(mnt))) {
      await mkdir(mnt, { recursive: true, mode: 0o700 });
      await mountExt4Image(this.image(id), mnt);
    }
    if (fresh) await mkdir(this.dataPath(id), { mode: 0o755 });
    return { id, sizeBytes: m.sizeBytes, path: this.dataPath(id), mounted: true };
  }

  /** The volume as it is here; NotFound when the host has none of that id. */
  async get(id: string): Promise<HostVolume> {
    checkId(id);
    const m = await this.manifest(id);
    if (!m) throw new NotFound(`volume ${id} is not on this host`, { id });
    return { id, sizeBytes: m.sizeBytes, path: this.dataPath(id), mounted: await isMounted(this.mnt(id)) };
  }

  /** Its mount directory for a container, mounting it first if it is not (after a host restart). */
  async ensureMounted(id: string): Promise<HostVolume> {
    checkId(id);
    return this.locked(id, async () => {
      const m = await this.manifest(id);
      if (!m) throw new NotFound(`volume ${id} is not on this host`, { id });
      return this.mountLocked(id, m);
    });
  }

  /** What its files take, from the mounted filesystem. */
  async usage(id: string): Promise<VolumeUsage> {
    const v = await this.get(id);
    if (!v.mounted) return { ...v, usedBytes: 0 };
    const fs = await statfs(this.mnt(id));
    return { ...v, usedBytes: (fs.blocks - fs.bfree) * fs.bsize };
  }

  /** Unmount and delete it (its data is gone). Idempotent: an unknown id is a no-op. */
  async remove(id: string): Promise<void> {
    checkId(id);
    return this.locked(id, () => this.removeLocked(id));
  }

  private async removeLocked(id: string): Promise<void> {
    // loop mounts made by mount(8) are autoclear: the loop device goes with the last unmount
    await unmount(this.mnt(id));
    await rm(this.dir(id), { recursive: true, force: true });
  }

  /** The ids of the volumes this host holds (a manifest written). */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: string[] = [];
    for (const n of names.sort()) if (ID.test(n) && (await this.manifest(n))) out.push(n);
    return out;
  }

  /**
   * Agent start, told what the store holds on this host: those present are mounted, every other
   * directory (a volume removed while the agent was away, a create cut short) is unmounted and
   * deleted, except one made in the last ten minutes (its row may be newer than the list). Volumes the store lists and this host lacks are returned: their data is gone (the
   * control plane says so; it does not make an empty one in its place).
   */
  async reconcile(live: readonly string[]): Promise<{ mounted: number; removed: string[]; missing: string[] }> {
    const keep = new Set(live);
    let names: string[] = [];
    try {
      names = await readdir(this.root);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const removed: string[] = [];
    let mounted = 0;
    const present = new Set<string>();
    for (const n of names) {
      if (!ID.test(n)) continue;
      const m = await this.manifest(n);
      if (m && keep.has(n)) {
        present.add(n);
        try {
          await this.ensureMounted(n);
          mounted++;
        } catch (e) {
          log.error('mounting a volume failed', { id: n, error: String(e) });
        }
        continue;
      }
      // under the volume's lock, looked at again: a create in flight finishes first, and one made
      // moments ago (another control-plane replica's, after the store was read) is kept
      const gone = await this.locked(n, async () => {
        const now = await this.manifest(n);
        if (now && Date.now() - Date.parse(now.createdAt) < YOUNG_MS) return false;
        await this.removeLocked(n);
        return true;
      });
      if (gone) removed.push(n);
    }
    return { mounted, removed, missing: live.filter((id) => !present.has(id)) };
  }

  /** Unmount every volume (agent shutdown); the files stay. */
  async unmountAll(): Promise<void> {
    for (const id of await this.list()) await this.locked(id, () => unmount(this.mnt(id)));
  }
}
