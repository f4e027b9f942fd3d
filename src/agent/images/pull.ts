/**
 * Pull an image into the content store: resolve the reference, pick
 * linux/amd64 from an index, verify every document and blob by digest, and
 * download layers in parallel.
 */
import { createHash } from 'node:crypto';
import { DataLoss, InvalidArgument, NotFound } from '../../core/errors.js';
import type { ContentStore } from '../content/content-store.js';
import { LAYER_TYPES, MANIFEST_ACCEPT, MT, isIndex, type Descriptor, type ImageIndex, type ImageManifest } from './media-types.js';
import { parseReference } from '../../core/image-reference.js';
import { RegistryClient, type RegistryClientOptions } from './registry-client.js';

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface LayerProgress {
  digest: string;
  bytesDone: number;
  bytesTotal: number;
  status: 'waiting' | 'downloading' | 'verifying' | 'done' | 'exists';
}

export interface PullOptions extends RegistryClientOptions {
  store: ContentStore;
  platform?: { os: string; architecture: string };
  concurrency?: number;
  onProgress?: (p: LayerProgress) => void;
  /** Called once the config is known, before any layer is fetched (lets the caller start unpacking early). */
  onConfig?: (config: PulledImage['config'], layers: Descriptor[]) => void;
  /** Called as each layer blob is complete in the content store (in completion order). */
  onLayerReady?: (index: number, layer: Descriptor) => void;
}

export interface PulledImage {
  reference: string;
  indexDigest?: string;
  manifestDigest: string;
  manifest: ImageManifest;
  configDigest: string;
  config: Record<string, unknown> & { rootfs?: { type: string; diff_ids: string[] } };
  layers: Descriptor[];
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function* once(b: Buffer) {
  yield b;
}

export async function pullImage(ref: string, opts: PullOptions): Promise<PulledImage> {
  const parsed = parseReference(ref);
  const client = new RegistryClient(parsed.registry, parsed.repository, opts);
  const want = opts.platform ?? { os: 'linux', architecture: 'amd64' };

  const fetchDoc = async (reference: string, expectDigest?: string) => {
    const m = await client.getManifest(reference, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES);
    const digest = sha256(m.body);
    if (expectDigest && digest !== expectDigest) {
      throw new DataLoss(`manifest ${reference} from ${parsed.registry}: content digest ${digest} does not match ${expectDigest}`);
    }
    if (m.mediaType === MT.dockerSchema1 || m.mediaType === MT.dockerSchema1Signed) {
      throw new InvalidArgument(`${ref}: Docker schema 1 manifests are not supported; push the image again with a current client`);
    }
    let doc: unknown;
    try {
      doc = JSON.parse(m.body.toString('utf8'));
    } catch {
      throw new DataLoss(`manifest ${reference} is not valid JSON`);
    }
    if ((doc as { schemaVersion?: number }).schemaVersion === 1) throw new InvalidArgument(`${ref}: schema 1 manifests are not supported`);
    await opts.store.ingest({ digest, size: m.body.length }, once(m.body));
    return { doc, digest, mediaType: m.mediaType || (doc as { mediaType?: string }).mediaType };
  };

  let top = await fetchDoc(parsed.digest ?? parsed.tag!, parsed.digest);
  let indexDigest: string | undefined;
  if (isIndex(top.mediaType, top.doc)) {
    const index = top.doc as ImageIndex;
    indexDigest = top.digest;
    const match = index.manifests.find((m) => m.platform?.os === want.os && m.platform.architecture === want.architecture);
    if (!match) {
      const avail = index.manifests.map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}` : 'unknown')).join(', ');
      throw new NotFound(`${ref} has no ${want.os}/${want.architecture} image (available: ${avail || 'none'})`);
    }
    top = await fetchDoc(match.digest, match.digest);
  }
  const manifest = top.doc as ImageManifest;
  if (!manifest.config?.digest || !Array.isArray(manifest.layers)) throw new DataLoss(`${ref}: manifest has no config or layers`);
  for (const l of manifest.layers) {
    if (!LAYER_TYPES.has(l.mediaType)) throw new InvalidArgument(`${ref}: unsupported layer media type ${l.mediaType}`);
  }

  const download = async (d: Descriptor, report: boolean) => {
    const progress = (p: Omit<LayerProgress, 'digest' | 'bytesTotal'>) => report && opts.onProgress?.({ digest: d.digest, bytesTotal: d.size, ...p });
    if (await opts.store.info(d.digest)) {
      progress({ bytesDone: d.size, status: 'exists' });
      return;
    }
    progress({ bytesDone: 0, status: 'downloading' });
    const res = await client.getBlob(d.digest);
    if (!res.body) throw new DataLoss(`blob ${d.digest}: empty response`);
    let done = 0;
    let last = 0;
    const body = res.body as unknown as AsyncIterable<Uint8Array>;
    async function* counted() {
      for await (const chunk of body) {
        done += chunk.length;
        if (done - last > 256 * 1024) {
          last = done;
          progress({ bytesDone: done, status: 'downloading' });
        }
        yield chunk;
      }
      progress({ bytesDone: done, status: 'verifying' });
    }
    await opts.store.ingest({ digest: d.digest, size: d.size }, counted());
    progress({ bytesDone: d.size, status: 'done' });
  };

  await download(manifest.config, false);
  const configBuf = await opts.store.readBlob(manifest.config.digest);
  const config = JSON.parse(configBuf.toString('utf8')) as PulledImage['config'];

  opts.onConfig?.(config, manifest.layers);
  for (const l of manifest.layers) opts.onProgress?.({ digest: l.digest, bytesDone: 0, bytesTotal: l.size, status: 'waiting' });
  const queue = manifest.layers.map((layer, index) => ({ layer, index }));
  const workers = Array.from({ length: Math.min(opts.concurrency ?? 4, queue.length) }, async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      await download(next.layer, true);
      opts.onLayerReady?.(next.index, next.layer);
    }
  });
  await Promise.all(workers);

  return {
    reference: parsed.toString(),
    ...(indexDigest ? { indexDigest } : {}),
    manifestDigest: top.digest,
    manifest,
    configDigest: manifest.config.digest,
    config,
    layers: manifest.layers,
  };
}
