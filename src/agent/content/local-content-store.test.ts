import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
