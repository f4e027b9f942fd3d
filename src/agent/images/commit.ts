/**
 * `docker commit` on a host: a container's writable layer (its overlayfs upper directory) as one
 * more image layer over its image's, and the image's config and manifest written into the content
 * store beside it. The layer is the tar a cold move carries (move/tree-tar.ts exportTree, kind
 * 'overlay': whiteouts, char devices 0/0, become `.wh.NAME`, an opaque directory
 * (trusted.overlay.opaque=y) gets `.wh..wh..opq`), gzip-compressed; the caller then adopts the
 * manifest as any image arriving on a host is (unpacked with the hardened unpacker).
 */
import { createWriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { DataLoss, InvalidArgument } from '../../core/errors.js';
import { digestPass } from '../../core/stream-digest.js';
import type { CommitRequest } from '../agent.js';
import type { ContentStore } from '../content/content-store.js';
import { MT, type Descriptor, type ImageConfig, type ImageManifest } from './media-types.js';
import { digestOf, fileBytes } from '../content/content-store.js';

export interface LayerBlob {
  /** Where the compressed layer was written. */
  file: string;
  /** Of the compressed bytes. */
  digest: string;
  size: number;
  /** Of the uncompressed tar (the config's diff_id). */
  diffId: string;
}

/** The tar stream gzip-compressed into file, with both digests. */
export async function writeLayerBlob(tar: Readable, file: string): Promise<LayerBlob> {
  // both digests on the digest thread: a committed layer can be gigabytes
  const raw = digestPass();
  const packed = digestPass();
  await pipeline(tar, raw, createGzip({ level: 6 }), packed, createWriteStream(file, { mode: 0o600 }));
  return { file, digest: await packed.digest(), size: packed.bytes(), diffId: await raw.digest() };
}

async function* once(b: Buffer) {
  yield b;
}


/** The image's config with the new layer: req's runtime config, author, created, a history entry, the diff_id appended. */
export function committedConfig(parent: ImageConfig, diffId: string, req: CommitRequest, now: Date): Record<string, unknown> {
  const created = now.toISOString();
  const rootfs = parent.rootfs as { type?: string; diff_ids?: string[] } | undefined;
  const history = Array.isArray(parent.history) ? [...(parent.history as unknown[])] : [];
  history.push({
    created,
    ...(req.author ? { author: req.author } : {}),
    ...(req.createdBy ? { created_by: req.createdBy } : {}),
    ...(req.comment ? { comment: req.comment } : {}),
  });
  const out: Record<string, unknown> = {
    ...parent,
    created,
    config: req.config,
    rootfs: { type: 'layers', diff_ids: [...(rootfs?.diff_ids ?? []), diffId] },
    history,
  };
  if (req.author) out.author = req.author;
  else delete out.author;
  // dockerd keeps the message beside the history entry too (image inspect's Comment)
  if (req.comment) out.comment = req.comment;
  else delete out.comment;
  // the builder's record of a container config the parent was made in is not this image's
  delete out.container_config;
  delete out.container;
  return out;
}

/**
 * The layer blob, a config and a manifest into the store (the parent's manifest and config are
 * read from it); returns the new manifest's digest. The manifest keeps the parent's family: a
 * Docker schema 2 parent gives a Docker manifest, anything else an OCI one.
 */
export async function storeCommittedImage(content: ContentStore, parentManifest: ImageManifest, parentConfig: ImageConfig, layer: LayerBlob, req: CommitRequest, now = new Date()): Promise<{ manifestDigest: string; configDigest: string }> {
  if (!parentManifest.config || !Array.isArray(parentManifest.layers)) throw new DataLoss(`image ${req.parentManifest}: the manifest has no config or layers`);
  const rootfs = parentConfig.rootfs as { diff_ids?: unknown } | undefined;
  if (Array.isArray(rootfs?.diff_ids) && rootfs.diff_ids.length !== parentManifest.layers.length) {
    throw new DataLoss(`image ${req.parentManifest}: its config lists ${rootfs.diff_ids.length} layers, its manifest ${parentManifest.layers.length}`);
  }
  const docker = parentManifest.mediaType === MT.dockerManifest;
  const stored = await content.ingest({ digest: layer.digest, size: layer.size }, fileBytes(layer.file));
  if (stored.size !== layer.size) throw new DataLoss(`the committed layer is ${stored.size} bytes, ${layer.size} were written`);
  const configBody = Buffer.from(JSON.stringify(committedConfig(parentConfig, layer.diffId, req, now)));
  const configDigest = digestOf(configBody);
  await content.ingest({ digest: configDigest, size: configBody.length }, once(configBody));
  const newLayer: Descriptor = { mediaType: docker ? MT.dockerLayerGzip : MT.ociLayerGzip, digest: layer.digest, size: layer.size };
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: docker ? MT.dockerManifest : MT.ociManifest,
    config: { mediaType: docker ? MT.dockerConfig : MT.ociConfig, digest: configDigest, size: configBody.length },
    layers: [...parentManifest.layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })), newLayer],
  };
  const body = Buffer.from(JSON.stringify(manifest));
  const manifestDigest = digestOf(body);
  await content.ingest({ digest: manifestDigest, size: body.length }, once(body));
  return { manifestDigest, configDigest };
}

/** What a control plane sends is checked again here: a config that is not an object is refused. */
export function checkCommitRequest(req: CommitRequest): void {
  if (!/^sha256:[0-9a-f]{64}$/.test(req.parentManifest)) throw new InvalidArgument(`commit: parent manifest ${JSON.stringify(req.parentManifest)} is not a sha256 digest`);
  if (!req.config || typeof req.config !== 'object' || Array.isArray(req.config)) throw new InvalidArgument('commit: the image config is not an object');
}
