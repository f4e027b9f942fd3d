import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { digestFile, digestPass, digestThreadAlive, killDigestThreadForTests, setDigestThreadIdleExit, StreamDigest } from './stream-digest.js';

const sha = (...parts: Uint8Array[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return `sha256:${h.digest('hex')}`;
};

/** Feeds data in chunks of `size` (the last one shorter). */
function feed(d: StreamDigest, data: Buffer, size: number): void {
  for (let off = 0; off < data.length; off += size) d.update(data.subarray(off, off + size));
}

test('the digest is the SHA-256 of what was given, for streams on either side of a batch', async () => {
  const MiB = 1024 * 1024;
  for (const [length, chunk] of [[0, 1], [1, 1], [5000, 7], [MiB - 1, 65536], [MiB, 65536], [MiB + 1, 65536], [5.5 * MiB + 3, 7777], [3 * MiB, 3 * MiB]] as const) {
    const data = randomBytes(length);
    const d = new StreamDigest();
    feed(d, data, chunk);
    assert.equal(await d.digest(), sha(data), `${length} bytes in chunks of ${chunk}`);
  }
});

test('a buffer the caller changes after update() does not change the digest (update copies)', async () => {
  const big = randomBytes(1536 * 1024);
  const original = Buffer.from(big);
  const d = new StreamDigest();
  d.update(big);
  big.fill(0); // reused at once, as a stream may reuse its buffers
  d.update(big.subarray(0, 1000));
  assert.equal(await d.digest(), sha(original, Buffer.alloc(1000)));
});

test('streams hashed at once stay apart', async () => {
  const datas = [0, 1, 2, 3].map((i) => randomBytes(2 * 1024 * 1024 + i * 4099));
  const ds = datas.map(() => new StreamDigest());
  for (let off = 0; off < datas[3]!.length; off += 100_000) {
    for (let i = 0; i < 4; i++) if (off < datas[i]!.length) ds[i]!.update(datas[i]!.subarray(off, off + 100_000));
  }
  assert.deepEqual(await Promise.all(ds.map((d) => d.digest())), datas.map((x) => sha(x)));
});

test('a producer far ahead of the thread is told to wait, and may go on once it drained', async () => {
  const d = new StreamDigest();
  const data = randomBytes(40 * 1024 * 1024);
  let waited = 0;
  for (let off = 0; off < data.length; off += 1024 * 1024) {
    d.update(data.subarray(off, off + 1024 * 1024));
    if (d.pending) {
      waited++;
      await d.drained();
      assert.equal(d.pending, false);
    }
  }
  assert.ok(waited > 0, '40 MiB handed over in one go must run more than 16 MiB ahead of the thread');
  assert.equal(await d.digest(), sha(data));
});

test('a producer that never waits still gets the right digest (batches past the ring carried over), and so do streams of a known length', async () => {
  const data = randomBytes(40 * 1024 * 1024 + 11);
  const d = new StreamDigest();
  feed(d, data, 256 * 1024);
  const other = new StreamDigest(data.length); // known to be long: to the thread from its first byte
  feed(other, data, 65536);
  const small = randomBytes(300_000);
  const known = new StreamDigest(small.length); // known to be short: hashed where it is
  feed(known, small, 4096);
  assert.deepEqual(await Promise.all([d.digest(), other.digest(), known.digest()]), [sha(data), sha(data), sha(small)]);
});

test('a thread that dies fails the digests waiting on it, and the next stream gets a new one', async () => {
  const d = new StreamDigest();
  d.update(randomBytes(3 * 1024 * 1024));
  await killDigestThreadForTests();
  await assert.rejects(d.digest());
  const data = randomBytes(2 * 1024 * 1024 + 5);
  const next = new StreamDigest();
  next.update(data);
  assert.equal(await next.digest(), sha(data));
});

test('an idle thread ends; a disposed stream does not keep it', async () => {
  setDigestThreadIdleExit(50);
  try {
    const d = new StreamDigest();
    d.update(randomBytes(2 * 1024 * 1024));
    d.dispose();
    const deadline = Date.now() + 5000;
    while (digestThreadAlive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(digestThreadAlive(), false);
  } finally {
    setDigestThreadIdleExit(60_000);
  }
});

test("digestFile: a file's digest and size, its first bytes to the caller; a missing file is an error", async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'stream-digest-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const length of [0, 10, 3 * 1024 * 1024 + 5]) {
    const data = randomBytes(length);
    const file = path.join(dir, `f${length}`);
    writeFileSync(file, data);
    let first: Buffer | undefined;
    assert.deepEqual(await digestFile(file, (c) => (first = Buffer.from(c.subarray(0, 8)))), { digest: sha(data), size: length });
    assert.deepEqual(first ?? Buffer.alloc(0), data.subarray(0, 8));
  }
  await assert.rejects(digestFile(path.join(dir, 'nope')), { code: 'ENOENT' });
});

test('digestPass: what goes through is passed on whole, hashed and counted; a failed stream is an error', async () => {
  const data = randomBytes(2 * 1024 * 1024 + 333);
  const pass = digestPass();
  const got: Buffer[] = [];
  const chunks = Array.from({ length: Math.ceil(data.length / 100_000) }, (_, i) => data.subarray(i * 100_000, (i + 1) * 100_000));
  await pipeline(Readable.from(chunks), pass, new Writable({ write: (c: Buffer, _e, cb) => (got.push(c), cb()) }));
  assert.deepEqual(Buffer.concat(got), data);
  assert.equal(await pass.digest(), sha(data));
  assert.equal(pass.bytes(), data.length);

  async function* broken() {
    yield data.subarray(0, 1_500_000);
    throw new Error('source failed');
  }
  await assert.rejects(pipeline(Readable.from(broken()), digestPass(), new Writable({ write: (_c, _e, cb) => cb() })), /source failed/);
});
