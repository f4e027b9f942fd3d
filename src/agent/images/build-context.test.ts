import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { contextPath, extractContext } from './build-context.js';

type Entry = { name: string; type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device'; content?: string; linkname?: string };

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((ok) => {
    pack.on('data', (c: unknown) => {
      chunks.push(c as Buffer);
    });
    pack.on('end', () => ok());
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    if (type === 'file') pack.entry({ name: e.name, type }, e.content ?? '');
    else pack.entry({ name: e.name, type, ...(e.linkname ? { linkname: e.linkname } : {}) });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function dir(t: TestContext): string {
  const d = mkdtempSync(join(tmpdir(), 'nimbus-ctx-'));
  t.after(() => rmSync(d, { recursive: true, force: true }));
  return join(d, 'ctx');
}

test('contextPath: relative names inside the context only', () => {
  assert.equal(contextPath('./a/b/'), 'a/b');
  assert.equal(contextPath('/abs/x'), 'abs/x');
  assert.equal(contextPath('a/../b'), 'b');
  assert.equal(contextPath('../x'), undefined);
  assert.equal(contextPath('a/../../x'), undefined);
  assert.equal(contextPath('.'), '');
});

test('files, directories, symlinks (kept as links) and hard links (copied); devices skipped', async (t) => {
  const d = dir(t);
  const got = await extractContext(Readable.from([await tarOf([
    { name: 'Dockerfile', content: 'FROM x\n' },
    { name: 'sub/', type: 'directory' },
    { name: 'sub/a.txt', content: 'a' },
    { name: 'abs-link', type: 'symlink', linkname: '/etc/passwd' },
    { name: 'hard', type: 'link', linkname: 'sub/a.txt' },
    { name: 'dev', type: 'character-device' },
  ])]), d);
  assert.deepEqual(got, { files: 3, bytes: 8 });
  assert.equal(readFileSync(join(d, 'hard'), 'utf8'), 'a');
  assert.equal(readlinkSync(join(d, 'abs-link')), '/etc/passwd');
  assert.equal(existsSync(join(d, 'dev')), false);
  assert.ok(lstatSync(join(d, 'sub')).isDirectory());
});

test('refused: a name out of the context, a write through a symlink, twice the same name, a hard link to nothing, over the limits', async (t) => {
  await assert.rejects(extractContext(Readable.from([await tarOf([{ name: '../x', content: 'x' }])]), dir(t)), /outside the context/);
  const d = dir(t);
  await assert.rejects(extractContext(Readable.from([await tarOf([{ name: 'l', type: 'symlink', linkname: '/tmp' }, { name: 'l/x', content: 'x' }])]), d), /through a symlink/);
  await assert.rejects(extractContext(Readable.from([await tarOf([{ name: 'a', content: '1' }, { name: 'a', content: '2' }])]), dir(t)), /twice/);
  await assert.rejects(extractContext(Readable.from([await tarOf([{ name: 'h', type: 'link', linkname: '/etc/shadow' }])]), dir(t)), /hard link/);
  await assert.rejects(extractContext(Readable.from([await tarOf([{ name: 'big', content: 'x'.repeat(2000) }])]), dir(t), { maxBytes: 1000, maxEntries: 10 }), (e: unknown) => (e as { code?: string }).code === 'PayloadTooLarge');
  await assert.rejects(extractContext(Readable.from([await tarOf(Array.from({ length: 11 }, (_, i) => ({ name: `f${i}`, content: '' })))]), dir(t), { maxBytes: 1000, maxEntries: 10 }), /more than 10 entries/);
  await assert.rejects(extractContext(Readable.from([Buffer.from('not a tar at all'.repeat(64))]), dir(t)), /not a valid tar/);
});

test('a system error while unpacking names the entry and its code, never the host path of the context', async (t) => {
  const d = dir(t);
  for (const entries of [
    [{ name: 'a/', type: 'directory' }, { name: 'a', type: 'symlink', linkname: 'x' }],
    [{ name: 'a/', type: 'directory' }, { name: 'a', content: 'x' }],
    [{ name: 'x'.repeat(300), content: 'x' }],
  ] as Entry[][]) {
    await assert.rejects(extractContext(Readable.from([await tarOf(entries)]), join(d, String(entries.length))), (e: unknown) => {
      assert.equal((e as { code?: string }).code, 'InvalidArgument', String(e));
      assert.doesNotMatch((e as Error).message, new RegExp(d.split('/')[2]!), 'no host path');
      assert.match((e as Error).message, /cannot be unpacked \((EEXIST|ENAMETOOLONG)\)/);
      return true;
    });
  }
});
