import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { ContextSlot } from './async-context.js';

test('a slot follows its async context through awaits and timers; nested runs shadow and restore; slots are independent', async () => {
  const a = new ContextSlot<string>('a');
  const b = new ContextSlot<number>('b');
  assert.equal(a.get(), undefined);
  const seen: unknown[] = [];
  await a.run('outer', async () => {
    await sleep(1);
    seen.push(a.get(), b.get());
    await b.run(7, async () => {
      await new Promise((r) => setTimeout(r, 1));
      seen.push(a.get(), b.get());
      await a.run('inner', async () => {
        await null;
        seen.push(a.get(), b.get());
      });
      seen.push(a.get());
    });
    seen.push(a.get(), b.get());
  });
  assert.deepEqual(seen, ['outer', undefined, 'outer', 7, 'inner', 7, 'outer', 'outer', undefined]);
  assert.equal(a.get(), undefined);
});

test('two instances of one slot never see each other (each SQL executor has its own transaction)', async () => {
  const first = new ContextSlot<string>('tx');
  const second = new ContextSlot<string>('tx');
  await first.run('one', async () => {
    await null;
    assert.equal(first.get(), 'one');
    assert.equal(second.get(), undefined);
  });
});

test('concurrent runs keep their own values', async () => {
  const slot = new ContextSlot<number>('n');
  const got = await Promise.all([1, 2, 3].map((n) => slot.run(n, async () => {
    await sleep(4 - n);
    return slot.get();
  })));
  assert.deepEqual(got, [1, 2, 3]);
});

test('exit unsets only its own slot, for what runs inside it', async () => {
  const a = new ContextSlot<string>('a');
  const b = new ContextSlot<string>('b');
  await a.run('x', () => b.run('y', async () => {
    await a.exit(async () => {
      await null;
      assert.equal(a.get(), undefined);
      assert.equal(b.get(), 'y');
    });
    assert.equal(a.get(), 'x');
  }));
  assert.equal(a.exit(() => 5), 5); // outside any run: fn as is
});

test('no module but this one makes an AsyncLocalStorage (each one costs every promise of the process)', () => {
  const src = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src');
  const offenders: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') && !p.endsWith(join('core', 'async-context.ts'))) {
        if (/new AsyncLocalStorage\b|AsyncLocalStorage\s*[,}]/.test(readFileSync(p, 'utf8'))) offenders.push(relative(src, p));
      }
    }
  };
  walk(src);
  assert.deepEqual(offenders, [], 'use ContextSlot (src/core/async-context.ts)');
});
