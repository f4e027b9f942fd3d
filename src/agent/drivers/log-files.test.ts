import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../core/errors.js';
import { CHUNK, LineCursor, tailStart } from './log-files.js';

async function all(c: LineCursor): Promise<string[]> {
  const out: string[] = [];
  for await (const l of c.lines()) out.push(l.partial ? `${l.text}~` : l.text);
  return out;
}

test('tail across files, lines across chunk boundaries, long lines split or refused', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-logfiles-'));
  try {
    const a = path.join(dir, 'a');
    const b = path.join(dir, 'b');
    await writeFile(a, 'one\ntwo\nthree'); // its last line unfinished
    await writeFile(b, 'four\nfive\n');
    assert.deepEqual(await tailStart([a, b], 2), { index: 1, offset: 0 });
    assert.deepEqual(await tailStart([a, b], 3), { index: 0, offset: 8 }); // "three"
    assert.deepEqual(await tailStart([a, b], 100), { index: 0, offset: 0 });
    assert.deepEqual(await tailStart([a, b], 0), { index: 1, offset: 10 });
    assert.deepEqual(await tailStart([a, path.join(dir, 'missing')], 1), { index: 0, offset: 8 });
    // joined: one byte stream, "one two threefour five"
    const joined = { joined: true };
    assert.deepEqual(await tailStart([a, b], 1, joined), { index: 1, offset: 5 }); // "five"
    assert.deepEqual(await tailStart([a, b], 2, joined), { index: 0, offset: 8 }); // "threefour"
    assert.deepEqual(await tailStart([a, b], 3, joined), { index: 0, offset: 4 }); // "two"
    assert.deepEqual(await tailStart([a, b], 100, joined), { index: 0, offset: 0 });
    assert.deepEqual(await tailStart([a, b], 0, joined), { index: 1, offset: 10 });
    const c1 = path.join(dir, 'c1');
    const c2 = path.join(dir, 'c2');
    await writeFile(c1, 'x\n');
    await writeFile(c2, 'y\n');
    assert.deepEqual(await tailStart([c1, c2, path.join(dir, 'missing')], 1, joined), { index: 0, offset: 2 }, '"y": from the end of the first file, where a newline starts it');
    assert.deepEqual(await tailStart([c1, c2], 2, joined), { index: 0, offset: 0 });

    // lines longer than a chunk and a newline right at a chunk boundary
    const big = path.join(dir, 'big');
    const long = 'x'.repeat(CHUNK + 10);
    const edge = 'y'.repeat(2 * CHUNK - (long.length + 1) - 1); // its newline is the second chunk's last byte
    await writeFile(big, `${long}\n${edge}\nlast\npart`);
    const c = (await LineCursor.open(big, 0, { maxLine: 1 << 20, label: 'log' }))!;
    assert.deepEqual(await all(c), [long, edge, 'last']);
    assert.equal(c.pending(), 'part');
    await appendFile(big, 'ial\n');
    assert.deepEqual(await all(c), ['partial']);
    await c.close();
    assert.equal(await LineCursor.open(path.join(dir, 'missing'), 0, { maxLine: 10 }), undefined);

    const flood = path.join(dir, 'flood');
    await writeFile(flood, `${'z'.repeat(3 * CHUNK)}\nok\n`);
    const split = (await LineCursor.open(flood, 0, { maxLine: CHUNK }))!;
    const pieces = await all(split);
    await split.close();
    assert.equal(pieces.at(-1), 'ok');
    assert.equal(pieces.slice(0, -1).map((p) => p.replace(/~$/, '')).join(''), 'z'.repeat(3 * CHUNK), 'split, nothing lost');
    assert.ok(pieces.slice(0, -2).every((p) => p.endsWith('~')), 'pieces before the newline are partial');
    const strict = (await LineCursor.open(flood, 0, { maxLine: CHUNK, label: 'log of x' }))!;
    await assert.rejects(all(strict), (e: unknown) => hasCode(e, 'DataLoss'));
    await strict.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
