/**
 * A fresh daemon's first pull cost twice what a later one did (issue 18: 182 against 76 ms for
 * the test image), and not because of the daemon's own start: a pull begun 3 s after it answered
 * cost the same. A CPU profile of that first pull shows work only a first pull does: the probes
 * for perl and zstd (a process each), starting the small-file writer threads, and compiling the
 * pull path's own code on its first run (the tar parser, zlib, hashing, the extractor). The agent
 * does that once as it starts, in the background: a tiny layer applied in a scratch directory
 * under the daemon's tmp dir, removed after (and swept at the next start if the daemon died in
 * between). (Node's fetch, whose first request compiled a WebAssembly parser, is no longer used:
 * the registry client is on node:http, http-exchange.ts.)
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { logger } from '../../core/log.js';
import { warmFileWriters } from '../layers/file-writer.js';
import { applyLayer, probeLayerTools } from '../layers/apply-layer.js';

const log = logger('agent.images.warmup');
const SCRATCH_PREFIX = '.pull-warmup-';

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
