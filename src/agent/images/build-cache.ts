/**
 * The layer cache of image builds (buildah's own `--layers` cache, docs/builds.md "The build cache"):
 * buildah storage kept between builds, one per project and per set of FROM images (and network
 * mode), under HOME/build-cache/<project>/<key>. A project's builds reuse the steps its own earlier
 * builds ran; no store is ever shared between projects, even for identical steps (a RUN step's
 * result is what the process that ran it wrote, and a hit would tell one tenant what another built).
 *
 * Keyed by the FROM images (name and manifest digest, in order) because buildah resolves FROM by
 * name in its store: builds that share a store agree on what every name means, so they may run at
 * once; a build whose bases differ gets a store of its own.
 *
 * Bounded: at most MAX_STORES_PER_PROJECT stores per project (the least recently used idle one goes),
 * a store that has produced MAX_RESULTS_PER_STORE images is started afresh, a store unused for
 * MAX_IDLE_MS goes. A store goes with the images it built: at garbage collection (image removal,
 * prune; a project can only be removed once its images are), a store none of whose results is
 * kept by any project any more is removed. A store a build was using when its agent died, or
 * whose build was killed, is removed rather than trusted.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { logger } from '../../core/log.js';

const log = logger('build-cache');

export const MAX_STORES_PER_PROJECT = 4;
export const MAX_RESULTS_PER_STORE = 64;
export const MAX_IDLE_MS = 7 * 24 * 3600_000;
const IN_USE = 'in-use';
const META = 'meta.json';
const BASES_READY = 'bases-ready';

export interface CacheKey {
  projectId: string;
  storageDriver: string;
  network: 'host' | 'none';
  bases: { name: string; manifestDigest: string }[];
}

interface Meta {
  /** Manifest digests of the images builds in this store produced. */
  results: string[];
  /** buildah's image id → the manifest digest it was imported as (a fully cached build's result is one of them). */
  byImage: Record<string, string>;
  usedAt: number;
}

/** One build's use of a store: where buildah's roots are; release() when the build has ended. */
export interface CacheLease {
  storage: string;
  runroot: string;
  /** The FROM images are in the store under their names already (an earlier build put them there). */
  basesReady: boolean;
  /** Say the FROM images are in the store: later builds skip handing them over. */
  markBasesReady(): Promise<void>;
  /** The manifest digest an earlier build of this store imported buildah's image `imageId` as. */
  importedAs(imageId: string): Promise<string | undefined>;
  release(outcome: { result?: { imageId: string; manifestDigest: string }; dirty?: boolean }): Promise<void>;
}

export class BuildCache {
  private readonly refs = new Map<string, number>();
  /** Stores whose current use ended badly: removed when their last user leaves. */
  private readonly doomed = new Set<string>();
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly root: string) {}

  /** The store for this key, made if absent; held until release. */
  acquire(k: CacheKey): Promise<CacheLease> {
    const key = createHash('sha256')
      .update(JSON.stringify([k.storageDriver, k.network, k.bases.map((b) => [b.name, b.manifestDigest])]))
      .digest('hex').slice(0, 24);
    const dir = join(this.root, k.projectId, key);
    return this.locked(dir, async () => {
      await this.evict(k.projectId, dir);
      await mkdir(join(dir, 'storage'), { recursive: true, mode: 0o700 });
      await mkdir(join(dir, 'run'), { recursive: true, mode: 0o700 });
      // the marker says a build was using the store: an agent that dies mid-build leaves it, and the sweep removes the store
      await writeFile(join(dir, IN_USE), '');
      this.refs.set(dir, (this.refs.get(dir) ?? 0) + 1);
      let released = false;
      return {
        storage: join(dir, 'storage'),
        runroot: join(dir, 'run'),
        basesReady: await stat(join(dir, BASES_READY)).then(() => true, () => false),
        markBasesReady: () => writeFile(join(dir, BASES_READY), ''),
        importedAs: async (imageId) => (await readMeta(dir)).byImage[imageId],
        release: (outcome) => {
          if (released) return Promise.resolve();
          released = true;
          return this.locked(dir, () => this.release(dir, outcome));
        },
      };
    });
  }

  private async release(dir: string, outcome: { result?: { imageId: string; manifestDigest: string }; dirty?: boolean }): Promise<void> {
    const left = (this.refs.get(dir) ?? 1) - 1;
    if (left > 0) this.refs.set(dir, left);
    else this.refs.delete(dir);
    if (outcome.dirty) this.doomed.add(dir);
    const meta = await readMeta(dir);
    if (outcome.result) {
      if (!meta.results.includes(outcome.result.manifestDigest)) meta.results.push(outcome.result.manifestDigest);
      meta.byImage[outcome.result.imageId] = outcome.result.manifestDigest;
    }
    meta.usedAt = Date.now();
    if (meta.results.length > MAX_RESULTS_PER_STORE) this.doomed.add(dir);
    if (left > 0) return writeMeta(dir, meta);
    if (this.doomed.has(dir)) return this.remove(dir, 'a build in it was killed, or it reached its size bound');
    await writeMeta(dir, meta);
    // idle: nothing of a build stays mounted (containers/storage mounts again on next use)
    await unmountUnder(dir);
    await rm(join(dir, IN_USE), { force: true });
  }

  /** Idle stores beyond the project's bound, least recently used first, so `keep` has room. */
  private async evict(projectId: string, keep: string): Promise<void> {
    const stores = await this.storesOf(projectId);
    if (stores.includes(keep) || stores.length < MAX_STORES_PER_PROJECT) return;
    const idle: { dir: string; usedAt: number }[] = [];
    for (const dir of stores) if (!this.refs.get(dir)) idle.push({ dir, usedAt: (await readMeta(dir)).usedAt });
    idle.sort((a, b) => a.usedAt - b.usedAt);
    for (const s of idle.slice(0, stores.length - MAX_STORES_PER_PROJECT + 1)) await this.remove(s.dir, 'the project has too many build cache stores');
  }

  /**
   * Garbage collection's turn (`keep`: the manifest digests some project still has): an idle store
   * none of whose results is kept goes, and so does one unused for MAX_IDLE_MS.
   */
  async collect(keep: ReadonlySet<string>): Promise<number> {
    let removed = 0;
    const now = Date.now();
    for (const project of await readdir(this.root).catch(() => [] as string[])) {
      for (const dir of await this.storesOf(project)) {
        await this.locked(dir, async () => {
          if (this.refs.get(dir)) return;
          // a result the control plane has not recorded yet is not in `keep`: its store may go (only a cold next build lost)
          const meta = await readMeta(dir);
          const stale = now - meta.usedAt > MAX_IDLE_MS;
          if (!stale && meta.results.some((r) => keep.has(r))) return;
          await this.remove(dir, stale ? 'unused for too long' : 'no image it built is kept');
          removed++;
        });
      }
      await rmdir(join(this.root, project)).catch(() => undefined);
    }
    return removed;
  }

  /** At the agent's start: stores a build was using when an earlier process died are removed, mounts under the rest undone. */
  async sweep(): Promise<void> {
    for (const project of await readdir(this.root).catch(() => [] as string[])) {
      for (const dir of await this.storesOf(project)) {
        if (this.refs.get(dir)) continue;
        const busy = await stat(join(dir, IN_USE)).then(() => true, () => false);
        if (busy || Date.now() - (await readMeta(dir)).usedAt > MAX_IDLE_MS) await this.remove(dir, busy ? 'a build was using it when its agent stopped' : 'unused for too long');
        else await unmountUnder(dir);
      }
      await rmdir(join(this.root, project)).catch(() => undefined);
    }
  }

  private async storesOf(projectId: string): Promise<string[]> {
    const names = await readdir(join(this.root, projectId)).catch(() => [] as string[]);
    return names.filter((n) => /^[0-9a-f]{24}$/.test(n)).map((n) => join(this.root, projectId, n));
  }

  private async remove(dir: string, why: string): Promise<void> {
    log.info('removing a build cache store', { dir, why });
    this.doomed.delete(dir);
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
    await rmdir(join(dir, '..')).catch(() => undefined);
  }

  /** One change at a time per store (acquire, release, removal). */
  private locked<T>(dir: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(dir) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.locks.set(dir, tail);
    void tail.then(() => {
      if (this.locks.get(dir) === tail) this.locks.delete(dir);
    });
    return next;
  }
}

async function readMeta(dir: string): Promise<Meta> {
  try {
    const m = JSON.parse(await readFile(join(dir, META), 'utf8')) as Partial<Meta>;
    const byImage: Record<string, string> = {};
    if (m.byImage && typeof m.byImage === 'object') for (const [k, v] of Object.entries(m.byImage)) if (typeof v === 'string') byImage[k] = v;
    return {
      results: Array.isArray(m.results) ? m.results.filter((r): r is string => typeof r === 'string') : [],
      byImage,
      usedAt: typeof m.usedAt === 'number' ? m.usedAt : 0,
    };
  } catch {
    return { results: [], byImage: {}, usedAt: 0 };
  }
}

async function writeMeta(dir: string, meta: Meta): Promise<void> {
  await writeFile(join(dir, `${META}.tmp`), JSON.stringify(meta));
  await rename(join(dir, `${META}.tmp`), join(dir, META));
}

/** Mount points under dir (deepest first) unmounted, lazily: a build's storage never stays mounted. */
export async function unmountUnder(dir: string): Promise<void> {
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const points = text.split('\n').map((l) => l.split(' ')[4]).filter((p): p is string => p !== undefined)
    .map((p) => p.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length);
  for (const p of points) {
    await new Promise<void>((resolve) => {
      const c = spawn('umount', ['-l', p], { stdio: 'ignore' });
      c.once('error', () => resolve());
      c.once('close', () => resolve());
    });
  }
}
