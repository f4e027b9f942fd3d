/**
 * A container's log carried by a cold move (log-transfer.ts), on files laid out as the driver and
 * conmon lay them out: the source's newest generations travel and are placed before the file
 * conmon holds open at the destination, which goes on writing after them (read back in order,
 * within max-file); the import is hostile input, refused whole with nothing left behind.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import tar from 'tar-stream';
import { hasCode } from '../../../core/errors.js';
import { prepareLogFiles, readK8sLog, rotateOnce } from './container-logs.js';
import { exportLogs, importLogs } from './log-transfer.js';

type EntryHeader = Parameters<tar.Pack['entry']>[0];
const rec = (s: string) => `2026-01-01T00:00:00.000000000+00:00 stdout F ${s}\n`;
const LIMITS = { maxSizeBytes: 64 * 1024, maxFiles: 3 };
let base: string;
let n = 0;

before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-log-transfer-'));
});
after(() => rm(base, { recursive: true, force: true }));

async function lines(log: string): Promise<string[]> {
  const out: string[] = [];
  for await (const r of readK8sLog(log)) out.push(r.line);
  return out;
}

/** A created container's log at the destination: the symlinks, and the file conmon opened (its descriptor returned). */
async function created() {
  const dir = path.join(base, `dst-${n++}`);
  await mkdir(dir);
  const log = path.join(dir, 'ctr.log');
  await prepareLogFiles(log);
  const conmon = await open(log, 'a'); // conmon: O_WRONLY|O_APPEND|O_CREAT through the symlink
  return { dir, log, conmon };
}

async function tarOf(entries: Array<{ header: EntryHeader; body?: string }>): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry(e.header, e.body ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

test('the import\'s digest is the SHA-256 of the tar it was sent, past a megabyte too (hashed on the digest thread)', async () => {
  const limits = { maxSizeBytes: 1024 * 1024, maxFiles: 3 };
  const src = path.join(base, `big-src-${n++}`);
  await mkdir(src);
  const srcLog = path.join(src, 'ctr.log');
  const block = (tag: string) => Array.from({ length: 9000 }, (_, i) => rec(`${tag} ${i} ${'x'.repeat(50)}`)).join(''); // ~0.9 MiB
  await writeFile(`${srcLog}.1`, block('one'));
  await writeFile(`${srcLog}.2`, block('two'));
  await symlink('ctr.log.2', srcLog);
  await symlink('ctr.log.3', `${srcLog}.tmp`);
  const sent: Buffer[] = [];
  for await (const c of await exportLogs(srcLog, limits)) sent.push(Buffer.from(c));
  const bytes = Buffer.concat(sent);
  assert.ok(bytes.length > 1024 * 1024, `${bytes.length} bytes of tar`);
  const dst = await created();
  try {
    const r = await importLogs(dst.log, Readable.from(sent), limits, 'the big log');
    assert.equal(r.bytes, bytes.length);
    assert.equal(r.digest, `sha256:${createHash('sha256').update(bytes).digest('hex')}`);
    assert.equal(r.entries, 2);
  } finally {
    await dst.conmon.close();
  }
});

test('the newest generations travel, go before the file conmon writes, and the whole stays within max-file', async () => {
  const src = path.join(base, 'src');
  await mkdir(src);
  const srcLog = path.join(src, 'ctr.log');
  await writeFile(`${srcLog}.1`, rec('oldest'));
  await writeFile(`${srcLog}.3`, rec('a') + rec('b'));
  await writeFile(`${srcLog}.5`, rec('c'));
  await symlink('ctr.log.5', srcLog);
  await symlink('ctr.log.7', `${srcLog}.tmp`);
  const dst = await created();
  try {
    const r = await importLogs(dst.log, await exportLogs(srcLog, LIMITS), LIMITS, 'the test log');
    assert.deepEqual([r.entries, r.unpackedBytes], [2, rec('a').length * 3], 'max-file 3: the newest two travel (the destination\'s new file is the third)');
    assert.match(r.digest, /^sha256:[0-9a-f]{64}$/);
    await dst.conmon.write(rec('after the move')); // conmon's descriptor: the renamed current generation
    assert.deepEqual(await lines(dst.log), ['a', 'b', 'c', 'after the move'], 'before and after, in order');
    rotateOnce(dst.log, LIMITS.maxFiles); // the rotation worker's pass keeps them all
    const gens = (await readdir(dst.dir)).filter((f) => /^ctr\.log\.\d+$/.test(f));
    assert.equal(gens.length, 3, `three generations: ${gens.join(', ')}`);
    assert.deepEqual(await lines(dst.log), ['a', 'b', 'c', 'after the move']);
    assert.ok(!(await readdir(dst.dir)).some((f) => f.startsWith('.import-')), 'nothing staged left');
    // with max-file 1 nothing travels: the destination's own file is the one allowed
    const one = { ...LIMITS, maxFiles: 1 };
    const none = await created();
    try {
      assert.equal((await importLogs(none.log, await exportLogs(srcLog, one), one, 'the test log')).entries, 0);
    } finally {
      await none.conmon.close();
    }
  } finally {
    await dst.conmon.close();
  }
});

test('a hostile import is refused whole, and the log is as the create left it', async () => {
  const big = rec('x'.repeat(1000)).repeat(80); // ~85 KiB: past a 64 KiB max-size and its slack
  const cases: Array<[string, Array<{ header: EntryHeader; body?: string }>, RegExp]> = [
    ['a path for a name', [{ header: { name: '../../etc/passwd', type: 'file' }, body: rec('a') }], /expected/],
    ['a name out of order', [{ header: { name: 'generation-1', type: 'file' }, body: rec('a') }], /generation-0 was expected/],
    ['a symlink', [{ header: { name: 'generation-0', type: 'symlink', linkname: '/etc/shadow' } }], /only files travel/],
    ['more files than max-file allows', [0, 1, 2].map((i) => ({ header: { name: `generation-${i}`, type: 'file' as const }, body: rec('a') })), /more than 2 file/],
    ['a file past max-size', [{ header: { name: 'generation-0', type: 'file' }, body: big }], /past its max-size/],
    ['a line that is no record', [{ header: { name: 'generation-0', type: 'file' }, body: rec('a') + 'not a record\n' }], /not a k8s-file log record/],
    ['a last record cut short', [{ header: { name: 'generation-0', type: 'file' }, body: rec('a').slice(0, -1) }], /incomplete/],
  ];
  for (const [what, entries, re] of cases) {
    const dst = await created();
    try {
      const before = (await readdir(dst.dir)).sort();
      await assert.rejects(importLogs(dst.log, Readable.from([await tarOf(entries)]), LIMITS, 'the test log'),
        (e: unknown) => hasCode(e, 'InvalidArgument') && re.test(String(e)), what);
      assert.deepEqual((await readdir(dst.dir)).sort(), before, `${what}: nothing left`);
      assert.deepEqual(await lines(dst.log), [], `${what}: the log is empty as before`);
    } finally {
      await dst.conmon.close();
    }
  }
  // bytes that are no tar
  const junk = await created();
  try {
    await assert.rejects(importLogs(junk.log, Readable.from([Buffer.alloc(4096, 7)]), LIMITS, 'the test log'), (e: unknown) => hasCode(e, 'InvalidArgument'));
  } finally {
    await junk.conmon.close();
  }
  // a log with output of its own already: not the place to import into
  const used = await created();
  try {
    await used.conmon.write(rec('its own'));
    await assert.rejects(importLogs(used.log, Readable.from([await tarOf([])]), LIMITS, 'the test log'), (e: unknown) => hasCode(e, 'Conflict') && /holds output already/.test(String(e)));
  } finally {
    await used.conmon.close();
  }
});
