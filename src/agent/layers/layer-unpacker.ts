/**
 * Layers into committed snapshots named by their chain ids, for pulls, imports and adopts.
 *
 * A pull unpacks while it downloads (PullUnpack): on a snapshotter whose layers do not depend on
 * their parent's content (overlayfs: a layer is its own upper directory), every layer is unpacked
 * at once into its own parentless snapshot, from the bytes as they arrive (pullBlob's tee), and
 * the snapshots are committed in order, each on top of the one before. A layer is committed only
 * once its blob is verified and committed in the content store (onLayerReady) and its content is
 * its diff id; anything else removes its snapshot. On a snapshotter that copies its parent
 * (native), layers are unpacked one after another from the content store, as before.
 */
import { PassThrough, type Readable } from 'node:stream';
import { DataLoss, InvalidArgument, hasCode } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { ContentStore } from '../content/content-store.js';
import type { UnpackRoom } from '../content/disk-space.js';
import type { MountSpec, Snapshotter } from '../snapshots/snapshotter.js';
import { applyLayer } from './apply-layer.js';
import { diffIdOf } from './layer-compression.js';
import type { ImageBudget } from './unpack-limits.js';

const log = logger('agent.layers.unpack');

/** Bytes a download may run ahead of its layer's unpack before it waits. */
const TEE_BUFFER_BYTES = 2 * 1024 ** 2;
/**
 * Layers of one pull unpacked from their download at once; the others download into the content
 * store and are unpacked from there (in parallel). Measured on 2 CPUs: four streamed layers cost
 * 30-50 % more CPU than one (downloads and unpacks pausing each other through backpressure).
 */
const MAX_STREAMED = 1;

export interface LayerBlob {
  digest: string;
  mediaType: string;
  size: number;
}

export interface LayerUnpackerOptions {
  content: ContentStore;
  snapshotter: Snapshotter;
  /** Per-layer bound on unpacked file bytes (NIMBUS_LAYER_MAX_BYTES). */
  layerMaxBytes?: number;
  room: () => UnpackRoom;
}

/** Where one layer's bytes come from when it is not read from the content store. */
interface Streamed {
  /** The bytes as they download: unverified. */
  stream?: Readable;
  /** Settles once the blob is verified in the content store (rejects when the pull failed). */
  ready: Promise<void>;
  /** Settles once the parent's snapshot is committed: the layer may be committed on it. */
  parentCommitted: Promise<void>;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((a, b) => ((resolve = a), (reject = b)));
  promise.catch(() => undefined); // awaited by someone else, or nobody once the pull failed
  return { promise, resolve, reject };
}

export function upperDir(mounts: MountSpec[]): string {
  const m = mounts[0];
  if (!m) throw new InvalidArgument('snapshotter returned no mounts');
  if (m.type === 'overlay') {
    const upper = m.options.find((o) => o.startsWith('upperdir='));
    if (!upper) throw new InvalidArgument('overlay mount without upperdir');
    return upper.slice('upperdir='.length);
  }
  return m.source;
}

export class LayerUnpacker {
  /** Serialises unpacking of one chain id so concurrent pulls share the work. */
  private readonly chainLocks = new Map<string, Promise<void>>();
  /** Layer blobs whose diff id was computed here (a fact of their content): blob digest → diff id. */
  private readonly diffIds = new Map<string, string>();

  constructor(private readonly opts: LayerUnpackerOptions) {}

  /** Layers of one pull can be unpacked at once, each from its download. */
  get parallel(): boolean {
    return this.opts.snapshotter.parentIndependent;
  }

  /** Another unpack holds this chain id now. */
  busy(chainId: string): boolean {
    return this.chainLocks.has(chainId);
  }

  async exists(key: string): Promise<boolean> {
    try {
      await this.opts.snapshotter.stat(key);
      return true;
    } catch (e) {
      if (hasCode(e, 'NotFound')) return false;
      throw e;
    }
  }

  /**
   * Unpack `layer` into the committed snapshot `chainId` on `parent` (nothing when it exists).
   * Without `streamed` the parent is committed and the blob is in the content store; with it the
   * layer is unpacked apart (parentIndependent only) and committed on `parent` once both are there.
   */
  async unpackLayer(layer: LayerBlob, diffId: string, chainId: string, parent: string | undefined, budget: ImageBudget, streamed?: Streamed): Promise<void> {
    const prev = this.chainLocks.get(chainId);
    if (prev) await prev.catch(() => undefined);
    const work = this.unpackLocked(layer, diffId, chainId, parent, budget, streamed);
    this.chainLocks.set(chainId, work);
    try {
      await work;
    } finally {
      if (this.chainLocks.get(chainId) === work) this.chainLocks.delete(chainId);
    }
  }

  private async unpackLocked(layer: LayerBlob, diffId: string, chainId: string, parent: string | undefined, budget: ImageBudget, streamed?: Streamed): Promise<void> {
    const sn = this.opts.snapshotter;
    if (await this.exists(chainId)) {
      streamed?.stream?.destroy(); // the download goes on into the content store alone
      // The snapshot is there already, but this blob must still be the layer the config names:
      // otherwise a config naming the diff ids of another project's image would get its files.
      if (this.diffIds.get(layer.digest) !== diffId) {
        await streamed?.ready;
        const actual = await diffIdOf(this.opts.content.openRead(layer.digest), layer.mediaType).catch((e: unknown) => {
          throw new DataLoss(`layer ${layer.digest} is not a valid ${layer.mediaType} blob: ${(e as Error).message}`, undefined, { cause: e });
        });
        this.diffIds.set(layer.digest, actual);
        if (actual !== diffId) throw new DataLoss(`layer ${layer.digest}: uncompressed digest ${actual} does not match the config's diff id ${diffId}`);
      }
      return;
    }
    if (streamed && !sn.parentIndependent) throw new InvalidArgument(`the ${sn.name} snapshotter cannot unpack layers apart`);
    const key = `extract-${newId().slice(0, 16)}-${chainId}`;
    const mounts = await sn.prepare(key, streamed ? undefined : parent);
    try {
      let source = streamed?.stream;
      if (!source) {
        await streamed?.ready;
        source = this.opts.content.openRead(layer.digest);
      }
      const applied = await applyLayer(upperDir(mounts), source, {
        mediaType: layer.mediaType,
        mode: sn.parentIndependent ? 'overlay' : 'native',
        digest: layer.digest,
        ...(this.opts.layerMaxBytes ? { limits: { maxUnpackedBytes: this.opts.layerMaxBytes } } : {}),
        imageBudget: budget,
        room: this.opts.room(),
      });
      log.debug('layer applied', { chainId, entries: applied.entries });
      if (applied.diffId !== diffId) {
        throw new DataLoss(`layer ${layer.digest}: uncompressed digest ${applied.diffId} does not match the config's diff id ${diffId}`);
      }
      if (streamed) {
        // the bytes just unpacked are the blob only once the content store verified its digest
        await streamed.ready;
        this.diffIds.set(layer.digest, diffId);
        await streamed.parentCommitted;
        await sn.commit(chainId, key, parent !== undefined ? { parent } : {});
      } else {
        this.diffIds.set(layer.digest, diffId); // read from the content store: the blob itself
        await sn.commit(chainId, key);
      }
      log.debug('layer committed', { chainId });
    } catch (e) {
      streamed?.stream?.destroy();
      await sn.remove(key).catch(() => undefined);
      if (hasCode(e, 'AlreadyExists')) return;
      throw e;
    }
  }

  /** The hooks a pull drives its image's unpacking with (PullUnpack). */
  forPull(budget: ImageBudget): PullUnpack {
    return new PullUnpack(this, budget);
  }
}

/**
 * One pull's unpacking: start() once the config is known, stream(i) as layer i's download starts,
 * ready(i) once its blob is verified in the content store, abort() when the pull failed.
 */
export class PullUnpack {
  private sources: Deferred<Readable | undefined>[] = [];
  private readies: Deferred<void>[] = [];
  private chains: string[] = [];
  /** Layers being unpacked from their download now. */
  private streaming = 0;
  private work: Promise<unknown> | undefined;

  constructor(
    private readonly unpacker: LayerUnpacker,
    private readonly budget: ImageBudget,
  ) {}

  /** Begin; the promise (also kept for settled()) rejects with the first layer's failure. */
  start(diffIds: readonly string[], chains: readonly string[], layers: readonly LayerBlob[]): Promise<unknown> {
    this.chains = [...chains];
    this.sources = layers.map(() => deferred<Readable | undefined>());
    this.readies = layers.map(() => deferred<void>());
    const committed = layers.map(() => deferred<void>());
    const one = async (i: number) => {
      try {
        const parent = i > 0 ? chains[i - 1] : undefined;
        if (this.unpacker.parallel) {
          const stream = await this.sources[i]!.promise;
          await this.unpacker.unpackLayer(layers[i]!, diffIds[i]!, chains[i]!, parent, this.budget, {
            ...(stream ? { stream } : {}),
            ready: this.readies[i]!.promise,
            parentCommitted: i > 0 ? committed[i - 1]!.promise : Promise.resolve(),
          });
        } else {
          await this.readies[i]!.promise;
          if (i > 0) await committed[i - 1]!.promise;
          await this.unpacker.unpackLayer(layers[i]!, diffIds[i]!, chains[i]!, parent, this.budget);
        }
        committed[i]!.resolve();
      } catch (e) {
        committed[i]!.reject(e);
        throw e;
      }
    };
    const all = layers.map((_, i) => one(i));
    this.work = Promise.allSettled(all);
    const first = Promise.all(all);
    first.catch(() => undefined); // the pull awaits it; settled() reports nothing twice
    return first;
  }

  /** Where layer i's bytes also go while it downloads; undefined: it is unpacked from the store. */
  stream(index: number): PassThrough | undefined {
    const source = this.sources[index];
    if (!source || !this.unpacker.parallel || this.unpacker.busy(this.chains[index]!) || this.streaming >= MAX_STREAMED) return undefined;
    this.streaming++;
    const tee = new PassThrough({ highWaterMark: TEE_BUFFER_BYTES });
    // a failed download destroys the tee with its error, maybe before the unpack reads it: the
    // unpack sees the error from the stream's state, and the process must not see it as unhandled
    tee.on('error', () => undefined);
    tee.once('close', () => this.streaming--);
    source.resolve(tee);
    return tee;
  }

  /** Layer i's blob is verified in the content store. */
  ready(index: number): void {
    this.sources[index]?.resolve(undefined); // no stream offered: read it from the store
    this.readies[index]?.resolve();
  }

  /** The pull failed: nothing more arrives; unpacks in flight fail and remove their snapshots. */
  abort(error: unknown): void {
    for (const d of [...this.sources, ...this.readies]) d.reject(error);
  }

  /** Every layer's unpack has finished (committed, removed or failed). */
  async settled(): Promise<void> {
    await this.work;
  }
}
