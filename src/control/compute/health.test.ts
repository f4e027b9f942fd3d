import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { openStore } from '../../store/open.js';
import type { ContainerHealth, ContainerRecord, HealthProbe } from '../../store/records.js';
import { EventBus, type NimbusEvent } from '../events/event-bus.js';
import type { ExecRequest, ExecSession } from '../../agent/drivers/instance-driver.js';
import { HealthMonitor, nextHealth, probeArgs } from './health.js';

const probe = (exitCode: number, n = 0): HealthProbe => ({ start: `s${n}`, end: `e${n}`, exitCode, output: `out${n}` });

test('probeArgs: CMD-SHELL through /bin/sh -c, CMD as given, NONE and empty tests run nothing', () => {
  assert.deepEqual(probeArgs(['CMD-SHELL', 'test -f /ok']), ['/bin/sh', '-c', 'test -f /ok']);
  assert.deepEqual(probeArgs(['CMD', 'curl', '-f', 'http://localhost/']), ['curl', '-f', 'http://localhost/']);
  assert.equal(probeArgs(['NONE']), undefined);
  assert.equal(probeArgs(['CMD']), undefined);
  assert.equal(probeArgs([]), undefined);
});

test('nextHealth: healthy on a success, unhealthy after `retries` failures in a row, start period failures do not count, 5 probes kept', () => {
  let h: ContainerHealth = { status: 'starting', failingStreak: 0, log: [] };
  let next = nextHealth(h, probe(1, 1), 3, true);
  assert.deepEqual([next.status, next.failingStreak], ['starting', 0], 'in the start period');
  next = nextHealth(next, probe(1, 2), 3, false);
  next = nextHealth(next, probe(1, 3), 3, false);
  assert.deepEqual([next.status, next.failingStreak], ['starting', 2]);
  next = nextHealth(next, probe(1, 4), 3, false);
  assert.deepEqual([next.status, next.failingStreak], ['unhealthy', 3]);
  next = nextHealth(next, probe(0, 5), 3, false);
  assert.deepEqual([next.status, next.failingStreak], ['healthy', 0]);
  next = nextHealth(next, probe(1, 6), 3, true);
  assert.deepEqual([next.status, next.failingStreak], ['healthy', 1], 'the start period ends with the first success');
  assert.deepEqual(next.log.map((p) => p.start), ['s2', 's3', 's4', 's5', 's6']);
  h = next;
  assert.equal(nextHealth(h, probe(2, 7), 1, false).status, 'unhealthy');
});

test('the monitor probes through exec, keeps the outcome on the record and tells a change of status once; a probe over its timeout fails', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-health-'));
  const store = await openStore(join(dir, 'n.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.projects.insert({ id: 'p1', name: 'p1', parentId: null, createdAt: new Date().toISOString() });
  const startedAt = new Date(Date.now() - 60_000).toISOString();
  const rec: ContainerRecord = {
    id: 'c1', name: 'web', projectId: 'p1', imageDigest: 'sha256:x', status: 'running', runtime: 'runc', pid: 1, exitCode: null, oomKilled: false,
    restartCount: 0, stoppedByUser: false, createdAt: startedAt, startedAt, finishedAt: null, warnings: [], host: 'local',
    config: { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {}, healthcheck: { test: ['CMD-SHELL', 'check'], retries: 2, timeoutMs: 200, intervalMs: 60_000 } },
  };
  await store.containers.insert(rec);
  const answers: Array<{ code: number | 'hang'; out: string }> = [{ code: 0, out: 'fine' }, { code: 1, out: 'bad' }, { code: 'hang', out: '' }, { code: 0, out: 'back' }];
  const asked: ExecRequest[] = [];
  const exec = async (_id: string, req: ExecRequest): Promise<ExecSession> => {
    asked.push(req);
    const a = answers.shift()!;
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    stdout.end(a.out);
    stderr.end();
    return { stdout, stderr, exit: a.code === 'hang' ? new Promise<number>(() => undefined) : Promise.resolve(a.code) };
  };
  const events = new EventBus();
  const seen: NimbusEvent[] = [];
  events.on((e) => seen.push(e));
  const monitor = new HealthMonitor(store, events, { exec });
  await monitor.start();
  t.after(() => monitor.stop());
  const health = async () => (await store.containers.get('c1'))!.health!;
  await monitor.probe('c1', startedAt);
  assert.deepEqual(asked[0]?.args, ['/bin/sh', '-c', 'check']);
  assert.deepEqual([(await health()).status, (await health()).log[0]?.output], ['healthy', 'fine']);
  await monitor.probe('c1', startedAt);
  assert.deepEqual([(await health()).status, (await health()).failingStreak], ['healthy', 1]);
  await monitor.probe('c1', startedAt);
  const h = await health();
  assert.deepEqual([h.status, h.failingStreak, h.log.at(-1)?.exitCode], ['unhealthy', 2, -1]);
  assert.match(h.log.at(-1)!.output, /exceeded timeout/);
  await monitor.probe('c1', startedAt);
  assert.equal((await health()).status, 'healthy');
  assert.deepEqual(seen.filter((e) => e.action.startsWith('health_status')).map((e) => e.action), ['health_status: healthy', 'health_status: unhealthy', 'health_status: healthy']);
  // a probe of an earlier run (the container restarted since) is not counted
  const before = (await health()).log.length;
  await monitor.probe('c1', '2000-01-01T00:00:00.000Z');
  assert.equal((await health()).log.length, before);
});
