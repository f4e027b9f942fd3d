// The metrics registry alone: per instance (two side by side), the text format line by line, values that move.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { container } from '../../store/conformance.js';
import { ResourceExhausted } from '../../core/errors.js';
import { EventBus } from '../events/event-bus.js';
import type { Scheduler } from '../scheduler/types.js';
import { Metrics } from './metrics.js';
import { MeteringService } from './meter.js';
import { quotaEventPublisher, withQuotaEvents } from './quota-events.js';
import { runAsActor } from '../events/actor.js';

async function storeFor(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-metrics-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.projects.insert({ id: 'p1', name: 'a', parentId: null, createdAt: new Date().toISOString() });
  return store;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (-?[0-9.e+-]+|[Nn]a[Nn]|[+-]Inf)$/;

function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || /^# (HELP|TYPE) /.test(line)) continue;
    const m = SAMPLE.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    out.set(m[1]! + (m[2] ?? ''), Number(m[3]));
  }
  return out;
}

test('metrics: a registry per instance, strict text format, requests by template, instances, placements and quota entries move', async (t) => {
  const store = await storeFor(t);
  const events = new EventBus();
  const hosts = async () => [{ name: 'h1', state: 'up' as const, disabled: false, zone: 'default', labels: {}, cpus: 4, memoryBytes: 8e9, diskBytes: 1e11, runtimes: ['runc'], architecture: 'amd64', allocationRatios: { cpu: 2, memory: 1, disk: 1 } }];
  const warmPool = async () => ({ perImage: 2, maxImages: 4, ready: 3, hotImages: 1, hits: 5, misses: 2, created: 8, failed: 0 });
  const a = new Metrics({ store, events, hosts, warmPool });
  const b = new Metrics({ store, events });
  t.after(() => {
    a.close();
    b.close();
  });
  a.observeRequest('GET', '/containers/{id}', 404, 0.002, false);
  a.observeRequest('GET', '/events', 200, 30, true);
  await store.containers.insert(container('c1', 'web', { status: 'running' }));
  await store.containers.insert(container('c2', 'job', { status: 'exited', runtime: 'vm', config: { image: 'x', env: [], restart: { name: 'no' }, autoRemove: false, labels: {}, runtime: 'vm' } }));
  events.publish({ type: 'operation', action: 'create', id: 'o1', projectId: 'p1', attributes: { kind: 'image.pull' } });
  events.publish({ type: 'operation', action: 'succeeded', id: 'o1', projectId: 'p1', attributes: { kind: 'image.pull' } });
  const scheduler = a.instrumentScheduler({
    place: async (req: { consumerId: string }) => {
      if (req.consumerId === 'none') throw new ResourceExhausted('no host can take this container');
      return { host: 'h1' };
    },
    extra: () => 'kept',
  } as unknown as Scheduler & { extra(): string });
  await scheduler.place({ consumerId: 'x' } as never);
  await assert.rejects(scheduler.place({ consumerId: 'none' } as never));
  assert.equal(scheduler.extra(), 'kept', 'the scheduler\'s other members pass through');
  // quota entries committed through the wrapped store: counted and published with the actor; a rolled-back one is not
  const quotaEvents: string[] = [];
  events.on((e) => e.type === 'quota' && quotaEvents.push(`${e.action}:${e.actor}:${e.projectId}`));
  const audited = withQuotaEvents(store, quotaEventPublisher(events, (k) => a.observeQuota(k)));
  await runAsActor('tina', () => audited.transaction(async () => audited.appendQuotaAudit([{ seq: 1, project: 'p1', json: JSON.stringify({ seq: 1, kind: 'admit', project: 'p1', instance: 'c1', reason: 'fits' }) }])));
  await assert.rejects(audited.transaction(async () => {
    await audited.appendQuotaAudit([{ seq: 2, project: 'p1', json: JSON.stringify({ seq: 2, kind: 'reject', project: 'p1', reason: 'no' }) }]);
    throw new Error('rolled back');
  }));
  assert.deepEqual(quotaEvents, ['admit:tina:p1']);
  assert.equal((await store.queryQuotaAudit({ limit: 10 })).length, 1);

  const text = (await a.text()).text;
  const s = samples(text);
  assert.equal(s.get('nimbus_api_requests_total{method="GET",route="/containers/{id}",status="404"}'), 1);
  assert.equal(s.get('nimbus_api_request_duration_seconds_count{method="GET",route="/containers/{id}",status="404"}'), 1);
  assert.equal(s.get('nimbus_api_request_duration_seconds_count{method="GET",route="/events",status="200"}'), undefined, 'streams are counted, not timed');
  assert.equal(s.get('nimbus_api_requests_total{method="GET",route="/events",status="200"}'), 1);
  assert.equal(s.get('nimbus_instances{kind="container",state="running"}'), 1);
  assert.equal(s.get('nimbus_instances{kind="secure",state="exited"}'), 1);
  assert.equal(s.get('nimbus_operations_total{kind="image.pull",state="succeeded"}'), 1);
  assert.equal(s.get('nimbus_scheduler_placements_total{outcome="placed"}'), 1);
  assert.equal(s.get('nimbus_scheduler_placements_total{outcome="no-valid-host"}'), 1);
  assert.equal(s.get('nimbus_quota_decisions_total{kind="admit"}'), 1);
  assert.equal(s.get('nimbus_host_allocatable{host="h1",resource="cpus"}'), 8);
  assert.equal(s.get('nimbus_warm_pool_ready{host="h1"}'), 3);
  assert.equal(s.get('nimbus_warm_pool_claims_total{host="h1",outcome="hit"}'), 5);
  assert.ok((s.get('nimbus_process_cpu_seconds_total') ?? -1) >= 0, 'the process\'s own metrics');
  // b has its own registry: none of a's requests; both see the bus
  const sb = samples((await b.text()).text);
  assert.equal(sb.get('nimbus_api_requests_total{method="GET",route="/containers/{id}",status="404"}'), undefined);
  assert.equal(sb.get('nimbus_events_total{type="operation",action="create"}'), 1);
  // values move: another container, another scrape (the warm pool's counters are the agent's, not added up)
  await store.containers.insert(container('c3', 'web2', { status: 'running' }));
  const again = samples((await a.text()).text);
  assert.equal(again.get('nimbus_instances{kind="container",state="running"}'), 2);
  assert.equal(again.get('nimbus_warm_pool_claims_total{host="h1",outcome="hit"}'), 5);
});

test('metrics: the metering service\'s readings per instance, network counters from the instance\'s side', async (t) => {
  const store = await storeFor(t);
  const events = new EventBus();
  const now = Date.now();
  await store.containers.insert(container('c1', 'web', { projectId: 'p1', status: 'running', createdAt: new Date(now - 10_000).toISOString(), startedAt: new Date(now - 10_000).toISOString() }));
  await store.containers.insert(container('c2', 'bare', { projectId: 'p1', status: 'running', createdAt: new Date(now - 10_000).toISOString(), startedAt: new Date(now - 10_000).toISOString() }));
  const meter = new MeteringService(store, events, async (inst) => inst.id === 'c1'
    ? { cpuNs: 2e9, memoryBytes: 1000, network: { rxBytes: 1500, txBytes: 700, rxPackets: 3, txPackets: 2, endpoints: [{ hostIf: 'nv1', ifindex: 4, rxBytes: 1500, txBytes: 700 }] } }
    : { cpuNs: 1e9, memoryBytes: 500 }, { intervalMs: 60_000 });
  const metrics = new Metrics({ store, events, meter: () => meter });
  t.after(() => metrics.close());
  await meter.pass();
  const s = samples((await metrics.text()).text);
  const labels = '{instance="c1",name="web",project="p1",kind="container"}';
  assert.equal(s.get(`nimbus_instance_cpu_seconds_total${labels}`), 2);
  assert.equal(s.get(`nimbus_instance_network_receive_bytes_total${labels}`), 1500);
  assert.equal(s.get(`nimbus_instance_network_transmit_bytes_total${labels}`), 700);
  assert.equal(s.get(`nimbus_instance_network_receive_packets_total${labels}`), 3);
  assert.equal(s.get(`nimbus_instance_network_transmit_packets_total${labels}`), 2);
  assert.equal(s.get('nimbus_instance_network_receive_bytes_total{instance="c2",name="bare",project="p1",kind="container"}'), undefined, 'no endpoint: no sample');
  assert.equal(s.get('nimbus_instance_cpu_seconds_total{instance="c2",name="bare",project="p1",kind="container"}'), 1);
});
