/**
 * A fresh daemon's first pull cost more than a later one (issue 18: 182 against 76 ms for the
 * test image; 121–126 against 87–108 once the unpack below was warmed), and not because of the
 * daemon's own start: a pull begun 3 s after it answered cost the same. A fresh daemon that first
 * pulled an unrelated small image then pulled the test image as fast as a later pull (bench log,
 * 2026-12-05): what a first pull pays is one-off, V8 compiling the pull path's code on its first
 * run (the registry client, the pull, the content store, the unpack, the snapshots), the probes
 * for perl and zstd (a process each) and the small-file writer threads. The agent pays it once as
 * it starts, in the background: a real pull of a small image (two layers, 0.5 MiB) that a
 * loopback server of its own serves, into a scratch image host (its own content store and
 * snapshots) under the daemon's tmp dir, removed after (and swept at the next start if the daemon died in between). Nothing of it
 * reaches the host's images, the store or the events.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { logger } from '../../core/log.js';
import { StreamDigest } from '../../core/stream-digest.js';
import { probeLayerTools } from '../layers/apply-layer.js';
import { warmFileWriters } from '../layers/file-writer.js';
import { MT } from './media-types.js';
import { digestOf } from '../content/content-store.js';

const log = logger('agent.images.warmup');
const SCRATCH_PREFIX = '.pull-warmup-';
const REPOSITORY = 'nimbus/pull-warm-up';
const TAG = 'latest';

/** What the warm-up pulls with: an image host on the scratch directory it is given. */
export type ScratchPuller = (scratchDir: string) => { pull(reference: string): Promise<unknown>; close(): Promise<void> };

export interface WarmupStep {
  step: string;
  ok: boolean;
  ms: number;
  error?: string;
}


/** A tar entry: its header and, for a file, its body. */
type Entry = [Partial<tar.Header> & { name: string }, (string | Buffer)?];

/** A layer's tar from its entries (a body: file; none: as the header says). */
async function layerTar(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const [h, body] of entries) {
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body === undefined) pack.entry(h, cb);
      else pack.entry(h, body, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/**
 * The layers of an image shaped as small real ones are: a gzip one with a program (so the body,
 * its digest, zlib, the tar parser and the unpack's large-file path run through many chunks, as a
 * real image's do: a one-file sample left a fresh daemon's first pull of the test image ~10 ms
 * slower) and links to it, then an uncompressed one with a whiteout and an opaque directory.
 * Deflate at level 0 (stored blocks): the same code runs on the pull's side, without compressing
 * at each start. Sized to end by the time the daemon is ready (~0.45 s after its start here): a
 * 1.5 MiB program and 300 links warmed more but ran into a first pull made at once, and slowed it.
 */
async function sampleLayers(): Promise<Array<{ tar: Buffer; gzip: boolean }>> {
  const program = Buffer.alloc(512 * 1024);
  for (let i = 0, x = 2463534242; i < program.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    program[i] = x & 0xff;
  }
  const first = await layerTar([
    [{ name: 'bin/', type: 'directory', mode: 0o755 }],
    [{ name: 'bin/program', mode: 0o755 }, program],
    ...Array.from({ length: 100 }, (_, i): Entry => [{ name: `bin/applet${i}`, type: 'symlink', linkname: 'program' }]),
    [{ name: 'etc/', type: 'directory', mode: 0o755 }],
    ...Array.from({ length: 8 }, (_, i): Entry => [{ name: `etc/file${i}`, mode: 0o644 }, `warm-up ${i}\n`]),
    [{ name: 'etc/hard', type: 'link', linkname: 'etc/file1' }],
    [{ name: 'data/', type: 'directory', mode: 0o755 }],
    [{ name: 'data/old', mode: 0o644 }, 'replaced\n'],
  ]);
  const second = await layerTar([
    [{ name: 'etc/.wh.file7', mode: 0o644 }, ''],
    [{ name: 'data/', type: 'directory', mode: 0o755 }],
    [{ name: 'data/.wh..wh..opq', mode: 0o644 }, ''],
    [{ name: 'data/new', mode: 0o644 }, 'new\n'],
  ]);
  return [{ tar: first, gzip: true }, { tar: second, gzip: false }];
}

interface Served {
  mediaType: string;
  body: Buffer;
  digest: string;
}

const served = (mediaType: string, body: Buffer): Served => ({ mediaType, body, digest: digestOf(body) });

/** The documents (by tag and by digest) and blobs of the sample image behind an index, as a registry serves them. */
async function sampleImage(): Promise<{ manifests: Map<string, Served>; blobs: Map<string, Served> }> {
  const tars = await sampleLayers();
  const layers = tars.map((l) => (l.gzip ? served(MT.ociLayerGzip, gzipSync(l.tar, { level: 0 })) : served(MT.ociLayer, l.tar)));
  const config = served(MT.ociConfig, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['true'] }, rootfs: { type: 'layers', diff_ids: tars.map((l) => digestOf(l.tar)) } })));
  const descriptor = (x: Served) => ({ mediaType: x.mediaType, digest: x.digest, size: x.body.length });
  const manifest = served(MT.ociManifest, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.ociManifest, config: descriptor(config), layers: layers.map(descriptor) })));
  const index = served(MT.ociIndex, Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MT.ociIndex,
    manifests: [{ ...descriptor(manifest), platform: { os: 'linux', architecture: 'amd64' } }],
  })));
  return {
    manifests: new Map([[TAG, index], [index.digest, index], [manifest.digest, manifest]]),
    blobs: new Map([[config.digest, config], ...layers.map((l): [string, Served] => [l.digest, l])]),
  };
}

/** The registry API's read side for that image only, on loopback (anything else: 404); `reference` is the image's. */
export async function serveSampleImage(): Promise<{ host: string; reference: string; requests: () => number; close(): Promise<void> }> {
  const image = await sampleImage();
  let requests = 0;
  const server = createServer((req, res) => {
    requests++;
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(req.url ?? '');
    const found = m && m[1] === REPOSITORY ? (m[2] === 'manifests' ? image.manifests : image.blobs).get(m[3]!) : undefined;
    if (!found || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NOT_FOUND"}]}');
      return;
    }
    // blobs as registries send them; documents with their media type
    res.writeHead(200, { 'content-type': m![2] === 'manifests' ? found.mediaType : 'application/octet-stream', 'content-length': found.body.length, 'docker-content-digest': found.digest });
    res.end(req.method === 'HEAD' ? undefined : found.body);
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = () => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { host, reference: `${host}/${REPOSITORY}:${TAG}`, requests: () => requests, close };
}

async function warmPull(tmpDir: string, scratchPuller: ScratchPuller): Promise<void> {
  for (const name of await readdir(tmpDir).catch(() => [] as string[])) {
    if (name.startsWith(SCRATCH_PREFIX)) await rm(path.join(tmpDir, name), { recursive: true, force: true });
  }
  const dir = await mkdtemp(path.join(tmpDir, SCRATCH_PREFIX));
  const registry = await serveSampleImage().catch(async (e: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw e;
  });
  const puller = scratchPuller(dir);
  try {
    await puller.pull(registry.reference);
    // the index, the manifest, the config and the layer: each through the registry client
    if (registry.requests() < 4) throw new Error(`the sample image was pulled with ${registry.requests()} requests`);
  } finally {
    await puller.close().catch(() => undefined);
    await registry.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** A stream long enough to be hashed on the digest thread (core/stream-digest.ts), checked. */
async function warmDigests(): Promise<void> {
  const zeros = Buffer.alloc(2 * 1024 * 1024);
  const d = new StreamDigest();
  for (let off = 0; off < zeros.length; off += 64 * 1024) d.update(zeros.subarray(off, off + 64 * 1024));
  const got = await d.digest();
  if (got !== `sha256:${createHash('sha256').update(zeros).digest('hex')}`) throw new Error(`the digest thread answered ${got} for 2 MiB of zeros`);
}

/** Warm the pull path (see above); never throws: a failed step only means a slower first pull. */
export async function warmPullPath(tmpDir: string, scratchPuller: ScratchPuller): Promise<WarmupStep[]> {
  const t0 = performance.now();
  warmFileWriters();
  const steps: [string, () => Promise<void>][] = [
    ['probe layer tools', probeLayerTools],
    // the sample's blobs are each under the megabyte a stream hashes on the main thread
    ['hash on the digest thread', warmDigests],
    ['pull a sample image', () => warmPull(tmpDir, scratchPuller)],
  ];
  const out: WarmupStep[] = [];
  for (const [step, run] of steps) {
    const s0 = performance.now();
    try {
      await run();
      out.push({ step, ok: true, ms: Math.round(performance.now() - s0) });
    } catch (e) {
      const error = e instanceof Error ? e.message : String(e);
      out.push({ step, ok: false, ms: Math.round(performance.now() - s0), error });
      log.debug('pull warm-up step failed', { step, error });
    }
  }
  log.debug('pull path warmed', { ms: Math.round(performance.now() - t0) });
  return out;
}
