/**
 * Images of a Debian tool for benchmarks (fio for volume-io, iperf3 for overlay-net), made the way
 * a tenant could make one: the tool's binary and every shared library it loads (from ldd), at the
 * paths the loader looks for them, as one layer over the busybox test layer; pushed to the bench
 * registry and pulled through Nimbus (no host bind mount).
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { dirname } from 'node:path';
import { gzipSync } from 'node:zlib';
import { runOk } from '../../src/core/exec.js';
import { blobOf, buildTestImages, makeTar, manifestOf, MEDIA, MTIME, pushImage, sha256Digest, type TarEntry } from '../../scripts/fixtures/images.js';

/** A file of the tool's layer: its path without the leading slash, its contents. */
export interface ToolFile {
  path: string;
  data: Buffer;
}

/** The binary and every shared library it loads (contents from their real files). */
export async function toolFiles(binary: string, debianPackage: string): Promise<ToolFile[]> {
  if (!existsSync(binary)) throw new Error(`${binary} is missing: scripts/bootstrap --bench installs Debian's ${debianPackage}`);
  const ldd = await runOk('ldd', [binary]);
  const paths = new Set<string>();
  for (const l of ldd.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(l) ?? /^\s*(\/\S+)\s+\(/.exec(l);
    if (m) paths.add(m[1]!);
  }
  if (!paths.size) throw new Error(`ldd ${binary} named no library: ${ldd.slice(0, 300)}`);
  return [binary, ...paths].map((p) => ({ path: p.replace(/^\//, ''), data: readFileSync(realpathSync(p)) }));
}

/** Every directory above the given relative paths, parents first. */
export function parentDirs(paths: string[]): string[] {
  const dirs = new Set<string>();
  for (const p of paths) for (let d = dirname(p); d !== '.' && d !== '/'; d = dirname(d)) dirs.add(d);
  return [...dirs].sort();
}

export interface ToolImage {
  /** registry repository, e.g. nimbus-test/fio */
  repo: string;
  files: ToolFile[];
  /** the config's Cmd */
  cmd: string[];
  /** the tool layer's history line */
  createdBy: string;
}

/** Pushes busybox's layer and a layer of the tool's files as REPO:bench; returns the reference. */
export async function pushToolImage(registry: string, t: ToolImage): Promise<string> {
  const test = await buildTestImages();
  const raw = await makeTar([
    ...parentDirs(t.files.map((f) => f.path)).map((d): TarEntry => ({ name: `${d}/`, type: 'directory' })),
    ...t.files.map((f): TarEntry => ({ name: f.path, type: 'file', content: f.data, mode: 0o755 })),
  ]);
  const base = test.amd64.layers[0]!;
  const layer = blobOf(gzipSync(raw, { level: 1 }), MEDIA.layerGzip);
  const config = blobOf(Buffer.from(JSON.stringify({
    created: MTIME.toISOString(), architecture: 'amd64', os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: t.cmd, WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [test.amd64.diffIds[0]!, sha256Digest(raw)] },
    history: [{ created: MTIME.toISOString(), created_by: 'busybox' }, { created: MTIME.toISOString(), created_by: t.createdBy }],
  })), MEDIA.config);
  await pushImage(registry, t.repo, 'bench', { manifest: manifestOf(config, [base, layer]), blobs: [config, base, layer] });
  return `${registry}/${t.repo}:bench`;
}
