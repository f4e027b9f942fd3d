import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderExplain } from './quota.js';

test('quota explain: a reclaim that cannot cover the request says what stays short; pool charges get their own table', () => {
  const now = 1_000_000;
  const text = renderExplain({
    admitted: false,
    reason: 'rejected by free of project org/a: instances: need 2, free 0',
    decidedBy: { project: 'id-a', projectPath: 'org/a', resource: 'instances', line: 'free' },
    loans: [],
    poolCharges: [{ pool: 'id-org/shared', poolName: 'org:shared', resource: 'cpus', amount: 2 }],
    reclaim: {
      sufficient: false,
      remaining: { instances: 1, cpus: 0 },
      victims: [{ instance: 'f'.repeat(64), project: 'id-b', projectPath: 'org/b', action: 'stop', frees: { instances: 1 }, deadline: now }],
    },
  }, now);
  assert.equal(text, [
    'rejected: rejected by free of project org/a: instances: need 2, free 0',
    'decided by: the "free" line of instances on project org/a',
    '',
    'charged to shared pools:',
    'POOL         RESOURCE   AMOUNT',
    'org:shared   cpus       2',
    '',
    'even reclaiming these 1 instance(s) would leave instances=1 short:',
    'INSTANCE       NAME   PROJECT   ACTION   FREES         GRACE ENDS',
    'ffffffffffff          org/b     stop     instances=1   now',
    '',
  ].join('\n'));
});
