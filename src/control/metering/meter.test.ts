// The metering service against a real store and a moved clock: totals against the workload,
// restarts and two samplers not double-counting, runs' edges from events, destroys, hours, roll-up.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { container } from '../../store/conformance.js';
import { EventBus } from '../events/event-bus.js';
import { MeteringService, type CounterSource } from './meter.js';
import { account, splitByPeriod, USAGE_PERIOD_MS, type MeteredInstance } from './accounting.js';
import { subtree, usageReport } from './usage-report.js';

const GiB = 1024 ** 3;
const T0 = Date.UTC(2026, 0, 1, 10, 0, 0);
const iso = (ms: number) => new Date(ms).toISOString();

async function setup(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-meter-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.projects.insert({ id: 'p1', name: 'org', parentId: null, createdAt: iso(T0) });
  await store.projects.insert({ id: 'p2', name: 'team', parentId: 'p1', createdAt: iso(T0) });
  await store.projects.insert({ id: 'p3', name: 'other', parentId: null, createdAt: iso(T0) });
  const clock = { now: T0 };
  const events = new EventBus();
  // one busy CPU per container over its run, as its cgroup would show it (which stays after the exit, until removal)
  const counters: CounterSource = async (inst) => (inst.kind === 'vm' || inst.runStart === null ? undefined : { cpuNs: ((inst.runEnd ?? clock.now) - inst.runStart) * 1e6, memoryBytes: 100 * 1024 * 1024 });
  const meter = (intervalMs = 1000) => new MeteringService(store, events, counters, { intervalMs, clock: () => clock.now });
  return { store, clock, events, meter };
}

async function totals(store: Store, projectId?: string) {
  const projects = await store.projects.list();
  const r = await usageReport(store, projectId ? subtree(projects, [projectId]) : subtree(projects, projects.filter((p) => !p.parentId).map((p) => p.id)));
  return r;
}

test('a container of 1 CPU running 20 s is 20 instance-seconds and 20 CPU-seconds, across a restart of the service and two samplers', async (t) => {
  const { store, clock, meter } = await setup(t);
  await store.containers.insert(container('c1', 'web', {
    projectId: 'p2', status: 'running', createdAt: iso(T0), startedAt: iso(T0 + 1000),
    config: { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {}, cpus: 1, memoryBytes: GiB },
  }));
  clock.now = T0 + 11_000;
  const first = meter();
  await first.pass();
  // the service restarts: a new one over the same store goes on from the cursor
  const second = meter();
  await second.pass(); // same instant: nothing more
  clock.now = T0 + 16_000;
  // two samplers at once (an old leader finishing a pass while the new one begins): one wins
  const third = meter();
  await Promise.all([second.pass(), third.pass()]);
  assert.equal(second.stats.committed + third.stats.committed, 1);
  clock.now = T0 + 21_000;
  await third.pass();
  const r = await totals(store);
  const inst = r.instances.find((i) => i.id === 'c1');
  assert.equal(inst?.instanceSeconds, 20);
  assert.equal(inst?.cpuSeconds, 20);
  assert.equal(inst?.memoryGiBHours, 20 / 3600, 'the 1 GiB limit held for 20 s');
  assert.deepEqual(inst?.bySize, [{ kind: 'container', cpus: 1, memoryBytes: GiB, instanceSeconds: 20 }]);
  // rolled up: org includes team's, other has none
  const byId = new Map(r.projects.map((p) => [p.id, p]));
  assert.equal(byId.get('p2')?.own.instanceSeconds, 20);
  assert.equal(byId.get('p1')?.own.instanceSeconds, 0);
  assert.equal(byId.get('p1')?.total.instanceSeconds, 20);
  assert.equal(byId.get('p1')?.total.cpuSeconds, 20);
  assert.equal(byId.get('p3')?.total.instanceSeconds, 0);
  assert.equal(byId.get('p3')?.total.cpuSeconds, null, 'nothing measured is null, not 0');
  // a subtree alone
  const team = await totals(store, 'p2');
  assert.deepEqual(team.projects.map((p) => p.id), ['p2']);
});

test('a run ending between passes is charged to its end, its CPU to the exit (the ended run\'s counter, read once); a new run restarts the CPU counter; a destroy charges up to the event', async (t) => {
  const { store, clock, events, meter } = await setup(t);
  const m = meter(60_000);
  const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {}, cpus: 0.5 };
  await store.containers.insert(container('c1', 'job', { projectId: 'p1', status: 'running', createdAt: iso(T0), startedAt: iso(T0), config: cfg }));
  clock.now = T0 + 4000;
  await m.pass();
  // it exits at +7 s; seen later, at +30 s: 7 s, not 30
  await store.containers.update('c1', { status: 'exited', finishedAt: iso(T0 + 7000) });
  clock.now = T0 + 30_000;
  await m.pass();
  let c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 7);
  assert.equal(c1?.cpuSeconds, 7, 'the CPU after the last reading: the ended run\'s counter, read at the next pass');
  clock.now = T0 + 35_000;
  await m.pass();
  assert.equal((await totals(store)).instances.find((i) => i.id === 'c1')?.cpuSeconds, 7, 'read once: a later pass adds nothing');
  // started again at +40 s: a new run (its counter from 0); the start event accounts its time at
  // once but does not read the new counter (near 0 at a start): the next pass reads all of it
  m.start();
  t.after(() => m.stop());
  await store.containers.update('c1', { status: 'running', startedAt: iso(T0 + 40_000), finishedAt: null });
  clock.now = T0 + 50_000;
  events.publish({ type: 'container', action: 'start', id: 'c1', projectId: 'p1' });
  await waitUntil(async () => (await store.usage.cursor('c1'))?.accountedUntil === T0 + 50_000);
  c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 17);
  assert.equal(c1?.cpuSeconds, 7, 'not read at the start event');
  clock.now = T0 + 52_000;
  await m.pass();
  c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 19);
  assert.equal(c1?.cpuSeconds, 7 + 12, "the new run's whole counter at the next pass");
  assert.deepEqual(c1?.bySize, [{ kind: 'container', cpus: 0.5, memoryBytes: 0, instanceSeconds: 19 }]);
  assert.ok((c1?.memoryGiBHours ?? 0) > 0, 'no limit: the memory it used is charged');
  // removed while running: charged until the destroy, then nothing more
  await store.containers.delete('c1');
  clock.now = T0 + 80_000;
  events.publish({ type: 'container', action: 'destroy', id: 'c1', projectId: 'p1' });
  await waitUntil(async () => (await store.usage.cursor('c1'))?.closed === true);
  clock.now = T0 + 200_000;
  await m.pass();
  c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  // +52 s to the destroy at +80 s (the event's time, capped at the meter's clock)
  assert.equal(c1?.instanceSeconds, 47);
});

test('a run shorter than the interval: its die event reads the ended run\'s counter (all its CPU, lost before); a restart before the read keeps that reading out', async (t) => {
  const { store, clock, events } = await setup(t);
  // the cgroup's counter: one busy CPU over the run; `restartBeforeRead` makes the record show a new run by the time it is read
  let restartBeforeRead = false;
  const counters: CounterSource = async (inst) => {
    if (inst.runStart === null) return undefined;
    if (restartBeforeRead) await store.containers.update(inst.id, { status: 'running', startedAt: iso(clock.now), finishedAt: null });
    return { cpuNs: ((inst.runEnd ?? clock.now) - inst.runStart) * 1e6, memoryBytes: 0 };
  };
  const m = new MeteringService(store, events, counters, { intervalMs: 60_000, eventDelayMs: 50, clock: () => clock.now });
  m.start();
  t.after(() => m.stop());
  await m.settle();
  const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {}, cpus: 1 };
  const cpuOf = async (id: string) => (await totals(store)).instances.find((i) => i.id === id)?.cpuSeconds;
  await store.containers.insert(container('j1', 'job', { projectId: 'p1', status: 'running', createdAt: iso(T0), startedAt: iso(T0), config: cfg }));
  clock.now = T0;
  events.publish({ type: 'container', action: 'start', id: 'j1', projectId: 'p1' });
  await store.containers.update('j1', { status: 'exited', finishedAt: iso(T0 + 9000) });
  clock.now = T0 + 9000;
  events.publish({ type: 'container', action: 'die', id: 'j1', projectId: 'p1' });
  await waitUntil(async () => (await store.usage.cursor('j1'))?.accountedUntil === T0 + 9000);
  await m.settle();
  assert.equal(await cpuOf('j1'), 9, 'its 9 s of CPU, no pass having read it while it ran');

  await store.containers.insert(container('j2', 'job2', { projectId: 'p1', status: 'exited', createdAt: iso(T0), startedAt: iso(T0), finishedAt: iso(T0 + 5000), config: cfg }));
  restartBeforeRead = true;
  clock.now = T0 + 5000;
  events.publish({ type: 'container', action: 'die', id: 'j2', projectId: 'p1' });
  await waitUntil(async () => (await store.usage.cursor('j2'))?.accountedUntil === T0 + 5000);
  await m.settle();
  assert.equal(await cpuOf('j2'), null, 'a reading taken as a new run began is not the ended run\'s: left out');
});

test('a pass between the exit and its record charged past the end: the next accounting gives it back, once', async (t) => {
  const { store, clock, events, meter } = await setup(t);
  const m = meter(60_000);
  const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {}, cpus: 1, memoryBytes: GiB };
  await store.containers.insert(container('c1', 'job', { projectId: 'p1', status: 'running', createdAt: iso(T0), startedAt: iso(T0), config: cfg }));
  // it exits at +6.386 s; a pass at +6.406 s still reads "running" (the exit is stored later)
  clock.now = T0 + 6406;
  await m.pass();
  assert.equal((await totals(store)).instances.find((i) => i.id === 'c1')?.instanceSeconds, 6.406, 'charged to the pass');
  await store.containers.update('c1', { status: 'exited', finishedAt: iso(T0 + 6386) });
  // the die event's accounting (or the next pass) sees the run ended before the cursor
  m.start();
  t.after(() => m.stop());
  clock.now = T0 + 6500;
  events.publish({ type: 'container', action: 'die', id: 'c1', projectId: 'p1' });
  await waitUntil(async () => (await store.usage.cursor('c1'))?.accountedUntil === T0 + 6500);
  await m.settle();
  let c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 6.386, 'the 20 ms past the exit given back');
  assert.equal(c1?.memoryGiBHours, 6.386 / 3600, 'and the memory held over them');
  assert.equal((await store.usage.cursor('c1'))?.active, false);
  // later passes and the destroy change nothing: given back once
  clock.now = T0 + 70_000;
  await m.pass();
  await store.containers.delete('c1');
  events.publish({ type: 'container', action: 'destroy', id: 'c1', projectId: 'p1' });
  await waitUntil(async () => (await store.usage.cursor('c1'))?.closed === true);
  c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 6.386);
});

test("a pass between the start and its record missed the run's first moments: the next accounting charges the run from its start (the host's time), once", async (t) => {
  const { store, clock, meter } = await setup(t);
  const m = meter(60_000);
  const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {}, cpus: 1, memoryBytes: GiB };
  await store.containers.insert(container('c1', 'job', { projectId: 'p1', status: 'created', createdAt: iso(T0), config: cfg }));
  // the agent starts it at +4.990 s (its startedAt); a pass at +5 s still reads "created" (the start is stored later)
  clock.now = T0 + 5000;
  await m.pass();
  assert.equal((await store.usage.cursor('c1'))?.active, false);
  await store.containers.update('c1', { status: 'running', startedAt: iso(T0 + 4990) });
  clock.now = T0 + 15_000;
  await m.pass();
  let c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 10.01, 'from its start at +4.990 s, not from the pass that missed it');
  assert.equal(c1?.memoryGiBHours, 10.01 / 3600);
  // later passes go on from the cursor: the 10 ms are charged once
  clock.now = T0 + 20_000;
  await m.pass();
  c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 15.01);
  // it ends and starts again (a new run); a pass between the new start and its record misses it again: charged again from the start
  await store.containers.update('c1', { status: 'exited', finishedAt: iso(T0 + 21_000) });
  clock.now = T0 + 22_000;
  await m.pass();
  clock.now = T0 + 25_000;
  await m.pass(); // still "exited": the new run (started at +24.980 s) is not stored yet
  await store.containers.update('c1', { status: 'running', startedAt: iso(T0 + 24_980), finishedAt: null });
  clock.now = T0 + 30_000;
  await m.pass();
  c1 = (await totals(store)).instances.find((i) => i.id === 'c1');
  assert.equal(c1?.instanceSeconds, 21.03, 'the first run from +4.990 s to +21 s, the second from +24.980 s');
});

test("a run --rm's start, die and destroy make one commit after the request; a restart inside the wait loses neither run", async (t) => {
  const { store, clock, events } = await setup(t);
  const m = new MeteringService(store, events, async () => undefined, { intervalMs: 60_000, eventDelayMs: 200, clock: () => clock.now });
  const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {}, cpus: 1 };
  m.start();
  t.after(() => m.stop());
  await m.settle(); // the first pass (nothing yet)
  const committed0 = m.stats.committed;
  // created at T0, runs from +1 s to +4 s, removed at +5 s: the edges arrive faster than the wait
  await store.containers.insert(container('rm1', 'job', { projectId: 'p1', status: 'running', createdAt: iso(T0), startedAt: iso(T0 + 1000), config: cfg }));
  clock.now = T0 + 1000;
  events.publish({ type: 'container', action: 'start', id: 'rm1', projectId: 'p1' });
  await new Promise((r) => setImmediate(r));
  await store.containers.update('rm1', { status: 'exited', finishedAt: iso(T0 + 4000) });
  clock.now = T0 + 4000;
  events.publish({ type: 'container', action: 'die', id: 'rm1', projectId: 'p1' });
  await new Promise((r) => setTimeout(r, 20));
  await store.containers.delete('rm1');
  clock.now = T0 + 5000;
  events.publish({ type: 'container', action: 'destroy', id: 'rm1', projectId: 'p1' }); // its time is now: capped at the meter's clock
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(m.stats.committed, committed0, 'nothing written while the edges come');
  await waitUntil(async () => (await store.usage.cursor('rm1'))?.closed === true);
  assert.equal(m.stats.committed, committed0 + 1, 'one commit for the three edges');
  assert.equal((await totals(store)).instances.find((i) => i.id === 'rm1')?.instanceSeconds, 3, 'its run from +1 s to +4 s, though the record was gone at the commit');

  // a restart inside the wait: the first run's end is overwritten in the record before the commit
  await store.containers.insert(container('rs1', 'svc', { projectId: 'p1', status: 'running', createdAt: iso(T0 + 10_000), startedAt: iso(T0 + 10_000), config: cfg }));
  clock.now = T0 + 10_000;
  events.publish({ type: 'container', action: 'start', id: 'rs1', projectId: 'p1' });
  await new Promise((r) => setImmediate(r));
  await store.containers.update('rs1', { status: 'exited', finishedAt: iso(T0 + 12_000) });
  clock.now = T0 + 12_000;
  events.publish({ type: 'container', action: 'die', id: 'rs1', projectId: 'p1' });
  await new Promise((r) => setTimeout(r, 20));
  await store.containers.update('rs1', { status: 'running', startedAt: iso(T0 + 15_000), finishedAt: null });
  clock.now = T0 + 15_000;
  events.publish({ type: 'container', action: 'start', id: 'rs1', projectId: 'p1' });
  await new Promise((r) => setTimeout(r, 20));
  clock.now = T0 + 18_000;
  await m.settle();
  assert.equal((await store.usage.cursor('rs1'))?.accountedUntil, T0 + 15_000, 'accounted to its last edge');
  await m.pass(); // to +18 s: the second run's 3 s
  assert.equal((await totals(store)).instances.find((i) => i.id === 'rs1')?.instanceSeconds, 2 + 3, 'both runs: 2 s and 3 s');
});

test('a VM is metered by its size (no CPU counter); paused counts, saved does not; hours split', async (t) => {
  const { store, clock, meter } = await setup(t);
  const start = T0 + USAGE_PERIOD_MS - 10_000 - (T0 % USAGE_PERIOD_MS); // 10 s before an hour ends
  await store.vms.insert({
    id: 'v1', name: 'db', projectId: 'p3', config: { cpus: 2, memoryMiB: 2048 }, status: 'paused', pid: 1, exitCode: null,
    createdAt: iso(start), startedAt: iso(start), finishedAt: null, savedAt: null, agent: 'local',
  });
  clock.now = start + 30_000;
  const m = meter();
  await m.pass();
  await store.vms.update('v1', { status: 'saved', savedAt: iso(start + 40_000) });
  clock.now = start + 100_000;
  await m.pass();
  const r = await usageReport(store, await store.projects.list(), { series: true });
  const v1 = r.instances.find((i) => i.id === 'v1');
  assert.equal(v1?.instanceSeconds, 40);
  assert.equal(v1?.cpuSeconds, null);
  assert.equal(v1?.memoryGiBHours, (2 * 40) / 3600);
  assert.deepEqual(v1?.bySize, [{ kind: 'vm', cpus: 2, memoryBytes: 2048 * 1024 * 1024, instanceSeconds: 40 }]);
  assert.deepEqual(r.series?.filter((s) => s.projectId === 'p3').map((s) => s.instanceSeconds), [10, 30], 'split at the hour');
  // bounds are whole hours: the later hour alone
  const later = await usageReport(store, await store.projects.list(), { since: start + 20_000 });
  assert.equal(later.instances.find((i) => i.id === 'v1')?.instanceSeconds, 30);
});

test('accounting arithmetic: clipped to the cursor and now, CPU spread over hours, nothing before creation', () => {
  const inst: MeteredInstance = { id: 'i', projectId: 'p', name: 'n', kind: 'container', createdAt: 0, active: true, runStart: 0, runEnd: null, runId: 'r1', host: 'local' };
  const size = { millicpus: 1000, memoryBytes: GiB, diskBytes: 10 * GiB };
  const a = account(undefined, inst, size, USAGE_PERIOD_MS + 1000, { cpuNs: 3e9, memoryBytes: 0 });
  assert.deepEqual(a?.slices.map((s) => [s.periodStart, s.activeMs, s.cpuNs, s.diskMibMs]), [
    [0, USAGE_PERIOD_MS, Math.round((3e9 * USAGE_PERIOD_MS) / (USAGE_PERIOD_MS + 1000)), 10 * 1024 * USAGE_PERIOD_MS],
    [USAGE_PERIOD_MS, 1000, 3e9 - Math.round((3e9 * USAGE_PERIOD_MS) / (USAGE_PERIOD_MS + 1000)), 10 * 1024 * 1000],
  ]);
  assert.equal(account(a?.next, inst, size, USAGE_PERIOD_MS + 1000, undefined), undefined, 'nothing twice');
  assert.deepEqual(splitByPeriod(5, 5), []);
  // a counter that went down is a new counter (the run was replaced under the same start)
  const b = account(a?.next, inst, size, USAGE_PERIOD_MS + 2000, { cpuNs: 1e9, memoryBytes: 0 });
  assert.equal(b?.slices[0]?.cpuNs, 1e9);
  // charged active to +1 h 2 s, the record then says the run ended at +1 h 0.5 s: 1.5 s given back at the charged size, once
  const ended = { ...inst, active: false, runEnd: USAGE_PERIOD_MS + 500 };
  const c = account(b?.next, ended, { ...size, millicpus: 2000 }, USAGE_PERIOD_MS + 3000, undefined);
  assert.deepEqual(c?.slices.map((s) => [s.periodStart, s.millicpus, s.activeMs, s.cpuNs, s.diskMibMs]), [[USAGE_PERIOD_MS, 1000, -1500, null, -10 * 1024 * 1500]]);
  assert.equal(c?.next.active, false);
  assert.equal(account(c?.next, ended, size, USAGE_PERIOD_MS + 4000, undefined)?.slices.length ?? 0, 0, 'given back once');
  // a run that ended after the cursor is not touched
  assert.deepEqual(account(b?.next, { ...ended, runEnd: USAGE_PERIOD_MS + 2500 }, size, USAGE_PERIOD_MS + 3000, undefined)?.slices.map((s) => s.activeMs), [500]);
});

async function waitUntil(check: () => Promise<boolean>, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('network bytes: per-endpoint deltas, a new or re-created endpoint from 0, a restarted service measures from the baseline its cursor keeps, a move to another host from 0; a VM with a CPU counter', async (t) => {
  const { store, clock } = await setup(t);
  const events = new EventBus();
  type Ep = { hostIf: string; ifindex: number; rxBytes: number; txBytes: number };
  let eps: Ep[] = []; // c1's
  const c2eps: Ep[] = [];
  const counters: CounterSource = async (inst) => {
    if (inst.runStart === null) return undefined;
    const cpuNs = (clock.now - inst.runStart) * 1e6;
    if (inst.kind === 'vm') return { cpuNs, memoryBytes: 0 };
    const of = inst.id === 'c2' ? c2eps : eps;
    const sum = (k: 'rxBytes' | 'txBytes') => of.reduce((a, e) => a + e[k], 0);
    return { cpuNs, memoryBytes: 0, network: { rxBytes: sum('rxBytes'), txBytes: sum('txBytes'), rxPackets: 0, txPackets: 0, endpoints: of.map((e) => ({ ...e })) } };
  };
  const meter = () => new MeteringService(store, events, counters, { intervalMs: 1000, clock: () => clock.now });
  const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {}, cpus: 1 };
  await store.containers.insert(container('c1', 'web', { projectId: 'p1', status: 'running', createdAt: iso(T0), startedAt: iso(T0), config: cfg }));
  await store.vms.insert({
    id: 'v1', name: 'db', projectId: 'p3', config: { cpus: 1, memoryMiB: 512 }, status: 'running', pid: 1, exitCode: null,
    createdAt: iso(T0), startedAt: iso(T0), finishedAt: null, savedAt: null, agent: 'local',
  });
  const net = async () => {
    const i = (await totals(store)).instances.find((x) => x.id === 'c1');
    return [i?.networkRxBytes, i?.networkTxBytes];
  };
  const m = meter();
  // first accounting: the endpoint began at 0 after the instance's creation, all of it is new
  eps = [{ hostIf: 'nva', ifindex: 5, rxBytes: 1000, txBytes: 500 }];
  clock.now = T0 + 10_000;
  await m.pass();
  assert.deepEqual(await net(), [1000, 500]);
  eps[0]!.rxBytes = 3000;
  clock.now = T0 + 20_000;
  await m.pass();
  assert.deepEqual(await net(), [3000, 500]);
  // a second endpoint (connected since): all of its counter
  eps.push({ hostIf: 'nvb', ifindex: 7, rxBytes: 100, txBytes: 50 });
  clock.now = T0 + 30_000;
  await m.pass();
  assert.deepEqual(await net(), [3100, 550]);
  // the first re-created (same name, new ifindex) and past its old counter already: all of it, not the difference
  eps[0] = { hostIf: 'nva', ifindex: 9, rxBytes: 4000, txBytes: 600 };
  eps[1]!.rxBytes = 300;
  clock.now = T0 + 40_000;
  await m.pass();
  assert.deepEqual(await net(), [7300, 1150]);
  // counters that went down under the same ifindex are new counters too (the device's were reset)
  eps[1] = { ...eps[1]!, rxBytes: 20, txBytes: 0 };
  clock.now = T0 + 50_000;
  await m.pass();
  assert.deepEqual(await net(), [7320, 1150]);
  // a restarted service (or a new leader) measures from the baseline committed with the cursor
  eps[1]!.rxBytes = 5020;
  const again = meter();
  clock.now = T0 + 60_000;
  await again.pass();
  assert.deepEqual(await net(), [12320, 1150], 'the span across the restart is measured from the cursor\'s baseline');
  eps[1]!.rxBytes = 5120;
  clock.now = T0 + 70_000;
  await again.pass();
  assert.deepEqual(await net(), [12420, 1150]);
  // the old service, if it accounts again, reads the same cursor and baseline: each span once
  eps[1]!.rxBytes = 5220;
  clock.now = T0 + 80_000;
  await m.pass();
  await again.pass();
  assert.deepEqual(await net(), [12520, 1150], 'two services over one store count a span once');
  // moved to another host: its endpoints there are new whatever their names and ifindexes (from 0)
  await store.containers.update('c1', { host: 'host-b' });
  eps = [{ hostIf: 'nva', ifindex: 9, rxBytes: 4100, txBytes: 700 }, { hostIf: 'nvb', ifindex: 7, rxBytes: 5300, txBytes: 10 }];
  clock.now = T0 + 82_000;
  await m.pass();
  assert.deepEqual(await net(), [21920, 1860], 'after a move every counter is new');
  // accounted first while only created (no reading), then running: its endpoint's bytes are all new, none unmeasured
  await store.containers.insert(container('c2', 'late', { projectId: 'p1', status: 'created', createdAt: iso(T0 + 80_000), config: cfg }));
  clock.now = T0 + 85_000;
  await m.pass();
  await store.containers.update('c2', { status: 'running', startedAt: iso(T0 + 86_000) });
  c2eps.push({ hostIf: 'nvc', ifindex: 11, rxBytes: 64, txBytes: 32 });
  clock.now = T0 + 90_000;
  await m.pass();
  const c2 = (await totals(store)).instances.find((i) => i.id === 'c2');
  assert.deepEqual([c2?.networkRxBytes, c2?.networkTxBytes], [64, 32]);
  // the VM: its CPU counter is charged like a container's
  const v1 = (await totals(store)).instances.find((i) => i.id === 'v1');
  assert.equal(v1?.cpuSeconds, 90);
  assert.equal(v1?.networkRxBytes, null, 'no endpoint counters: not measured');
});
