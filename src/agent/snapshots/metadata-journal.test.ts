// The snapshotter's records on disk: a base and a journal of changes. What a change wrote is read
// back by the next load, whatever a crash left at the journal's end; the journal is folded into
// the base when it outgrows it and at each load; a base that already holds the journal (a crash
// between the two steps of a fold) reads the same.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../core/errors.js';
import { MetadataJournal, applyChange, type MetadataChange, type MetadataFile, type SnapshotRecord } from './metadata-journal.js';

const rec = (id: number, over: Partial<SnapshotRecord> = {}): SnapshotRecord => ({ id, kind: 'active', createdAt: '2026-12-07T00:00:00.000Z', ...over });

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(path.join(tmpdir(), 'nimbus-meta-journal-'));
  try {
    await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/** Changes made as the snapshotter makes them: in memory, then appended. */
async function change(j: MetadataJournal, meta: MetadataFile, c: MetadataChange): Promise<void> {
  applyChange(meta, c);
  await j.append(c, meta);
}

describe('snapshot metadata journal', () => {
  it('a change is an append, not a rewrite of the base; the next load reads every change and folds them into the base', async () => {
    await withRoot(async (root) => {
      const j = new MetadataJournal(root);
      const meta = await j.load();
      assert.deepEqual(meta, { version: 2, nextId: 1, snapshots: {} });
      await change(j, meta, { set: [['a', rec(1)]], nextId: 2 });
      await change(j, meta, { set: [['b', rec(2, { parent: 'a', kind: 'committed' })], ['c', rec(3, { sizeBytes: 1 << 20 })]], nextId: 4 });
      await change(j, meta, { del: ['a'] });
      await assert.rejects(stat(j.basePath), (e: NodeJS.ErrnoException) => e.code === 'ENOENT', 'no base written: three appends');
      assert.equal((await readFile(j.journalPath, 'utf8')).split('\n').length, 4, 'three lines');
      const again = await new MetadataJournal(root).load();
      assert.deepEqual(again, meta);
      assert.deepEqual(JSON.parse(await readFile(j.basePath, 'utf8')), meta, 'folded into the base at the load');
      await assert.rejects(stat(j.journalPath), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    });
  });

  it('an unfinished last line (a write cut short, or the zeros a crash leaves) is dropped; a broken line before it is refused', async () => {
    await withRoot(async (root) => {
      const j = new MetadataJournal(root);
      const meta = await j.load();
      await change(j, meta, { set: [['a', rec(1)]], nextId: 2 });
      await appendFile(j.journalPath, '{"set":[["b",{"id":2,"kind":"act');
      assert.deepEqual((await new MetadataJournal(root).load()).snapshots, { a: rec(1) });
      const k = new MetadataJournal(root);
      const m2 = await k.load();
      await change(k, m2, { set: [['c', rec(3)]], nextId: 4 });
      await appendFile(k.journalPath, Buffer.alloc(4096));
      assert.deepEqual(Object.keys((await new MetadataJournal(root).load()).snapshots).sort(), ['a', 'c']);
      // a line with its newline that is not a change: refused, not skipped
      await writeFile(k.journalPath, '{"set":[["d",{"id":"x"}]]}\n{"del":["a"]}\n');
      await assert.rejects(new MetadataJournal(root).load(), (e: Error) => hasCode(e, 'Internal') && /journal/.test(e.message));
    });
  });

  it('outgrown, the journal is folded into a new base; a base that already holds the journal reads the same', async () => {
    await withRoot(async (root) => {
      const j = new MetadataJournal(root, { compactAtBytes: 1024 });
      const meta = await j.load();
      for (let i = 1; i <= 60; i++) await change(j, meta, { set: [[`k${i}`, rec(i)]], nextId: i + 1, ...(i % 3 === 0 ? { del: [`k${i - 1}`] } : {}) });
      const journalBytes = (await stat(j.journalPath).catch(() => ({ size: 0 }))).size;
      assert.ok(journalBytes <= Math.max(1024, 2 * (await stat(j.basePath)).size), `the journal is bounded: ${journalBytes} bytes`);
      assert.ok(Object.keys(JSON.parse(await readFile(j.basePath, 'utf8')).snapshots).length > 1, 'folded at least once');
      // a crash after the new base was renamed in, before the journal went: the journal replays over it
      const journalBefore = await readFile(j.journalPath, 'utf8').catch(() => '');
      await writeFile(j.basePath, JSON.stringify(meta));
      await writeFile(j.journalPath, journalBefore);
      assert.deepEqual(await new MetadataJournal(root).load(), meta);
      assert.equal(Object.keys(meta.snapshots).length, 40);
    });
  });

  it('a base from before the journal (version 1) is read and written again as version 2', async () => {
    await withRoot(async (root) => {
      const old = { version: 1, nextId: 3, snapshots: { a: rec(1), b: rec(2, { parent: 'a' }) } };
      await writeFile(path.join(root, 'metadata.json'), JSON.stringify(old));
      const meta = await new MetadataJournal(root).load();
      assert.deepEqual(meta, { ...old, version: 2 });
      assert.equal(JSON.parse(await readFile(path.join(root, 'metadata.json'), 'utf8')).version, 2, 'an older nimbusd refuses it rather than miss the journal');
    });
  });
});
