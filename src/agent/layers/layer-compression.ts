/**
 * A layer's compression, from its media type, and the decompressors that are not zlib's: zstd
 * layers go through the zstd program (Node 20 has no zstd), probed once per process.
 */
import { spawn } from 'node:child_process';
import { Duplex, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, type ZlibOptions } from 'node:zlib';
import { InvalidArgument } from '../../core/errors.js';
import { digestPass } from '../../core/stream-digest.js';
import { run } from '../../core/exec.js';
import { layerCompression as compressionOfLayerType, type LayerCompression } from '../images/media-types.js';

export type { LayerCompression };

/**
 * Compression of an OCI / Docker layer media type (media-types.ts, the types a pull accepts, and
 * `application/x-tar` for the tars of docker cp and moves); InvalidArgument for anything else.
 */
export function layerCompression(mediaType: string): LayerCompression {
  const mt = mediaType.trim().toLowerCase();
  const c = mt === 'application/x-tar' ? 'none' : compressionOfLayerType(mt);
  if (c === undefined) throw new InvalidArgument(`unsupported layer media type ${JSON.stringify(mediaType)}`, { mediaType });
  return c;
}

let zstdOk: Promise<boolean> | undefined;
export function haveZstd(): Promise<boolean> {
  zstdOk ??= run('zstd', ['--version']).then(
    (r) => r.code === 0,
    () => false,
  );
  return zstdOk;
}

export function zstdDecompressor(): { stream: Duplex; kill: () => void } {
  const child = spawn('zstd', ['-dcq'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const err: Buffer[] = [];
  child.stderr.on('data', (b: Buffer) => err.push(b));
  child.stdin.on('error', () => undefined); // EPIPE when zstd dies: its exit status tells why
  // the readable side ends only once zstd has exited, carrying its verdict
  const reader = new Readable({
    read() {
      child.stdout.resume();
    },
  });
  child.stdout.on('data', (b: Buffer) => {
    if (!reader.push(b)) child.stdout.pause();
  });
  child.on('error', (e) => reader.destroy(e));
  child.on('close', (code) => {
    if (code === 0) reader.push(null);
    else reader.destroy(new InvalidArgument(`zstd -dc failed (exit ${code}): ${Buffer.concat(err).toString().trim()}`));
  });
  return {
    stream: Duplex.from({ writable: child.stdin, readable: reader }),
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}


/** A zstd layer needs the zstd program: refused up front on a host without it. */
export async function checkDecompressor(compression: LayerCompression, mediaType: string): Promise<void> {
  if (compression === 'zstd' && !(await haveZstd())) throw new InvalidArgument('zstd layers need the zstd program (Debian package zstd)', { mediaType });
}

/** The stages that undo a layer's compression (none for a plain tar), and how to stop a zstd process early. */
export function decompressor(compression: LayerCompression, gunzip: ZlibOptions = {}): { stages: Duplex[]; kill: () => void } {
  if (compression === 'gzip') return { stages: [createGunzip(gunzip)], kill: () => undefined };
  if (compression === 'zstd') {
    const zstd = zstdDecompressor();
    return { stages: [zstd.stream], kill: zstd.kill };
  }
  return { stages: [], kill: () => undefined };
}

/**
 * A layer blob's diff id (the digest of its uncompressed tar), read through without unpacking: what
 * says a blob is the layer a config names when its snapshot exists already (layer-unpacker.ts).
 */
export async function diffIdOf(source: Readable, mediaType: string): Promise<string> {
  const compression = layerCompression(mediaType);
  await checkDecompressor(compression, mediaType);
  const hash = digestPass(); // off the main thread past a megabyte
  const sink = new Writable({ write: (_chunk, _enc, cb) => cb() });
  const { stages, kill } = decompressor(compression);
  try {
    await pipeline([source, ...stages, hash, sink] as unknown as NodeJS.ReadWriteStream[]);
    return await hash.digest();
  } finally {
    kill();
  }
}
