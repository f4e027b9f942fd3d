import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { LINE_BATCH_CHARS, STOP_WRITING, deferredIterable, writeBatched, writeLines } from './streams.js';

/** A writable that records each write; `highWaterMark` small enough to push back when asked. */
function sink(opts: { slow?: boolean; highWaterMark?: number } = {}) {
  const writes: string[] = [];
  const at: number[] = [];
  const dest = new Writable({
    decodeStrings: false,
    highWaterMark: opts.highWaterMark ?? 1 << 20,
    write(chunk: string, _enc, done) {
      writes.push(chunk);
      at.push(Date.now());
      if (opts.slow) setTimeout(done, 2);
      else done();
    },
  });
  return { dest, writes, at };
}

async function* ready(n: number, width = 10): AsyncGenerator<string> {
  for (let i = 0; i < n; i++) yield String(i).padStart(width, '0');
}

test('writeLines: what the source has ready goes out in few writes, every line once, in order', async () => {
  const { dest, writes } = sink();
  const n = 20_000;
  await writeLines(dest, ready(n), (s) => s + '\n');
  const text = writes.join('');
  assert.equal(text, Array.from({ length: n }, (_, i) => String(i).padStart(10, '0') + '\n').join(''));
  // 220 KB of lines: a handful of ~64 KiB writes, not 20,000
  assert.ok(writes.length <= Math.ceil(text.length / LINE_BATCH_CHARS) + 1, `${writes.length} writes`);
});

test('writeLines: a line is written before the source waits for the next (a follower sees it at once)', async () => {
  const { dest, writes } = sink();
  const seenBeforeNext: number[] = [];
  async function* slow(): AsyncGenerator<string> {
    for (let i = 0; i < 3; i++) {
      yield `line ${i}`;
      await sleep(30); // a follower's wait for the next line
      seenBeforeNext.push(writes.length);
    }
  }
  await writeLines(dest, slow(), (s) => s + '\n');
  assert.deepEqual(seenBeforeNext, [1, 2, 3], 'each line written while the source waited');
  assert.deepEqual(writes, ['line 0\n', 'line 1\n', 'line 2\n']);
});

test('writeLines: waits for a refusing stream to drain, so at most a batch is held beyond its mark', async () => {
  const { dest, writes } = sink({ slow: true, highWaterMark: 1024 });
  let maxBuffered = 0;
  async function* many(): AsyncGenerator<string> {
    for (let i = 0; i < 50_000; i++) {
      maxBuffered = Math.max(maxBuffered, dest.writableLength);
      yield 'x'.repeat(40);
    }
  }
  await writeLines(dest, many(), (s) => s + '\n');
  assert.equal(writes.join('').length, 50_000 * 41);
  assert.ok(maxBuffered <= 2 * LINE_BATCH_CHARS, `held ${maxBuffered} chars unwritten`);
});

test('writeLines: a flush refused and drained while the source waited does not wait for a drain that came already', async () => {
  const writes: string[] = [];
  const dest = new Writable({
    decodeStrings: false,
    highWaterMark: 1, // every write is refused, and drains on the next turn
    write(chunk: string, _enc, done) {
      writes.push(chunk);
      setImmediate(done);
    },
  });
  async function* spaced(): AsyncGenerator<string> {
    for (let i = 0; i < 5; i++) {
      yield String(i);
      await sleep(5); // the flush's write is refused and drained in here
    }
  }
  const done = writeLines(dest, spaced(), (s) => s + '\n').then(() => 'done');
  assert.equal(await Promise.race([done, sleep(2_000).then(() => 'stuck')]), 'done');
  assert.equal(writes.join(''), '0\n1\n2\n3\n4\n');
});

test('writeLines: lines read before the source fails are written; a stop returns the source', async () => {
  const { dest, writes } = sink();
  async function* failing(): AsyncGenerator<string> {
    yield 'a';
    yield 'b';
    throw new Error('disk gone');
  }
  await assert.rejects(writeLines(dest, failing(), (s) => s + '\n'), /disk gone/);
  assert.equal(writes.join(''), 'a\nb\n');

  let returned = false;
  async function* endless(): AsyncGenerator<string> {
    try {
      for (let i = 0; ; i++) {
        await sleep(1);
        yield String(i);
      }
    } finally {
      returned = true;
    }
  }
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 20);
  await writeLines(sink().dest, endless(), (s) => s + '\n', { signal: ac.signal });
  assert.ok(returned, 'the source was returned (its files released)');
});

test('writeLines: a first result read by the caller is written first', async () => {
  const { dest, writes } = sink();
  const it = ready(3, 1);
  const first = await it.next();
  await writeLines(dest, it, (s) => s + '\n', { first });
  assert.equal(writes.join(''), '0\n1\n2\n');
});

test('writeBatched: bytes and text in one write, skipped items left out, a stop ends it and returns the source', async () => {
  const chunks: Buffer[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  let returned = false;
  async function* items(): AsyncGenerator<number> {
    try {
      for (let i = 0; ; i++) yield i;
    } finally {
      returned = true;
    }
  }
  await writeBatched(dest, items(), (i) => (i === 6 ? STOP_WRITING : i % 2 ? undefined : i === 4 ? Buffer.from([0xff, 0x00]) : `${i};`));
  assert.deepEqual(Buffer.concat(chunks), Buffer.concat([Buffer.from('0;2;'), Buffer.from([0xff, 0x00])]));
  assert.equal(chunks.length, 1, 'one write');
  assert.ok(returned, 'stopped early: the source was returned');
});

test('deferredIterable: opens at the first next, is the opened source after, passes errors and return through', async () => {
  let opened = 0;
  const source = deferredIterable(async () => {
    opened++;
    return ready(3, 1);
  });
  assert.equal(opened, 0, 'nothing opened before iteration');
  const got: string[] = [];
  for await (const s of source) got.push(s);
  assert.deepEqual(got, ['0', '1', '2']);
  assert.equal(opened, 1);

  const failing = deferredIterable<string>(async () => {
    throw new Error('no such container');
  });
  await assert.rejects(failing[Symbol.asyncIterator]().next(), /no such container/);

  let finalized = false;
  const it = deferredIterable(async () =>
    (async function* () {
      try {
        yield 1;
        yield 2;
      } finally {
        finalized = true;
      }
    })(),
  )[Symbol.asyncIterator]();
  assert.deepEqual(await it.next(), { value: 1, done: false });
  await it.return!();
  assert.ok(finalized, 'return reaches the opened source');
  const never = deferredIterable(async () => ready(1))[Symbol.asyncIterator]();
  assert.deepEqual(await never.return!(), { done: true, value: undefined }, 'return before opening opens nothing');
});
