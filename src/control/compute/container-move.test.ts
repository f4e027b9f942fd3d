/**
 * The cold move's state machine (container-move.ts) against fake hosts: what moves (the layer's
 * and the volume's bytes, the record, the volume's row, the claims), what stays the same (id,
 * quota), what a failure at each step leaves (the container back at the source, running again
 * if it ran; nothing at the destination), and the refusals. The real hosts are
 * test/move-across.e2e.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { EventBus, type NimbusEvent } from '../events/event-bus.js';
import { OperationService } from '../operations/operations.js';
import { QuotaService } from '../quota/quota-service.js';
import { ImageService } from '../images/image-service.js';
import { NetworkService } from '../networks/network-service.js';
import { VolumeService } from '../volumes/volume-service.js';
import { ContainerService } from './container-service.js';
import { Conflict, Internal, Unavailable, hasCode } from '../../core/errors.js';
import type { Agent, VmCreateRequest, VmHostState } from '../../agent/agent.js';
import { KeyedLock } from '../../core/keyed-lock.js';
import { RecordingScheduler } from './test-scheduler.js';
import type { HostAgents } from './hosts.js';
import { FakeAgent, fakeImage } from '../testing/fake-agent.js';
import { BEFORE_SWITCH, MOVE_TRANSITIONS, MoveMachine, carry, chooseDestination, moveRefusal, type MovePhase } from './container-move.js';
import { liveHostRefusal, liveMoveRefusal } from './live-move-rules.js';
import { PassThrough } from 'node:stream';
import type { Explanation, Scheduler } from '../scheduler/types.js';
import { evacuate, evacuationPlan } from './host-evacuate.js';
import { HealingService } from './healing.js';
import { runAsActor } from '../events/actor.js';
import type { ContainerRecord, VmConfig } from '../../store/records.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

function overlayHost(name: string): FakeAgent {
  const a = new FakeAgent({ name });
  a.override('info', async () => ({
    name, hostname: name, cgroupLayout: 'v2', snapshotter: 'overlayfs', runtimes: [{ name: 'runc', usable: true, default: true }],
    snapshotters: [{ name: 'overlayfs', usable: true }], kernel: '6.1.0-fake', cpus: 4, memoryBytes: 8 * 1024 ** 3,
    liveMove: { usable: true, criu: '/usr/local/lib/nimbus/criu/criu', version: '4.1.1' },
  }));
  a.override('pullImage', async (ref) => fakeImage(ref, { manifestDigest: DIGEST, chainId: DIGEST }));
  return a;
}

async function world(t: { after(fn: () => Promise<void> | void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-move-'));
  const store: Store = await openStore(join(dir, 'nimbus.db'));
  const local = overlayHost('local');
  const b = overlayHost('b');
  const agents: Record<string, Agent> = { local, b };
  const down = new Set<string>();
  const hosts: HostAgents = {
    localName: 'local', names: () => Object.keys(agents), has: (n) => n in agents, isDown: (n) => down.has(n),
    get: (n) => {
      const a = agents[n];
      if (!a) throw new Unavailable(`no such host ${n}`);
      return a;
    },
  };
  await store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const events = new EventBus();
  const seen: NimbusEvent[] = [];
  events.on((e) => void seen.push(e));
  const quota = await QuotaService.open(store);
  await quota.ensureProject('p1', null);
  const operations = new OperationService(store, events);
  const scheduler = new RecordingScheduler(hosts);
  const images = new ImageService(store, local, events, operations);
  images.useHosts(hosts);
  const networks = new NetworkService(store, local, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/16' });
  networks.useHosts(hosts);
  const containers = new ContainerService(store, hosts, scheduler, images, events, quota, operations, networks);
  const volumes = new VolumeService(store, hosts, scheduler, quota, events);
  containers.useVolumes(volumes);
  const now = new Date().toISOString();
  await store.images.upsert({ digest: DIGEST, projectId: 'p1', indexDigest: null, configDigest: DIGEST, config: { config: { Cmd: ['sh'] } }, layers: [], chainId: DIGEST, size: 1, createdAt: now });
  await store.images.setTag({ projectId: 'p1', name: 'example.test/busybox:latest', digest: DIGEST, updatedAt: now });
  await store.images.addHost(DIGEST, 'local');
  t.after(async () => {
    containers.shutdown();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const run = async (extra: Record<string, unknown> = {}, start = true) => containers.create(
    { image: 'example.test/busybox:latest', cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra } as never,
    'p1', { projectId: 'p1' }, { start, placement: { host: 'local' }, mayUseHostNetwork: true },
  );
  return { store, hosts, down, local, b, containers, volumes, networks, scheduler, quota, seen, run };
}

test('the state machine: transitions are checked, and only the phases before the switch roll back', () => {
  const m = new MoveMachine();
  for (const p of ['stopping', 'claiming', 'preparing', 'copying-layer', 'copying-volumes', 'creating', 'copying-log', 'starting', 'switching', 'cleaning', 'done'] as MovePhase[]) {
    assert.equal(m.rollsBack, BEFORE_SWITCH.has(m.phase));
    m.to(p);
  }
  assert.equal(m.rollsBack, false, 'done does not roll back');
  const live = new MoveMachine();
  for (const p of ['claiming', 'preparing', 'checkpointing', 'copying-layer', 'copying-volumes', 'copying-checkpoint', 'restoring', 'copying-log', 'switching', 'cleaning', 'done'] as MovePhase[]) {
    assert.equal(live.rollsBack, BEFORE_SWITCH.has(live.phase));
    live.to(p);
  }
  const restored = new MoveMachine();
  for (const p of ['claiming', 'preparing', 'checkpointing', 'copying-layer', 'copying-volumes', 'copying-checkpoint', 'restoring'] as MovePhase[]) restored.to(p);
  assert.throws(() => restored.to('starting'), Internal, 'a restored container is not started');
  assert.equal(restored.rollsBack, true, 'restored at the destination but not switched: rolls back');
  assert.throws(() => m.to('rolling-back'), (e: unknown) => hasCode(e, 'Internal'));
  const n = new MoveMachine();
  assert.throws(() => n.to('switching'), Internal, 'no switch before the copy');
  n.to('claiming');
  n.to('rolling-back');
  n.to('rolled-back');
  assert.deepEqual(MOVE_TRANSITIONS['rolled-back'], []);
  for (const [from, tos] of Object.entries(MOVE_TRANSITIONS)) {
    if (BEFORE_SWITCH.has(from as MovePhase)) assert.ok(tos.includes('rolling-back'), `${from} can roll back`);
    else assert.ok(!tos.includes('rolling-back'), `${from} (after the switch) cannot`);
  }
});

test('a running container with a volume moves: its layer and volume bytes, record, volume row and claims; quota unchanged', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'mover', mounts: [{ type: 'volume', source: 'data', target: '/data' }] });
  const vol = (await w.store.volumes.byName('p1', 'data'))!;
  w.local.layers.set(c.id, Buffer.from('layer-bytes'));
  w.local.volumeData.set(vol.id, Buffer.from('volume-bytes'));
  w.local.logFiles.set(c.id, Buffer.from('log-generations'));
  const quotaBefore = JSON.stringify(w.quota.show('p1').resources);
  const r = await runAsActor('alice', () => w.containers.move(c.id, 'b'));
  assert.deepEqual([r.from, r.to, r.restarted, r.layer.bytes, r.volumes[0]?.bytes, r.log], ['local', 'b', true, 11, 12, { bytes: 15, files: 1 }]);
  assert.equal(w.b.logFiles.get(c.id)?.toString(), 'log-generations', 'its log arrived');
  const atB = w.b.callNames();
  assert.ok(atB.indexOf('createContainer') < atB.indexOf('importContainerLogs') && atB.indexOf('importContainerLogs') < atB.indexOf('startContainer'),
    `the log goes into the created container before its start: ${atB.join(', ')}`);
  assert.equal(w.local.calls('exportContainerLogs').length, 1);
  const moveEvent = w.seen.find((e) => e.type === 'container' && e.id === c.id && e.action === 'move');
  assert.deepEqual([moveEvent?.actor, moveEvent?.attributes?.from, moveEvent?.attributes?.to], ['alice', 'local', 'b'], 'the move event says who, from and to (the audit trail)');
  const after = await w.containers.get(c.id);
  assert.deepEqual([after.id, after.host, after.status, after.stoppedByUser], [c.id, 'b', 'running', false], 'same id, on b, running');
  assert.equal(w.b.layers.get(c.id)?.toString(), 'layer-bytes', 'the writable layer arrived');
  assert.equal(w.b.volumeData.get(vol.id)?.toString(), 'volume-bytes', 'the volume\'s data arrived');
  assert.equal((await w.store.volumes.get(vol.id))?.host, 'b', 'the volume\'s row names b');
  assert.deepEqual([w.scheduler.claims.get(c.id), w.scheduler.claims.get(vol.id)], ['b', 'b'], 'the claims moved');
  assert.deepEqual([w.local.containers.has(c.id), w.local.volumes.has(vol.id)], [false, false], 'nothing left at the source');
  assert.equal(w.b.containers.get(c.id)?.state.status, 'running');
  assert.equal(w.b.calls('createContainer')[0]?.[0].mounts?.[0]?.type, 'volume', 'created from the saved request, mounts and all');
  assert.equal(JSON.stringify(w.quota.show('p1').resources), quotaBefore, 'no charge changed');
  const actions = w.seen.filter((e) => e.type === 'container' && e.id === c.id).map((e) => e.action);
  assert.deepEqual(actions.slice(actions.indexOf('die')), ['die', 'move', 'start'], 'die, move, start');
});

test('a stopped container moves stopped', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'idle' }, false);
  const r = await w.containers.move(c.id, 'b');
  assert.equal(r.restarted, false);
  const after = await w.containers.get(c.id);
  assert.deepEqual([after.host, after.status], ['b', 'created']);
  assert.equal(w.b.calls('startContainer').length, 0, 'not started at the destination');
});

for (const step of ['importContainerLayer', 'importVolume', 'createContainer', 'importContainerLogs', 'startContainer'] as const) {
  test(`a failure at the destination's ${step} rolls back: running at the source as before, nothing at the destination`, async (t) => {
    const w = await world(t);
    const c = await w.run({ name: `back-${step}`, mounts: [{ type: 'volume', source: 'data', target: '/data' }] });
    const vol = (await w.store.volumes.byName('p1', 'data'))!;
    w.local.layers.set(c.id, Buffer.from('layer'));
    w.local.volumeData.set(vol.id, Buffer.from('volume'));
    w.local.logFiles.set(c.id, Buffer.from('log'));
    w.b.failNext(step, new Internal(`${step}: refused by the test`));
    await assert.rejects(w.containers.move(c.id, 'b'), /refused by the test/);
    const after = await w.containers.get(c.id);
    assert.deepEqual([after.host, after.status], ['local', 'running'], 'on the source, running');
    assert.equal(w.local.containers.get(c.id)?.state.status, 'running', 'started again at the source');
    assert.equal(w.local.layers.get(c.id)?.toString(), 'layer', 'the source\'s layer untouched');
    assert.equal(w.local.volumeData.get(vol.id)?.toString(), 'volume', 'and its volume');
    assert.equal(w.local.logFiles.get(c.id)?.toString(), 'log', 'and its log');
    assert.deepEqual([w.b.containers.has(c.id), w.b.layers.has(c.id), w.b.volumes.has(vol.id), w.b.logFiles.has(c.id)], [false, false, false, false], 'nothing at the destination');
    assert.equal((await w.store.volumes.get(vol.id))?.host, 'local');
    assert.deepEqual([w.scheduler.claims.get(c.id), w.scheduler.claims.get(vol.id)], ['local', 'local'], 'the claims back');
    assert.ok(w.seen.some((e) => e.type === 'container' && e.id === c.id && e.action === 'move-failed'));
  });
}

test('a move that fails on a host error naming a host path: the container\'s event (its project reads it) names none', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'pathless' });
  w.local.layers.set(c.id, Buffer.from('layer'));
  const missing = '/var/lib/nimbus-move-test/snapshots/12/fs';
  // Node's own error, as an embedded agent's fs call throws it
  w.b.failNext('importContainerLayer', await readFile(missing).then(() => assert.fail('read'), (e: unknown) => e as Error));
  await assert.rejects(w.containers.move(c.id, 'b'));
  const failed = w.seen.find((e) => e.type === 'container' && e.id === c.id && e.action === 'move-failed');
  const error = String(failed?.attributes?.error);
  assert.match(error, /ENOENT/);
  assert.ok(!error.includes(missing), error);
});

test('bytes that arrive other than they left (DataLoss) roll back', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'lossy' });
  w.local.layers.set(c.id, Buffer.from('layer'));
  w.b.override('importContainerLayer', async (_id, _chain, bytes) => {
    for await (const _ of bytes) { /* read */ }
    return { bytes: 5, digest: `sha256:${'0'.repeat(64)}`, entries: 1, unpackedBytes: 5 };
  });
  await assert.rejects(w.containers.move(c.id, 'b'), (e: unknown) => hasCode(e, 'DataLoss'));
  assert.deepEqual([(await w.containers.get(c.id)).host, (await w.containers.get(c.id)).status], ['local', 'running']);
});

test('refusals: host network, a shared namespace, a bind mount, paused, live, the same host, a host the scheduler rejects', async (t) => {
  const w = await world(t);
  const rec = (over: Omit<Partial<ContainerRecord>, 'config'> & { config?: Partial<ContainerRecord['config']> }): ContainerRecord => ({
    id: 'x'.repeat(64), name: 'x', projectId: 'p1', imageDigest: DIGEST, status: 'running', runtime: 'runc', pid: 1, exitCode: null, oomKilled: false,
    restartCount: 0, stoppedByUser: false, createdAt: '', startedAt: null, finishedAt: null, warnings: [], host: 'local',
    ...over, config: { image: 'i', cmd: [], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, ...(over.config ?? {}) } as ContainerRecord['config'],
  });
  const why = async (c: ContainerRecord) => String(await moveRefusal(w, c));
  assert.match(await why(rec({ config: { network: 'host' } })), /host network/);
  assert.match(await why(rec({ config: { network: 'container:other' } })), /shares the network namespace/);
  assert.match(await why(rec({ config: { mounts: [{ type: 'bind', source: '/srv', target: '/srv' }] } })), /host paths/);
  assert.match(await why(rec({ status: 'paused' })), /unpause/);
  const owner = await w.run({ name: 'owner' });
  await w.run({ name: 'sidecar', network: `container:${owner.name}` });
  assert.match(await why(owner), /sidecar share/);
  await assert.rejects(w.containers.startMove(owner.id, { live: true }), /sidecar share/, 'live or cold, what may not move may not move');
  await assert.rejects(w.containers.startMove('sidecar', { to: 'b' }), /shares the network namespace/);
  const plain = await w.run({ name: 'plain' });
  const sched = (explained: Explanation): Scheduler => ({ ...w.scheduler, explain: async () => explained, place: w.scheduler.place.bind(w.scheduler), release: async () => undefined, moveClaim: async () => undefined });
  const deps = (s: Scheduler) => ({ hosts: { localName: 'local', names: () => ['local', 'b'], has: (n: string) => ['local', 'b'].includes(n), get: () => w.local as Agent, isDown: (n: string) => n === 'down' }, scheduler: s, store: w.store });
  await assert.rejects(chooseDestination(deps(sched({ hosts: [] })), plain, 'local'), /on host local already/);
  await assert.rejects(chooseDestination(deps(sched({ hosts: [{ host: 'b', rejectedBy: { filter: 'enabled', reason: 'disabled by an administrator' } }] })), plain, 'b'), /host b cannot take container plain: enabled: disabled/);
  await assert.rejects(chooseDestination(deps(sched({ hosts: [{ host: 'b', rejectedBy: { filter: 'runtime', reason: 'no crun' } }] })), plain, 'b'), /runtime: no crun/);
  assert.equal(await chooseDestination(deps(sched({ hosts: [{ host: 'local', weight: 9 }, { host: 'b', weight: 1 }] })), plain, undefined), 'b', 'without --to: the best host other than its own');
  await assert.rejects(chooseDestination(deps(sched({ hosts: [{ host: 'local', weight: 9 }] })), plain, undefined), /no other host can take/);
});

test('evacuate: the host disabled, its containers moved to the scheduler\'s choice, those that cannot move skipped and named', async (t) => {
  const w = await world(t);
  w.scheduler.explain = async () => ({ hosts: [{ host: 'local', rejectedBy: { filter: 'enabled', reason: 'disabled' } }, { host: 'b', weight: 1 }] });
  const a = await w.run({ name: 'a' });
  const idle = await w.run({ name: 'idle' }, false);
  await w.run({ name: 'hn', network: 'host' });
  const disabled: string[] = [];
  const seen: unknown[] = [];
  const deps = {
    store: w.store, hosts: w.hosts, scheduler: w.scheduler, containers: w.containers, projectId: 'p1',
    operations: { start: async () => { throw new Error('not used'); } },
    vms: { migrate: async () => { throw new Error('no VM here'); } },
    disable: async (h: string) => void disabled.push(h),
  };
  // the dry run: what would happen, nothing changed (not even disabled)
  const plan = await evacuationPlan(deps as never, 'local');
  assert.deepEqual(plan.instances.map((i) => [i.name, i.state, i.to ?? null, i.mode ?? null]).sort(), [['a', 'pending', 'b', 'live'], ['hn', 'skipped', null, null], ['idle', 'pending', 'b', 'cold']]);
  assert.equal(plan.instances.find((i) => i.name === 'a')!.reason, undefined, 'a running runc container between hosts with CRIU: live');
  assert.match(plan.instances.find((i) => i.name === 'idle')!.reason ?? '', /cold: container idle is created: only a running container moves live/, 'why not live, named');
  assert.deepEqual(disabled, [], 'a dry run disables nothing');
  assert.deepEqual([(await w.containers.get(a.id)).host], ['local'], 'and moves nothing');
  await assert.rejects(evacuationPlan(deps as never, 'nowhere'), /no such host/);
  // CRIU refuses a's checkpoint (an established connection): it rolls back at the source, then moves cold
  w.local.failNext('checkpointContainer', new Conflict('container a has established TCP connections'));
  await assert.rejects(evacuate(deps as never, 'local', 'test', (p) => void seen.push(p)),
    (e: unknown) => hasCode(e, 'Conflict') && /1 of 3 instances did not leave host local: container hn \(skipped: .*host network/.test(String(e)));
  assert.deepEqual(disabled, ['local'], 'disabled first');
  assert.deepEqual([(await w.containers.get(a.id)).host, (await w.containers.get(a.id)).status], ['b', 'running']);
  assert.deepEqual([(await w.containers.get(idle.id)).host, (await w.containers.get(idle.id)).status], ['b', 'created']);
  const last = seen.at(-1) as { instances: Array<{ name: string; state: string; to?: string; mode?: string; reason?: string }> };
  assert.deepEqual(last.instances.map((i) => [i.name, i.state, i.to ?? null, i.mode ?? null]).sort(), [['a', 'moved', 'b', 'cold'], ['hn', 'skipped', null, null], ['idle', 'moved', 'b', 'cold']]);
  assert.match(last.instances.find((i) => i.name === 'a')!.reason ?? '', /cold: the live move failed: .*established TCP connections/);
});

test('a tree that stops moving is given up (Unavailable), and its source stream destroyed', async () => {
  const out = new PassThrough();
  out.write(Buffer.from('a little, then nothing'));
  const into = async (bytes: AsyncIterable<Uint8Array>) => {
    for await (const _ of bytes) { /* a destination that reads what comes */ }
    return { bytes: 0, digest: '', entries: 0, unpackedBytes: 0 };
  };
  await assert.rejects(carry(out, into, () => undefined, 'the test tree', 100), (e: unknown) => hasCode(e, 'Unavailable') && /nothing moved/.test(String(e)));
  assert.ok(out.destroyed, 'the source stream is destroyed');
});

test('a destination whose agent speaks protocol 5 is refused before the container is touched', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'untouched' });
  Object.assign(w.b, { protocolVersion: async () => 5 });
  await assert.rejects(w.containers.move(c.id, 'b'), (e: unknown) => hasCode(e, 'Conflict') && /protocol 5 .*needs protocol 6/.test(String(e)));
  assert.equal(w.local.calls('stopContainer').length, 0, 'not stopped');
  assert.deepEqual([(await w.containers.get(c.id)).host, (await w.containers.get(c.id)).status], ['local', 'running']);
});

test('agents of protocol 7 move it without its log, and say so', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'older' });
  w.local.logFiles.set(c.id, Buffer.from('stays'));
  Object.assign(w.b, { protocolVersion: async () => 7 });
  const r = await w.containers.move(c.id, 'b');
  assert.match(r.log.skipped ?? '', /host b's agent speaks protocol 7 and cannot carry a container's log when it moves \(importContainerLogs needs protocol 8\)/);
  assert.deepEqual([r.log.bytes, w.b.calls('importContainerLogs').length, w.local.calls('exportContainerLogs').length], [0, 0, 0], 'nothing asked of either host');
  assert.deepEqual([(await w.containers.get(c.id)).host, (await w.containers.get(c.id)).status], ['b', 'running']);
});

test('its networks move with it: the create\'s endpoints from the saved request, one connected later connected again, same addresses, names as now', async (t) => {
  const w = await world(t);
  await w.networks.create({ name: 'front' }, 'p1');
  await w.networks.create({ name: 'back' }, 'p1');
  const c = await w.run({ name: 'web', network: 'front', aliases: ['www'] });
  await w.networks.connect('back', await w.containers.get(c.id));
  const leases = await w.store.networks.leases({ instanceId: c.id });
  await w.containers.move(c.id, 'b');
  const req = w.b.calls('createContainer')[0]![0];
  assert.ok(req.network?.mode === 'networks');
  assert.deepEqual(req.network.endpoints.map((e) => [e.network.name, e.address, e.dnsNames]), [['front', leases.find((l) => l.ifIndex === 0)!.address, ['web', 'www']]]);
  const connects = w.b.calls('connectContainer');
  assert.deepEqual(connects.map(([id, e]) => [id, e.network.name, e.address, e.dnsNames]), [[c.id, 'back', leases.find((l) => l.ifIndex === 1)!.address, ['web', 'www']]]);
  assert.deepEqual(new Set([...w.b.networks.values()].map((n) => n.name)), new Set(['front', 'back']), 'both networks laid out on b');
  assert.deepEqual((await w.store.networks.leases({ instanceId: c.id })).map((l) => l.address).sort(), leases.map((l) => l.address).sort(), 'its leases unchanged');
});

test('healing: a dead host\'s container with a restart policy is rebuilt elsewhere, one without waits, one whose volume is there is refused; the host back, its stale copy is fenced', async (t) => {
  const w = await world(t);
  const svc = await w.run({ name: 'svc', restart: { name: 'always' } });
  const idle = await w.run({ name: 'idle', restart: { name: 'no' } });
  const held = await w.run({ name: 'held', restart: { name: 'unless-stopped' }, mounts: [{ type: 'volume', source: 'data', target: '/data' }] });
  const quotaBefore = JSON.stringify(w.quota.show('p1').resources);
  const hostEvents: Array<{ host: string; action: string; attributes: Record<string, unknown> }> = [];
  // the scheduler's view: the dead host rejected, b fits
  w.scheduler.explain = async () => ({ hosts: [{ host: 'local', rejectedBy: { filter: 'host-up', reason: 'down' } }, { host: 'b', weight: 1, weighers: {} }] }) as unknown as Explanation;
  let now = 1_000_000;
  const healer = new HealingService(w.containers.healDeps(), {
    publish: (e) => {
      hostEvents.push({ host: e.id, action: e.action, attributes: e.attributes ?? {} });
      return { ...e, seq: 0, time: '' };
    },
  }, { graceMs: 5000, clock: () => now });
  w.down.add('local');
  await healer.tick();
  assert.equal((await w.containers.get(svc.id)).host, 'local', 'nothing rebuilt within the grace');
  now += 5000;
  await healer.tick();
  const after = await w.containers.get(svc.id);
  assert.deepEqual([after.id, after.host, after.status, after.restartCount], [svc.id, 'b', 'running', svc.restartCount + 1], 'rebuilt and running on b');
  assert.equal(w.b.containers.get(svc.id)?.state.status, 'running');
  assert.equal(w.b.calls('createContainer')[0]?.[0].name, 'svc', 'created from its record');
  assert.equal(w.scheduler.claims.get(svc.id), 'b', 'its claim moved');
  assert.deepEqual([(await w.containers.get(idle.id)).host, (await w.containers.get(held.id)).host], ['local', 'local'], 'the others stay');
  assert.deepEqual([healer.stats.rebuilt, healer.stats.refused, healer.stats.failed], [1, 1, 0]);
  const refused = w.seen.find((e) => e.id === held.id && e.action === 'heal-refused');
  assert.match(String(refused?.attributes?.reason), /volume data holds its data on host local/);
  assert.deepEqual(w.seen.filter((e) => e.id === svc.id).map((e) => e.action).slice(-2), ['heal', 'start']);
  assert.equal(JSON.stringify(w.quota.show('p1').resources), quotaBefore, 'charged once');
  now += 1000;
  await healer.tick();
  assert.equal(healer.stats.refused, 1, 'a refusal is reported once, not every tick');
  // local answers again: its copy of svc is stale, the others are its own
  assert.ok(w.local.containers.has(svc.id), 'the stale copy is there (the host never really died)');
  w.down.delete('local');
  await healer.tick();
  assert.deepEqual([w.local.containers.has(svc.id), w.local.containers.has(idle.id), w.local.containers.has(held.id)], [false, true, true], 'only the stale copy destroyed');
  assert.deepEqual(hostEvents, [{ host: 'local', action: 'fence', attributes: { containers: [svc.id], vms: [] } }]);
  assert.equal(w.b.containers.has(svc.id), true, 'the rebuilt one untouched');
});

// ---------------------------------------------------------------- live moves (CRIU)

const record = (over: Omit<Partial<ContainerRecord>, 'config'> & { config?: Partial<ContainerRecord['config']> }): ContainerRecord => ({
  id: 'x'.repeat(64), name: 'x', projectId: 'p1', imageDigest: DIGEST, status: 'running', runtime: 'runc', pid: 1, exitCode: null, oomKilled: false,
  restartCount: 0, stoppedByUser: false, createdAt: '', startedAt: null, finishedAt: null, warnings: [], host: 'local',
  ...over, config: { image: 'i', cmd: [], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, ...(over.config ?? {}) } as ContainerRecord['config'],
});

test('live refusals: the container (not running, crun, a terminal, stdin) and the hosts (protocol, CRIU), each naming its reason', () => {
  assert.equal(liveMoveRefusal(record({})), undefined, 'a running runc container without a terminal may move live');
  assert.match(String(liveMoveRefusal(record({ status: 'exited' }))), /is exited: only a running container moves live.*without --live/);
  assert.match(String(liveMoveRefusal(record({ status: 'created' }))), /is created: only a running container/);
  assert.match(String(liveMoveRefusal(record({ runtime: 'crun' }))), /runs on crun: only runc containers move live \(Debian builds crun without CRIU\)/);
  assert.match(String(liveMoveRefusal(record({ config: { tty: true } }))), /has a terminal \(-t\)/);
  assert.match(String(liveMoveRefusal(record({ config: { openStdin: true } }))), /has an open stdin \(-i\)/);
  for (const r of [record({ status: 'exited' }), record({ runtime: 'crun' }), record({ config: { tty: true } })]) assert.ok(hasCode(liveMoveRefusal(r), 'Conflict'));
  assert.equal(liveHostRefusal('b', 9, { liveMove: { usable: true } }), undefined);
  assert.match(String(liveHostRefusal('b', 8, { liveMove: { usable: true } })), /host b's agent speaks protocol 8 and cannot move containers live \(checkpointContainer needs protocol 9\)/);
  assert.match(String(liveHostRefusal('b', 9, {})), /host b does not say whether it can checkpoint containers/);
  const check = 'criu check failed: vdso: Failed to fill self vdso symtable';
  assert.match(String(liveHostRefusal('b', 9, { liveMove: { usable: false, reason: `/usr/sbin/criu (3.17.1): ${check}` } })), /host b cannot move containers live: \/usr\/sbin\/criu \(3\.17\.1\): criu check failed: vdso/);
});

test('a live move: checkpointed at the source (never stopped), the images carried, restored at the destination (never created or started)', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'live', runtime: 'runc' });
  w.local.layers.set(c.id, Buffer.from('layer-bytes'));
  w.local.logFiles.set(c.id, Buffer.from('log'));
  const r = await w.containers.move(c.id, 'b', { live: true });
  assert.deepEqual([r.from, r.to, r.restarted], ['local', 'b', true]);
  assert.ok(r.live && r.live.checkpointBytes > 0, 'the report says what the checkpoint carried');
  const atLocal = w.local.callNames();
  assert.ok(atLocal.indexOf('checkpointContainer') < atLocal.indexOf('exportContainerLayer'), `the layer is read once the processes are dumped: ${atLocal.join(', ')}`);
  assert.equal(w.local.calls('stopContainer').length, 0, 'not stopped');
  const atB = w.b.callNames();
  assert.ok(atB.indexOf('importCheckpoint') < atB.indexOf('restoreContainer') && atB.indexOf('restoreContainer') < atB.indexOf('importContainerLogs'), atB.join(', '));
  assert.deepEqual([w.b.calls('createContainer').length, w.b.calls('startContainer').length], [0, 0], 'restored, not created and started');
  const after = await w.containers.get(c.id);
  assert.deepEqual([after.host, after.status], ['b', 'running']);
  assert.equal(w.b.containers.get(c.id)?.state.status, 'running');
  assert.equal(w.local.containers.has(c.id), false, 'nothing left at the source');
});

for (const step of ['importCheckpoint', 'restoreContainer', 'importContainerLogs'] as const) {
  test(`a live move failing at the destination's ${step} rolls back: restored at the source from its checkpoint, nothing at the destination`, async (t) => {
    const w = await world(t);
    const c = await w.run({ name: `live-${step}`, runtime: 'runc' });
    w.local.layers.set(c.id, Buffer.from('layer'));
    w.b.failNext(step, new Internal(`${step}: refused by the test`));
    const starts = w.local.calls('startContainer').length;
    await assert.rejects(w.containers.move(c.id, 'b', { live: true }), /refused by the test/);
    const after = await w.containers.get(c.id);
    assert.deepEqual([after.host, after.status], ['local', 'running'], 'on the source, running');
    assert.equal(w.local.calls('restoreContainer').length, 1, 'restored there from the images it kept (its processes go on)');
    assert.equal(w.local.calls('startContainer').length, starts, 'not started afresh');
    assert.equal(w.local.containers.get(c.id)?.state.status, 'running');
    assert.equal(w.b.containers.has(c.id), false, 'nothing at the destination');
    assert.equal(w.scheduler.claims.get(c.id), 'local', 'the claim back');
  });
}

test('a live move whose restore at the source fails too starts it afresh there (its processes lost), running', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'afresh', runtime: 'runc' });
  w.b.failNext('restoreContainer', new Internal('restore at the destination: refused by the test'));
  w.local.failNext('restoreContainer', new Internal('restore at the source: refused by the test'));
  const starts = w.local.calls('startContainer').length;
  await assert.rejects(w.containers.move(c.id, 'b', { live: true }), /at the destination: refused by the test/);
  assert.equal(w.local.calls('startContainer').length, starts + 1, 'started again at the source');
  const after = await w.containers.get(c.id);
  assert.deepEqual([after.host, after.status], ['local', 'running']);
  assert.equal(w.local.containers.get(c.id)?.state.status, 'running');
});

test('a live move CRIU refuses at the checkpoint leaves it running at the source, untouched', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'connected', runtime: 'runc' });
  const starts = w.local.calls('startContainer').length;
  w.local.failNext('checkpointContainer', new Conflict('container connected has established TCP connections: a live move carries listening sockets, not connections to peers'));
  await assert.rejects(w.containers.move(c.id, 'b', { live: true }), (e: unknown) => hasCode(e, 'Conflict') && /established TCP connections/.test(String(e)));
  assert.deepEqual([(await w.containers.get(c.id)).host, (await w.containers.get(c.id)).status], ['local', 'running']);
  assert.deepEqual([w.local.calls('restoreContainer').length, w.local.calls('startContainer').length, w.local.calls('stopContainer').length], [0, starts, 0], 'nothing to restore: it never stopped');
});

test('a live move to a host without a working CRIU, or of an older protocol, is refused before anything is touched', async (t) => {
  const w = await world(t);
  const c = await w.run({ name: 'stays', runtime: 'runc' });
  const info = await w.b.info();
  w.b.override('info', async () => ({ ...info, liveMove: { usable: false, reason: '/usr/sbin/criu (3.17.1): criu check failed: vdso: Failed to fill self vdso symtable' } }));
  await assert.rejects(w.containers.move(c.id, 'b', { live: true }), (e: unknown) => hasCode(e, 'Conflict') && /host b cannot move containers live: .*criu check failed: vdso/.test(String(e)));
  w.b.override('info', async () => info);
  Object.assign(w.b, { protocolVersion: async () => 8 });
  await assert.rejects(w.containers.move(c.id, 'b', { live: true }), /protocol 8 and cannot move containers live/);
  assert.deepEqual([w.local.calls('checkpointContainer').length, w.local.calls('stopContainer').length], [0, 0]);
  assert.deepEqual([(await w.containers.get(c.id)).host, (await w.containers.get(c.id)).status], ['local', 'running']);
});

test('fencing judges each VM under its lock: the incoming copy of a migration in flight is not taken for a stale one', async (t) => {
  const w = await world(t);
  const at = new Date().toISOString();
  // the fence reads only the record's host; the config is not looked at
  await w.store.vms.insert({ id: 'vm1', name: 'roamer', projectId: 'p1', config: {} as VmConfig, status: 'running', pid: 1, exitCode: null, createdAt: at, startedAt: at, finishedAt: null, savedAt: null, agent: 'local' });
  w.b.vms.set('vm1', { req: { id: 'vm1' } as VmCreateRequest, state: { lifecycle: 'running' } as VmHostState });
  // a migration to b in flight holds the VM's lock: b has its incoming copy, the record names local until it ends
  const lock = new KeyedLock();
  let release!: () => void;
  const migration = lock.run('vm1', async () => {
    await new Promise<void>((r) => (release = r));
    await w.store.vms.update('vm1', { agent: 'b' });
  });
  const healer = new HealingService({
    ...w.containers.healDeps(),
    vms: { rebuild: () => Promise.reject(new Error('not here')), lockedVm: (id, fn) => lock.run(id, fn) },
  }, { publish: (e) => ({ ...e, seq: 0, time: '' }) }, { graceMs: 5000 });
  const fencing = healer.fence('b', w.b);
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(w.b.vms.has('vm1'), 'the fence waits while the migration holds the VM');
  release();
  await Promise.all([migration, fencing]);
  assert.ok(w.b.vms.has('vm1'), 'the incoming copy is the VM now: kept');
  assert.equal(healer.stats.fenced, 0);
  // a copy whose record names another host is stale, as before
  await w.store.vms.update('vm1', { agent: 'local' });
  await healer.fence('b', w.b);
  assert.ok(!w.b.vms.has('vm1'), 'a stale copy destroyed');
  assert.equal(healer.stats.fenced, 1);
});
