import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../store/sqlite.js';
import { QuotaService } from './quota-service.js';

const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };

test('quota service: the audit goes to its own table, the saved state does not grow with history, both survive a reopen', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-quota-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'nimbus.db');
  let store = new SqliteStore(file);
  let q = new QuotaService(store);
  q.ensureProject('p', null);
  q.setLimits('p', { hard: { instances: 3 } });
  const sizes: number[] = [];
  for (let i = 0; i < 300; i++) {
    q.admitContainer(`c${i}`, 'p', cfg);
    q.release(`c${i}`, 'removed');
    sizes.push(store.loadQuotaState()!.length);
  }
  assert.ok(sizes[299]! - sizes[10]! < 8, `state size is independent of the number of past admissions (${sizes[10]} → ${sizes[299]} bytes)`);
  assert.throws(() => {
    for (let i = 0; i < 4; i++) q.admitContainer(`x${i}`, 'p', cfg);
  }, { code: 'QuotaExceeded' });
  const all = q.audit({});
  assert.ok(all.length >= 604, `every admit, release and reject is audited (${all.length})`);
  assert.ok(all.some((e) => e.kind === 'reject' && e.instance === 'x3'));
  assert.deepEqual(all.map((e) => e.seq), [...all.map((e) => e.seq)].sort((a, b) => a - b), 'oldest first');
  store.close();

  store = new SqliteStore(file);
  q = new QuotaService(store);
  assert.equal(q.audit({}).length, all.length, 'the audit survives a restart');
  assert.equal(q.audit({ limit: 5 }).at(-1)!.seq, all.at(-1)!.seq, 'limit keeps the newest');
  assert.equal(q.audit({ sinceSeq: all.at(-3)!.seq }).length, 2);
  assert.equal(q.show('p').resources.instances?.used, 3, 'the ledger state survived too');
  store.close();
});
