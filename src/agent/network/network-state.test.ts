import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { NetworkStateDir } from './network-state.js';

test('a record saved again unchanged is not written again; changed, forgotten or read back it is', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-network-state-'));
  try {
    const file = path.join(dir, 'endpoints', 'c1.json');
    const state = new NetworkStateDir(dir);
    await state.save('endpoints', 'c1', { a: 1 });
    const ino = statSync(file).ino;
    await state.save('endpoints', 'c1', { a: 1 });
    assert.equal(statSync(file).ino, ino, 'unchanged: not replaced');
    await state.save('endpoints', 'c1', { a: 2 });
    assert.notEqual(statSync(file).ino, ino, 'changed: replaced');
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { a: 2 });

    // another process (a restart) reads the records: what it read is what the file holds
    const again = new NetworkStateDir(dir);
    assert.deepEqual(again.read('endpoints'), [{ a: 2 }]);
    const ino2 = statSync(file).ino;
    await again.save('endpoints', 'c1', { a: 2 });
    assert.equal(statSync(file).ino, ino2, 'as read: not replaced');

    await again.forget('endpoints', 'c1');
    assert.equal(existsSync(file), false);
    await again.save('endpoints', 'c1', { a: 2 });
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { a: 2 }, 'forgotten, then saved: written');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
