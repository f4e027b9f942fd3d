/**
 * A fresh daemon's first pull cost twice what a later one did (issue 18: 182 against 76 ms for
 * the test image), and not because of the daemon's own start: a pull begun 3 s after it answered
 * cost the same. A CPU profile of that first pull shows work only a first pull does: loading
 * Node's fetch (undici, and compiling its WebAssembly HTTP parser at the first connection), the
 * probes for perl and zstd (a process each), starting the small-file writer threads, and
 * compiling the pull path's own code on its first run. The agent does all of that once as it
 * starts, in the background: one fetch over loopback to a socket of its own that answers it, and
 * a tiny layer applied in a scratch directory under the daemon's tmp dir, removed after (and swept
 * at the next start if the daemon died in between).
 *
 * The socket is a plain `net` server on purpose: with a `node:http` server made and closed here,
 * the daemon's RSS grew by 64 MiB while it later served 73 MB of logs with other work on the host
 * (test/logs.e2e.test.ts, three runs of three; with this socket, or with no request, +0.4 to
 * +3.2 MiB). Why a second HTTP server does that was not found.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { logger } from '../../core/log.js';
import { warmFileWriters } from '../layers/file-writer.js';
import { applyLayer, probeLayerTools } from '../layers/apply-layer.js';

const log = logger('agent.images.warmup');
const SCRATCH_PREFIX = '.pull-warmup-';

/** One request through Node's fetch (undici compiles its HTTP parser at the first), to a socket that answers it and closes. */
async function warmFetch(): Promise<void> {
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}'));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  try {
    const { port } = server.address() as AddressInfo;
    const res = await fetch(`http://127.0.0.1:${port}/v2/`, { redirect: 'manual', signal: AbortSignal.timeout(10_000) });
    await res.arrayBuffer();
  } finally {
    await new Promise((r) => server.close(r));
  }
}

/** A small gzip layer of the kinds of entries images have. */
async function sampleLayer(): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  const entry = (h: Partial<tar.Header> & { name: string }, body?: string) =>
    new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body === undefined) pack.entry(h, cb);
      else pack.entry(h, body, cb);
    });
  await entry({ name: 'etc/', type: 'directory', mode: 0o755 });
  for (let i = 0; i < 8; i++) await entry({ name: `etc/file${i}`, mode: 0o644 }, `warm-up ${i}\n`);
  await entry({ name: 'etc/link', type: 'symlink', linkname: 'file0' });
  await entry({ name: 'etc/hard', type: 'link', linkname: 'etc/file1' });
  await entry({ name: 'etc/.wh.gone', mode: 0o644 }, '');
  pack.finalize();
  await done;
  return gzipSync(Buffer.concat(chunks));
}

async function warmApply(tmpDir: string): Promise<void> {
  for (const name of await readdir(tmpDir).catch(() => [] as string[])) {
    if (name.startsWith(SCRATCH_PREFIX)) await rm(path.join(tmpDir, name), { recursive: true, force: true });
  }
  const dir = await mkdtemp(path.join(tmpDir, SCRATCH_PREFIX));
  try {
    await applyLayer(dir, Readable.from([await sampleLayer()]), { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', mode: 'overlay' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Warm the pull path (see above); never throws, and a failure only means a slower first pull. */
export async function warmPullPath(tmpDir: string): Promise<void> {
  const t0 = performance.now();
  warmFileWriters();
  const steps: [string, () => Promise<void>][] = [
    ['probe layer tools', probeLayerTools],
    ['fetch over loopback', warmFetch],
    ['apply a sample layer', () => warmApply(tmpDir)],
  ];
  for (const [what, step] of steps) {
    try {
      await step();
    } catch (e) {
      log.debug('pull warm-up step failed', { step: what, error: e instanceof Error ? e.message : String(e) });
    }
  }
  log.debug('pull path warmed', { ms: Math.round(performance.now() - t0) });
}
