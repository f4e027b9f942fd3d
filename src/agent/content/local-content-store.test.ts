import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DataLoss } from '../../core/errors.js';
import { LocalContentStore } from './local-content-store.js';

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
async function* chunks(b: Buffer, size = 7) {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

test('content store: ingest verifies digest and size, is idempotent, lists and deletes', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-content-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cs = new LocalContentStore(root);
  const data = Buffer.from('hello content store, '.repeat(50));
  const d = digestOf(data);
  assert.deepEqual(await cs.ingest({ digest: d, size: data.length }, chunks(data)), { digest: d, size: data.length });
  assert.deepEqual(await cs.readBlob(d), data);
  assert.deepEqual(await cs.ingest({ digest: d }, chunks(data)), { digest: d, size: data.length }, 'second ingest is a no-op');

  const other = Buffer.from('tampered');
  const wrong = digestOf(Buffer.from('original'));
  await assert.rejects(cs.ingest({ digest: wrong }, chunks(other)), { code: 'DataLoss', message: /digest mismatch/ });
  assert.equal(await cs.info(wrong), undefined, 'nothing stored for a mismatch');
  assert.deepEqual(readdirSync(join(root, 'ingest')), [], 'no partial ingest left');
  await assert.rejects(cs.ingest({ digest: digestOf(other), size: 3 }, chunks(other)), { code: 'DataLoss' });
  await assert.rejects(cs.ingest({ digest: 'sha256:XYZ' }, chunks(other)), { code: 'InvalidArgument' });

  assert.deepEqual((await cs.list()).map((i) => i.digest), [d]);
  await cs.delete(d);
  assert.deepEqual(await cs.list(), []);
  await assert.rejects(cs.readBlob(d), { code: 'NotFound' });
});

test('content store: concurrent ingests of one digest all succeed and leave one blob, no temp files', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-content-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cs = new LocalContentStore(root);
  const data = Buffer.alloc(300_000, 7);
  for (let i = 0; i < data.length; i += 1000) data[i] = i % 251;
  const d = digestOf(data);
  const results = await Promise.all(Array.from({ length: 8 }, () => cs.ingest({ digest: d, size: data.length }, chunks(data, 4096))));
  for (const r of results) assert.deepEqual(r, { digest: d, size: data.length });
  assert.deepEqual(await cs.readBlob(d), data);
  assert.deepEqual((await cs.list()).map((i) => i.digest), [d]);
  assert.deepEqual(readdirSync(join(root, 'ingest')), []);
});

test('content store: a failing source, a short source and a wrong size on an existing blob leave nothing behind', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-content-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cs = new LocalContentStore(root);
  const data = Buffer.from('0123456789'.repeat(100));
  const d = digestOf(data);
  async function* broken() {
    yield data.subarray(0, 10);
    throw new Error('connection reset');
  }
  await assert.rejects(cs.ingest({ digest: d }, broken()), /connection reset/);
  await assert.rejects(cs.ingest({ digest: d, size: data.length }, chunks(data.subarray(0, 500))), { code: 'DataLoss' });
  assert.equal(await cs.info(d), undefined);
  assert.deepEqual(readdirSync(join(root, 'ingest')), []);

  await cs.ingest({ digest: d }, chunks(data));
  await assert.rejects(cs.ingest({ digest: d, size: 5 }, chunks(data)), { code: 'DataLoss', message: /size mismatch/ });
  // An existing blob does not consume the source (it may be a network body).
  let pulled = 0;
  async function* counting() {
    for await (const c of chunks(data)) {
      pulled++;
      yield c;
    }
  }
  await cs.ingest({ digest: d }, counting());
  assert.equal(pulled, 0);
});

test('content store: digests are validated everywhere; openRead streams; missing blobs are NotFound', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-content-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cs = new LocalContentStore(root);
  for (const bad of ['sha256:' + 'A'.repeat(64), 'sha512:' + 'a'.repeat(64), 'sha256:../../etc/passwd', 'sha256:' + 'a'.repeat(63)]) {
    assert.throws(() => cs.blobPath(bad), { code: 'InvalidArgument' }, bad);
    await assert.rejects(cs.info(bad), { code: 'InvalidArgument' }, bad);
    await assert.rejects(cs.ingest({ digest: bad }, chunks(Buffer.from('x'))), { code: 'InvalidArgument' }, bad);
  }
  const data = Buffer.from('stream me');
  const d = digestOf(data);
  assert.throws(() => cs.openRead(d), { code: 'NotFound' });
  await cs.ingest({ digest: d }, chunks(data));
  const got: Buffer[] = [];
  for await (const c of cs.openRead(d)) got.push(c as Buffer);
  assert.deepEqual(Buffer.concat(got), data);
  assert.equal(cs.blobPath(d), join(root, 'blobs', 'sha256', d.slice(7)));
});

test('content store: blobs past a megabyte (hashed on the digest thread) are verified as strictly as small ones', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-content-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cs = new LocalContentStore(root);
  const data = Buffer.alloc(5 * 1024 * 1024 + 123);
  for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const d = digestOf(data);
  assert.deepEqual(await cs.ingest({ digest: d, size: data.length }, chunks(data, 65536)), { digest: d, size: data.length });
  assert.deepEqual(await cs.readBlob(d), data);
  await cs.delete(d);

  // one byte changed past the first megabytes: refused, nothing kept
  const tampered = Buffer.from(data);
  tampered.writeUInt8(tampered.readUInt8(3 * 1024 * 1024 + 17) ^ 1, 3 * 1024 * 1024 + 17);
  await assert.rejects(cs.ingest({ digest: d, size: data.length }, chunks(tampered, 65536)), { code: 'DataLoss', message: /digest mismatch/ });
  assert.equal(await cs.info(d), undefined);
  // a source that fails after megabytes: nothing kept either
  async function* broken() {
    yield* chunks(data.subarray(0, 3 * 1024 * 1024), 65536);
    throw new Error('connection reset');
  }
  await assert.rejects(cs.ingest({ digest: d }, broken()), /connection reset/);
  assert.equal(await cs.info(d), undefined);
  assert.deepEqual(readdirSync(join(root, 'ingest')), []);
});

test('content store: ingestComputed stores bytes under the digest they hash to, keeps an existing blob, checks a given size', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-cs-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const cs = new LocalContentStore(root);
  const data = Buffer.from('a disk image, say'.repeat(100_000)); // past a megabyte: hashed on the digest thread
  const d = digestOf(data);
  assert.deepEqual(await cs.ingestComputed(chunks(data, 65536)), { digest: d, size: data.length });
  assert.ok((await cs.readBlob(d)).equals(data));
  const inode = statSync(cs.blobPath(d)).ino;
  assert.deepEqual(await cs.ingestComputed(chunks(data, 65536), { size: data.length }), { digest: d, size: data.length }, 'the same content again');
  assert.equal(statSync(cs.blobPath(d)).ino, inode, 'the stored blob is kept, not replaced');
  const other = Buffer.from('something else');
  await assert.rejects(cs.ingestComputed(chunks(other), { size: other.length + 1 }), { code: 'DataLoss', message: /size mismatch/ });
  await assert.rejects(cs.ingestComputed(chunks(other), { size: other.length - 1 }), { code: 'DataLoss', message: /more than the expected/ });
  async function* broken(): AsyncGenerator<Buffer> {
    yield other;
    throw new Error('read failed');
  }
  await assert.rejects(cs.ingestComputed(broken()), /read failed/);
  // the caller's check sees the digest first, and its refusal stores nothing
  let checked: string | undefined;
  await assert.rejects(cs.ingestComputed(chunks(other), { check: (digest) => {
    checked = digest;
    throw new DataLoss('not the promised digest');
  } }), { code: 'DataLoss', message: /not the promised digest/ });
  assert.equal(checked, digestOf(other));
  assert.equal(await cs.info(digestOf(other)), undefined, 'nothing stored for a refused or failed import');
  assert.deepEqual(readdirSync(join(root, 'ingest')), [], 'no temp file left');
});
