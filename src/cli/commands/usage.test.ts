import { test } from 'node:test';
import assert from 'node:assert/strict';
import { usageCsv } from './usage.js';
import { eventFilters } from './system.js';
import type { UsageReport } from '../../control/metering/usage-report.js';

const totals = { instanceSeconds: 7200, cpuSeconds: 3600.5, memoryGiBHours: 2, diskGiBHours: null, networkRxBytes: null, networkTxBytes: null };

test('usage as CSV: a row per project (rolled up) and per instance, fields quoted when they must be', () => {
  const r: UsageReport = {
    since: null, until: null, periodSeconds: 3600,
    projects: [{ id: 'p1', name: 'org', parentId: null, own: totals, total: totals, bySize: [] }, { id: 'p2', name: 'te,am', parentId: 'p1', own: totals, total: totals, bySize: [] }],
    instances: [{ id: 'i1', name: 'web "1"', projectId: 'p2', kind: 'vm', ...totals, bySize: [] }],
  };
  assert.equal(usageCsv(r), [
    'scope,id,name,project,kind,instance_seconds,cpu_seconds,memory_gib_hours,disk_gib_hours,network_rx_bytes,network_tx_bytes',
    'project,p1,org,,,7200,3600.5,2,,,',
    'project,p2,"te,am",org,,7200,3600.5,2,,,',
    'instance,i1,"web ""1""","te,am",vm,7200,3600.5,2,,,',
  ].join('\n') + '\n');
});

test('events --filter: comma-separated or repeated, Docker\'s keys too, nonsense refused', () => {
  assert.deepEqual(eventFilters(['project=team,kind=container', 'instance=web', 'type=vm']), [['project', 'team'], ['kind', 'container'], ['instance', 'web'], ['kind', 'vm']]);
  assert.deepEqual(eventFilters([]), []);
  assert.throws(() => eventFilters(['colour=blue']), /--filter takes/);
  assert.throws(() => eventFilters(['project=']), /--filter takes/);
});
