/** docker import's wrapping (rootfs-import.ts): plain and gzip tarballs become a docker save archive of one layer; other input is refused by name. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { hasCode } from '../../core/errors.js';
import { rootfsArchive, sniffTarball } from './rootfs-import.js';

let dir: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function tarOf(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, body] of Object.entries(files)) pack.entry({ name }, body);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

async function members(file: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const ex = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, s, next) => {
      const chunks: Buffer[] = [];
      s.on('data', (c: unknown) => { chunks.push(c as Buffer); });
      s.on('end', () => { out.set(h.name, Buffer.concat(chunks)); next(); });
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  ex.end(readFileSync(file));
  await done;
  return out;
}

describe('docker import: a rootfs tarball as a one-layer image archive', () => {
  before(() => { dir = mkdtempSync(join(tmpdir(), 'nimbus-rootfs-import-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const kind of ['tar', 'gzip'] as const) {
    test(`a ${kind} tarball: the layer uncompressed (its digest the diff_id), the config from the changes, manifest.json naming both`, async () => {
      const raw = await tarOf({ 'bin/app': '#!/bin/sh\n', 'etc/hostname': 'x\n' });
      const upload = join(dir, `up-${kind}`);
      writeFileSync(upload, kind === 'gzip' ? gzipSync(raw) : raw);
      assert.equal(await sniffTarball(upload), kind);
      const out = join(dir, `out-${kind}.tar`);
      await rootfsArchive(upload, out, { config: { Cmd: ['/bin/app'] }, comment: 'Imported from -', architecture: 'amd64', now: new Date(0) });
      const m = await members(out);
      const manifest = JSON.parse(m.get('manifest.json')!.toString()) as Array<{ Config: string; Layers: string[]; RepoTags: null }>;
      assert.deepEqual(manifest[0]!.Layers, [`${sha(raw)}/layer.tar`]);
      assert.ok(m.get(`${sha(raw)}/layer.tar`)!.equals(raw), 'the layer is the tarball, unchanged');
      const config = JSON.parse(m.get(manifest[0]!.Config)!.toString()) as { config: unknown; rootfs: { diff_ids: string[] }; comment: string; os: string };
      assert.equal(manifest[0]!.Config, `${sha(m.get(manifest[0]!.Config)!)}.json`);
      assert.deepEqual(config.rootfs.diff_ids, [`sha256:${sha(raw)}`]);
      assert.deepEqual(config.config, { Cmd: ['/bin/app'] });
      assert.equal(config.comment, 'Imported from -');
      assert.equal(config.os, 'linux');
    });
  }

  test('other compressions, empty input, something that is no tar, and a broken gzip are refused', async () => {
    const cases: Array<[string, Buffer, RegExp]> = [
      ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2]), /xz-compressed/],
      ['bz2', Buffer.from('BZh91AY&SY'), /bzip2-compressed/],
      ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0]), /zstd-compressed/],
      ['empty', Buffer.alloc(0), /empty/],
      ['text', Buffer.from('hello '.repeat(200)), /not a tar archive/],
      ['badgz', Buffer.concat([gzipSync(Buffer.alloc(4096)).subarray(0, 20), Buffer.from('garbage')]), /gzip stream is broken|not a tar/],
    ];
    for (const [name, bytes, re] of cases) {
      const upload = join(dir, name);
      writeFileSync(upload, bytes);
      await assert.rejects(rootfsArchive(upload, join(dir, `${name}.out`), { config: {}, comment: '', architecture: 'amd64' }),
        (e: unknown) => hasCode(e, 'InvalidArgument') && re.test(String((e as Error).message)), name);
    }
  });
});
