import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { removeInterruptedWrites, removeEarlierLeftovers } from './interrupted-writes.js';

test('removes temp files of another process, keeps our own writes in progress and the state files', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-iw-'));
  try {
    writeFileSync(join(dir, 'abc.json'), '{}');
    writeFileSync(join(dir, `abc.json.${process.pid + 1}.x1y2z3.tmp`), '{');
    writeFileSync(join(dir, `abc.json.${process.pid}.q1w2e3.tmp`), '{');
    assert.equal(await removeInterruptedWrites([dir, join(dir, 'absent')]), 1);
    assert.deepEqual(readdirSync(dir).sort(), ['abc.json', `abc.json.${process.pid}.q1w2e3.tmp`].sort());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('removes matching entries written before this process started, keeps newer ones and others', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-iw-'));
  try {
    const past = new Date(Date.now() - process.uptime() * 1000 - 60_000);
    for (const n of ['metadata.json.aa11.tmp', 'metadata.json.bb22.tmp', 'metadata.json']) writeFileSync(join(dir, n), 'x');
    for (const n of ['metadata.json.aa11.tmp', 'metadata.json']) utimesSync(join(dir, n), past, past);
    assert.equal(await removeEarlierLeftovers(dir, /^metadata\.json\..*\.tmp$/), 1);
    assert.deepEqual(readdirSync(dir).sort(), ['metadata.json', 'metadata.json.bb22.tmp']);
    assert.equal(await removeEarlierLeftovers(dir), 1, 'without a pattern: every earlier entry');
    assert.deepEqual(readdirSync(dir), ['metadata.json.bb22.tmp']);
    assert.equal(await removeEarlierLeftovers(join(dir, 'absent')), 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
