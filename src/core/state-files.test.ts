import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { removeStateFile, replaceStateFile, startStateFileThread, writeStateFile } from './state-files.js';

function scratch(): string {
  return mkdtempSync(path.join(tmpdir(), 'nimbus-state-files-'));
}

test('a first write waits for the thread and then runs on it; the file is made with the mode asked', async () => {
  const dir = scratch();
  try {
    const f = path.join(dir, 'made');
    await writeStateFile(f, 'one\n', 0o600); // the thread may not run yet: the write waits for it
    await startStateFileThread();
    assert.equal(readFileSync(f, 'utf8'), 'one\n');
    assert.equal(statSync(f).mode & 0o777, 0o600);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writeStateFile writes in place: the inode stays (a bind mount holds it), longer and shorter contents are whole', async () => {
  const dir = scratch();
  try {
    const f = path.join(dir, 'hosts');
    writeFileSync(f, 'x'.repeat(5000));
    const ino = statSync(f).ino;
    await writeStateFile(f, 'short\n');
    assert.equal(readFileSync(f, 'utf8'), 'short\n', 'cut to the new length');
    await writeStateFile(f, 'é'.repeat(3000)); // multi-byte: the length is in bytes
    assert.equal(readFileSync(f, 'utf8'), 'é'.repeat(3000));
    await writeStateFile(f, '');
    assert.equal(readFileSync(f, 'utf8'), '');
    assert.equal(statSync(f).ino, ino, 'the same inode throughout');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writes asked in one turn go in order: the last one asked is what the file holds; 200 files at once all whole', async () => {
  const dir = scratch();
  try {
    const f = path.join(dir, 'same');
    await Promise.all(Array.from({ length: 50 }, (_, i) => writeStateFile(f, `${i}`.repeat(100 - i))));
    assert.equal(readFileSync(f, 'utf8'), '49'.repeat(51));
    const files = Array.from({ length: 200 }, (_, i) => path.join(dir, `f${i}`));
    await Promise.all(files.map((p, i) => (i % 2 ? writeStateFile(p, `w${i}`) : replaceStateFile(p, `r${i}`))));
    files.forEach((p, i) => assert.equal(readFileSync(p, 'utf8'), `${i % 2 ? 'w' : 'r'}${i}`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("outside a burst a write is done in the caller's turn; past 16 a window the rest go to the thread, in order", async () => {
  await startStateFileThread();
  const dir = scratch();
  const fresh = () => new Promise((r) => setTimeout(r, 25)); // a new 20 ms window
  try {
    const f = path.join(dir, 'x');
    await fresh();
    const one = writeStateFile(f, 'one');
    assert.equal(readFileSync(f, 'utf8'), 'one', 'written before the call returned');
    await one;
    await fresh();
    const all = Array.from({ length: 40 }, (_, i) => (i % 3 ? writeStateFile(f, `w${i}`) : replaceStateFile(f, `r${i}`)));
    assert.equal(readFileSync(f, 'utf8'), 'r15', "the window's first 16 (0-15) done at once, the rest asked of the thread");
    await Promise.all(all);
    assert.equal(readFileSync(f, 'utf8'), 'r39', 'the last asked (39, a replacement) is what the file holds');
    assert.deepEqual(readdirSync(dir), ['x'], 'no temporary file left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('replaceStateFile replaces the file (a new inode, never a part of it) and leaves no temporary file, on failure too', async () => {
  const dir = scratch();
  try {
    const f = path.join(dir, 'meta.json');
    await replaceStateFile(f, '{"a":1}');
    const ino = statSync(f).ino;
    await replaceStateFile(f, '{"a":2}');
    assert.equal(readFileSync(f, 'utf8'), '{"a":2}');
    assert.notEqual(statSync(f).ino, ino, 'renamed over, not written in place');
    mkdirSync(path.join(dir, 'adir'));
    await assert.rejects(replaceStateFile(path.join(dir, 'adir'), 'x'), (e: NodeJS.ErrnoException) => e.code === 'EISDIR');
    await assert.rejects(replaceStateFile(path.join(dir, 'missing/meta.json'), 'x'), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    assert.deepEqual(readdirSync(dir).sort(), ['adir', 'meta.json']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('removeStateFile: an absent file is no error, any other failure is the caller\'s with its code', async () => {
  const dir = scratch();
  try {
    const f = path.join(dir, 'exit');
    writeFileSync(f, '0');
    await removeStateFile(f);
    assert.deepEqual(readdirSync(dir), []);
    await removeStateFile(f);
    mkdirSync(path.join(dir, 'd'));
    await assert.rejects(removeStateFile(path.join(dir, 'd')), (e: NodeJS.ErrnoException) => e.code === 'EISDIR' || e.code === 'EPERM');
    await assert.rejects(writeStateFile(path.join(dir, 'missing/x'), 'x'), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
