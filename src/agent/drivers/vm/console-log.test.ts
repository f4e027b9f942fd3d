// The console log's copytruncate rotation and the cursor that reads across it, against real
// files written through an O_APPEND descriptor (as QEMU writes console.log).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { checkConsoleLimits, consoleBytes, consoleStart, ConsoleCursor, forgetConsoleLog, rotateIfOver, watchConsoleLog, type ConsoleLogLimits } from './console-log.js';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nimbus-console-log-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
/** A fresh log and an O_APPEND writer on it, like QEMU's logfile=...,logappend=on. */
async function fresh(): Promise<{ live: string; write: (s: string) => void; close: () => void }> {
  const live = path.join(dir, `console-${++n}.log`);
  await writeFile(live, '');
  const fd = openSync(live, 'a');
  return { live, write: (s) => void writeSync(fd, s), close: () => closeSync(fd) };
}

const numbered = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => `line ${from + i}\n`).join('');

/** Everything from a start position, the cursor closed after. */
async function readFrom(live: string, l: ConsoleLogLimits, s: { gen: number; offset: number }): Promise<string[]> {
  const c = new ConsoleCursor(live, l, s.gen, s.offset, 1 << 16);
  try {
    return await drain(c);
  } finally {
    await c.close();
  }
}

async function drain(c: ConsoleCursor): Promise<string[]> {
  const out: string[] = [];
  for await (const l of c.lines()) out.push(l.text);
  return out;
}

const L: ConsoleLogLimits = { maxBytes: 4096, maxFiles: 3 };

test('a follower whose file is rotated under it continues in the copy, then the newer generations: nothing lost or repeated', async () => {
  const w = await fresh();
  try {
    const start = await consoleStart(w.live, L, undefined, undefined);
    const c = new ConsoleCursor(w.live, L, start.gen, start.offset, 1 << 16);
    const seen: string[] = [];
    let next = 0;
    for (let round = 0; round < 6; round++) {
      w.write(numbered(next, next + 300)); // ~3 KiB
      next += 300;
      seen.push(...(await drain(c)).slice()); // reads some, then the file rotates under the cursor
      w.write(numbered(next, next + 200));
      next += 200;
      assert.equal(await rotateIfOver(w.live, L), true);
      w.write('half a li'); // a line split by the next rotation's copy point
      seen.push(...(await drain(c)));
      w.write(`ne ${round}\n`);
    }
    seen.push(...(await drain(c)));
    await c.close();
    const expected: string[] = [];
    for (let i = 0, r = 0; r < 6; r++) {
      for (let k = 0; k < 500; k++) expected.push(`line ${i++}`);
      expected.push(`half a line ${r}`);
    }
    assert.deepEqual(seen, expected);
  } finally {
    w.close();
  }
});

test('on disk: at most maxFiles files of about maxBytes each; a whole read gives the newest lines oldest first', async () => {
  const w = await fresh();
  try {
    for (let i = 0; i < 100; i++) {
      w.write(numbered(i * 100, i * 100 + 100)); // ~1 KiB per step
      await rotateIfOver(w.live, L);
    }
    const files = (await readdir(dir)).filter((f) => f.startsWith(path.basename(w.live)));
    assert.deepEqual(files.sort(), [path.basename(w.live), `${path.basename(w.live)}.1`, `${path.basename(w.live)}.2`].sort());
    let total = 0;
    for (const f of files) total += (await stat(path.join(dir, f))).size;
    assert.ok(total <= L.maxBytes * L.maxFiles + 1200, `total ${total}`);
    const s = await consoleStart(w.live, L, undefined, undefined);
    const lines = await readFrom(w.live, L, s);
    const nums = lines.map((l) => Number(/^line (\d+)$/.exec(l)![1]));
    assert.equal(nums[nums.length - 1], 9999);
    for (let i = 1; i < nums.length; i++) assert.equal(nums[i], nums[i - 1]! + 1, 'consecutive');
    assert.ok(nums.length > 800, `kept ${nums.length} lines`);
    // tail across generations: the last 5, and more lines than the live file holds
    for (const tail of [5, 600]) {
      const t = await consoleStart(w.live, L, undefined, tail);
      assert.deepEqual(await readFrom(w.live, L, t), lines.slice(-tail));
    }
    // what migration carries: the same bytes, trimmed at a line start to the cap
    const history = `${w.live}.history`;
    await writeFile(history, 'x'.repeat(20_000) + '\nfrom an earlier host\n');
    const bytes = await consoleBytes(w.live, L, history);
    // the 20,000-byte history line does not fit: the carried log starts at the next line
    assert.ok(bytes.length <= L.maxBytes * L.maxFiles && bytes.toString().startsWith('from an earlier host\nline '), `${bytes.length} bytes`);
    assert.ok(bytes.toString().endsWith('line 9999\n'));
  } finally {
    w.close();
  }
});

test('an unfinished last line is not counted by tail; a follower that falls maxFiles rotations behind skips to the oldest kept', async () => {
  const w = await fresh();
  try {
    w.write(numbered(0, 10));
    const behind = new ConsoleCursor(w.live, L, (await consoleStart(w.live, L, undefined, undefined)).gen, 0, 1 << 16);
    assert.equal((await drain(behind)).length, 10);
    for (let i = 0; i < 4; i++) {
      w.write(numbered(10 + i * 500, 10 + (i + 1) * 500));
      assert.equal(await rotateIfOver(w.live, L), true);
    }
    w.write('tail piece');
    const t = await consoleStart(w.live, L, undefined, 2);
    assert.deepEqual(await readFrom(w.live, L, t), ['line 2008', 'line 2009']);
    const rest = await drain(behind);
    assert.equal(behind.skipped, true);
    assert.equal(rest[0], 'line 1010', 'continues at the oldest generation kept (.2)');
    assert.equal(rest[rest.length - 1], 'line 2009');
    assert.equal(behind.pending(), 'tail piece');
    await behind.close();
  } finally {
    w.close();
  }
});

test('the size check: rotates on its timer, stops when told; limits outside their range are InvalidArgument', async () => {
  const w = await fresh();
  try {
    const stop = watchConsoleLog(w.live, L, 20, (e) => assert.fail(String(e)));
    w.write(numbered(0, 1000));
    for (let i = 0; i < 100 && (await stat(w.live)).size > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal((await stat(w.live)).size, 0, 'rotated');
    stop();
    w.write(numbered(0, 1000));
    await new Promise((r) => setTimeout(r, 100));
    assert.ok((await stat(w.live)).size > L.maxBytes, 'no rotation after stop');
    forgetConsoleLog(w.live);
  } finally {
    w.close();
  }
  for (const bad of [{ maxBytes: 10, maxFiles: 3 }, { maxBytes: 4096, maxFiles: 0 }, { maxBytes: 4096.5, maxFiles: 3 }, { maxBytes: 4096, maxFiles: 21 }]) {
    assert.throws(() => checkConsoleLimits(bad), (e) => hasCode(e, 'InvalidArgument'));
  }
});
