import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bzImagePayload, hasPvhNote, pvhKernel } from './pvh-kernel.js';

const bzImage = (() => {
  const k = readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-')).sort().pop();
  return k ? `/boot/${k}` : undefined;
})();

test('the host kernel becomes a cached ELF with a PVH note; the same file answers the next time', { skip: bzImage ? false : 'no /boot/vmlinuz-*' }, async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-pvh-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const elf = await pvhKernel(bzImage!, dir);
  assert.notEqual(elf, bzImage, 'Debian kernels carry CONFIG_PVH and an xz payload: an ELF is made');
  const bytes = readFileSync(elf);
  assert.equal(bytes.readUInt32BE(0), 0x7f454c46, 'an ELF');
  assert.ok(hasPvhNote(bytes));
  assert.ok(bytes.length > readFileSync(bzImage!).length, 'uncompressed');
  assert.equal(await pvhKernel(bzImage!, dir), elf, 'cached');
  assert.deepEqual(readdirSync(dir), [path.basename(elf)], 'no temporary file left');
});

test('what is not a bzImage, or an ELF without the note, is booted as given', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-pvh-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const junk = path.join(dir, 'junk');
  writeFileSync(junk, Buffer.alloc(4096, 7));
  assert.throws(() => bzImagePayload(readFileSync(junk)), /not a bzImage/);
  assert.equal(await pvhKernel(junk, path.join(dir, 'cache')), junk);
  // a 64-bit little-endian ELF header with no program headers
  const bare = Buffer.alloc(64);
  bare.writeUInt32BE(0x7f454c46, 0);
  bare[4] = 2;
  bare[5] = 1;
  assert.equal(hasPvhNote(bare), false);
  assert.equal(hasPvhNote(Buffer.from('not an elf at all, long enough to read a header from it......')), false);
});
