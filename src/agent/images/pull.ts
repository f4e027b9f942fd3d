/**
 * Pull an image into the content store: resolve the reference (tag or digest),
 * pick the wanted platform (linux/amd64 by default) from an index, verify
 * every document and blob by digest, and download layers in parallel.
 *
 * The index (if any), the manifest and the config are stored as blobs too, so
 * the content store alone can describe the image afterwards. A config or layer
 * already in the store is not fetched again when the caller may reuse it
 * (mayReuse: its project holds it); otherwise the registry must send it and it is
 * checked and dropped, so that naming a digest another project pulled is not
 * enough to get its content. Decompression is not done here: layers are stored
 * as sent (gzip, zstd or plain tar), see layerCompression().
 *
 * With a RoomCheck the pull is refused (ResourceExhausted) before the config and the layers
 * are fetched when the disk cannot hold them: the manifest gives compressed sizes only, so the
 * content store needs their sum and the snapshots at least as much again (a lower bound; the
 * unpack checks free space as it writes, see apply-layer.ts).
 */
import type { Writable } from 'node:stream';
import { DataLoss, InvalidArgument, NimbusError, NotFound } from '../../core/errors.js';
import { isDigest, parseReference } from '../../core/image-reference.js';
import type { ContentStore } from '../content/content-store.js';
import type { RoomCheck } from '../content/disk-space.js';
import {
  LAYER_TYPES,
  MANIFEST_ACCEPT,
  MT,
  isIndex,
  isSchema1,
  platformMatches,
  platformString,
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
} from './media-types.js';
import { RegistryClient, type RegistryClientOptions } from './registry-client.js';
import { digestOf } from '../content/content-store.js';

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024;
const MAX_INDEX_DEPTH = 2;
const PROGRESS_STEP = 256 * 1024;

export interface LayerProgress {
  digest: string;
  bytesDone: number;
  bytesTotal: number;
  status: 'waiting' | 'downloading' | 'verifying' | 'done' | 'exists';
}

export interface PullOptions extends RegistryClientOptions {
  store: ContentStore;
  platform?: { os: string; architecture: string; variant?: string };
  /** Layers downloaded at once (default 4). */
  concurrency?: number;
  onProgress?: (p: LayerProgress) => void;
  /**
   * Called once the config is known, before any layer is fetched (lets the caller start unpacking
   * early). When it returns a promise (the unpacking) that rejects, the pull stops its downloads
   * and fails with that error.
   */
  onConfig?: (config: PulledImage['config'], layers: Descriptor[]) => void | Promise<unknown>;
  /** Refuse the pull before its blobs are fetched when the disk cannot hold them. */
  room?: RoomCheck;
  /** Called as each layer blob is complete in the content store (in completion order). */
  onLayerReady?: (index: number, layer: Descriptor) => void;
  /**
   * Called as a layer's download starts: a stream that gets its bytes as they arrive (an unpack
   * overlapping the download), or undefined. The bytes are unverified until onLayerReady(index);
   * a failed download destroys the stream with its error (see RegistryClient.pullBlob).
   */
  onLayerStream?: (index: number, layer: Descriptor) => Writable | undefined;
  /**
   * Whether a config or layer the store holds already may be used without fetching it (the
   * caller's project holds it). Default: never; the registry must then send it (checked, dropped).
   */
  mayReuse?: (digest: string) => boolean;
}

export interface PulledImage {
  /** Fully qualified reference as pulled (registry/repository[:tag][@digest]). */
  reference: string;
  indexDigest?: string;
  manifestDigest: string;
  manifest: ImageManifest;
  configDigest: string;
  config: ImageConfig & { rootfs?: { type: string; diff_ids: string[] } };
  layers: Descriptor[];
}


async function* once(b: Buffer) {
  yield b;
}

/** A descriptor from a manifest or index: a sha256 digest, a size and a media type (adoptImage checks a carried manifest with it too). */
export function checkDescriptor(d: unknown, what: string): asserts d is Descriptor {
  const x = d as Partial<Descriptor> | null;
  if (!x || typeof x !== 'object') throw new DataLoss(`${what}: descriptor is not an object`);
  if (!isDigest(x.digest)) {
    throw new InvalidArgument(`${what}: unsupported or malformed digest ${JSON.stringify(x.digest)} (only sha256 is accepted)`);
  }
  if (typeof x.size !== 'number' || !Number.isSafeInteger(x.size) || x.size < 0) throw new DataLoss(`${what}: descriptor ${x.digest} has no valid size`);
  if (typeof x.mediaType !== 'string') throw new DataLoss(`${what}: descriptor ${x.digest} has no media type`);
}

export async function pullImage(ref: string, opts: PullOptions): Promise<PulledImage> {
  const parsed = parseReference(ref);
  const name = parsed.toString();
  // aborted when the caller's unpacking fails: downloads in flight stop
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const client = new RegistryClient(parsed.registry, parsed.repository, { ...opts, signal });
  const want = opts.platform ?? { os: 'linux', architecture: 'amd64' };
  const store = opts.store;

  /** Fetch a manifest or index, check it, and store it under its digest. */
  const fetchDoc = async (reference: string, expect?: { digest: string; size?: number }) => {
    const m = await client.getManifest(reference, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES);
    const digest = digestOf(m.body);
    if (expect && digest !== expect.digest) {
      throw new DataLoss(`manifest ${parsed.registry}/${parsed.repository}@${expect.digest}: content digest is ${digest}; refusing it`);
    }
    if (expect?.size !== undefined && m.body.length !== expect.size) {
      throw new DataLoss(`manifest ${parsed.registry}/${parsed.repository}@${expect.digest}: ${m.body.length} bytes, the index says ${expect.size}`);
    }
    if (m.mediaType === MT.dockerSchema1 || m.mediaType === MT.dockerSchema1Signed) {
      throw new InvalidArgument(`${name}: Docker schema 1 manifests are not supported; push the image again with a current client`);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(m.body.toString('utf8'));
    } catch {
      throw new DataLoss(`manifest ${parsed.registry}/${parsed.repository} ${reference} is not valid JSON`);
    }
    if (typeof doc !== 'object' || doc === null) throw new DataLoss(`manifest ${parsed.registry}/${parsed.repository} ${reference} is not a JSON object`);
    if (isSchema1(m.mediaType, doc)) {
      throw new InvalidArgument(`${name}: Docker schema 1 manifests are not supported; push the image again with a current client`);
    }
    const mediaType = (doc as { mediaType?: string }).mediaType ?? m.mediaType;
    await store.ingest({ digest, size: m.body.length }, once(m.body));
    return { doc, digest, mediaType };
  };

  let top = await fetchDoc(parsed.digest ?? parsed.tag!, parsed.digest ? { digest: parsed.digest } : undefined);
  let indexDigest: string | undefined;
  for (let depth = 0; isIndex(top.mediaType, top.doc); depth++) {
    if (depth >= MAX_INDEX_DEPTH) throw new InvalidArgument(`${name}: image indexes nested too deep`);
    const index = top.doc as ImageIndex;
    if (!Array.isArray(index.manifests)) throw new DataLoss(`${name}: index ${top.digest} has no manifests list`);
    indexDigest ??= top.digest;
    const match = index.manifests.find((m) => platformMatches(m.platform, want));
    if (!match) {
      const avail = index.manifests.map((m) => platformString(m.platform)).join(', ');
      throw new NotFound(`${name} has no ${platformString(want)} image (available: ${avail || 'none'})`);
    }
    checkDescriptor(match, `${name}: index ${top.digest}`);
    top = await fetchDoc(match.digest, { digest: match.digest, size: match.size });
  }

  const manifest = top.doc as ImageManifest;
  if (!manifest.config || !Array.isArray(manifest.layers)) throw new DataLoss(`${name}: manifest ${top.digest} has no config or layers`);
  checkDescriptor(manifest.config, `${name}: config`);
  manifest.layers.forEach((l, i) => checkDescriptor(l, `${name}: layer ${i}`));
  for (const l of manifest.layers) {
    if (!LAYER_TYPES.has(l.mediaType)) throw new InvalidArgument(`${name}: unsupported layer media type ${l.mediaType} (layer ${l.digest})`);
  }
  if (manifest.config.size > MAX_CONFIG_BYTES) throw new InvalidArgument(`${name}: config is ${manifest.config.size} bytes; the limit is ${MAX_CONFIG_BYTES}`);

  if (opts.room) {
    const need = { content: 0, snapshots: 0 };
    const seen = new Set<string>();
    for (const d of [manifest.config, ...manifest.layers]) {
      if (seen.has(d.digest) || (await store.info(d.digest))) continue;
      seen.add(d.digest);
      need.content += d.size;
      if (d !== manifest.config) need.snapshots += d.size;
    }
    await opts.room.ensureRoom(need, `pulling ${name}`);
  }

  const mayReuse = opts.mayReuse ?? (() => false);
  // Config: small, needed first (its diff_ids let the caller plan unpacking).
  if (!(await store.info(manifest.config.digest))) await client.pullBlob(manifest.config, store);
  else if (!mayReuse(manifest.config.digest)) await client.verifyBlob(manifest.config);
  let config: PulledImage['config'];
  try {
    config = JSON.parse((await store.readBlob(manifest.config.digest)).toString('utf8')) as PulledImage['config'];
  } catch (e) {
    if (e instanceof NimbusError) throw e;
    throw new DataLoss(`${name}: config ${manifest.config.digest} is not valid JSON`);
  }
  if (typeof config !== 'object' || config === null) throw new DataLoss(`${name}: config ${manifest.config.digest} is not a JSON object`);
  const diffIds = config.rootfs?.diff_ids;
  if (Array.isArray(diffIds) && diffIds.length !== manifest.layers.length) {
    throw new DataLoss(`${name}: config lists ${diffIds.length} layer diff_ids but the manifest has ${manifest.layers.length} layers`);
  }

  let failure: { error: unknown } | undefined;
  const unpacking = opts.onConfig?.(config, manifest.layers);
  if (unpacking instanceof Promise) {
    unpacking.catch((e: unknown) => {
      failure ??= { error: e };
      stop.abort(e);
    });
  }
  for (const l of manifest.layers) opts.onProgress?.({ digest: l.digest, bytesDone: 0, bytesTotal: l.size, status: 'waiting' });

  const download = async (d: Descriptor, index: number) => {
    const progress = (bytesDone: number, status: LayerProgress['status']) =>
      opts.onProgress?.({ digest: d.digest, bytesTotal: d.size, bytesDone, status });
    let last = 0;
    const onBytes = (done: number, finished: boolean) => {
      if (finished) progress(done, 'verifying');
      else if (done - last >= PROGRESS_STEP) {
        last = done;
        progress(done, 'downloading');
      }
    };
    if (await store.info(d.digest)) {
      // on this host already, but not the caller's to take: the registry must show it holds it
      if (!mayReuse(d.digest)) await client.verifyBlob(d, onBytes);
      progress(d.size, 'exists');
      return;
    }
    progress(0, 'downloading');
    const tee = failure ? undefined : opts.onLayerStream?.(index, d);
    await client.pullBlob(d, store, onBytes, tee);
    progress(d.size, 'done');
  };

  // Workers take layers in order; the first failure stops new downloads, and
  // pullImage settles only after every download in flight has finished.
  const queue = manifest.layers.map((layer, index) => ({ layer, index }));
  const worker = async () => {
    for (let next = queue.shift(); next && !failure; next = queue.shift()) {
      try {
        await download(next.layer, next.index);
        if (!failure) opts.onLayerReady?.(next.index, next.layer);
      } catch (e) {
        failure ??= { error: e };
      }
    }
  };
  const concurrency = Math.max(1, Math.min(opts.concurrency ?? 4, queue.length));
  await Promise.all(Array.from({ length: concurrency }, worker));
  if (failure) throw failure.error;

  return {
    reference: name,
    ...(indexDigest ? { indexDigest } : {}),
    manifestDigest: top.digest,
    manifest,
    configDigest: manifest.config.digest,
    config,
    layers: manifest.layers,
  };
}
