// ContainerService's create-and-start (POST /containers with start: true), against a stub agent
// whose start can be made to fail: what is left behind, and what the error says. (The real
// runtime path is test/engine.e2e.test.ts and test/warm-start.e2e.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { ContainerDriver } from '../../agent/drivers/container/container-driver.js';
import { probeRuntime } from '../../agent/drivers/container/oci-runtime.js';
import { detectCgroupLayout, removeCgroupParentIfEmpty } from '../../agent/cgroups/cgroups.js';
import { mountsUnder } from '../../agent/snapshots/mount.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { EventBus } from '../events/event-bus.js';
import { OperationService } from '../operations/operations.js';
import { QuotaService } from '../quota/quota-service.js';
import { ImageService } from '../images/image-service.js';
import { NetworkService } from '../networks/network-service.js';
import { ContainerService, type ContainerServiceOptions } from './container-service.js';
import { DataLoss, Internal, NotFound, Unavailable, isNimbusError } from '../../core/errors.js';
import type { Agent, ContainerCreateRequest } from '../../agent/agent.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import { RecordingScheduler } from './test-scheduler.js';
import type { HostAgents } from './hosts.js';
import { FakeAgent, fakeImage } from '../testing/fake-agent.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

/** The embedded agent as "local" and the others under their names. */
/** The hosts a test's directory would report down (the directory's refresh, AgentDirectory.isDown). */
const downHosts = new Set<string>();

function hostsOf(local: Agent, others: Record<string, Agent>): HostAgents {
  // looked up on each call: a test may replace a host's connection (a registration again)
  const find = (n: string) => (n === 'local' ? local : Object.hasOwn(others, n) ? others[n] : undefined);
  return {
    localName: 'local',
    isDown: (n) => downHosts.has(n),
    names: () => ['local', ...Object.keys(others)],
    has: (n) => find(n) !== undefined,
    get: (n) => {
      const a = find(n);
      if (!a) throw new Unavailable(`no such host ${n}`);
      return a;
    },
  };
}

/** The control plane around a container service on `store` and `agent`: project p1 and the image example.test/busybox:latest in it. */
async function wireContainerService(store: Store, agent: Agent, opts?: ConstructorParameters<typeof ContainerService>[8], others: Record<string, Agent> = {}) {
  await store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const events = new EventBus();
  const quota = await QuotaService.open(store);
  await quota.ensureProject('p1', null);
  const operations = new OperationService(store, events);
  const hosts = hostsOf(agent, others);
  const scheduler = new RecordingScheduler(hosts);
  const images = new ImageService(store, agent, events, operations);
  images.useHosts(hosts);
  const networks = new NetworkService(store, agent, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/16' });
  networks.useHosts(hosts);
  const containers = new ContainerService(store, hosts, scheduler, images, events, quota, operations, networks, opts);
  const now = new Date().toISOString();
  await store.images.upsert({ digest: DIGEST, projectId: 'p1', indexDigest: null, configDigest: DIGEST, config: { config: { Cmd: ['sh'] } }, layers: [], chainId: DIGEST, size: 1, createdAt: now });
  await store.images.setTag({ projectId: 'p1', name: 'example.test/busybox:latest', digest: DIGEST, updatedAt: now });
  await store.images.addHost(DIGEST, 'local');
  return { containers, scheduler, quota, events, networks };
}

async function setup(t: { after(fn: () => Promise<void>): void }, startFails: boolean, over: (agent: FakeAgent, calls: string[]) => void = () => undefined, opts: ContainerServiceOptions = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ctrsvc-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const calls: string[] = [];
  const agent = new FakeAgent({ name: 'local' })
    .override('createContainer', async (req) => {
      calls.push(`create ${req.id}`);
      return { status: 'created', warnings: ['nofile clamped'], runtime: 'runc' };
    })
    .override('startContainer', async (id) => {
      calls.push(`start ${id}`);
      if (startFails) throw new Internal('runc start: the init process is gone');
      return { status: 'running', pid: 4242 };
    })
    .override('removeContainer', async (id) => {
      calls.push(`remove ${id}`);
    })
    .override('stopContainer', async () => ({ status: 'stopped' }))
    .override('containerState', async () => ({ status: 'created' }));
  over(agent, calls);
  const { containers, quota } = await wireContainerService(store, agent, opts);
  const input = (extra: Record<string, unknown> = {}) =>
    ({ image: 'example.test/busybox:latest', cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra }) as never;
  /** A child project of `parent` with these hard limits. */
  const project = async (id: string, parent: string, hard: Record<string, number>) => {
    await store.projects.insert({ id, name: id, parentId: parent, createdAt: new Date().toISOString() });
    await quota.ensureProject(id, parent);
    await quota.setLimits(id, { hard });
  };
  return { store, containers, calls, input, quota, project };
}

test('create with start: one call creates and starts it, and records it running', async (t) => {
  const { containers, calls, input } = await setup(t, false);
  const c = await containers.create(input({ name: 'one' }), 'p1', { projectId: 'p1' }, { start: true });
  assert.equal(c.status, 'running');
  assert.equal(c.pid, 4242);
  assert.deepEqual(calls, [`create ${c.id}`, `start ${c.id}`]);
  assert.equal((await containers.get('one')).status, 'running');
  assert.equal((await containers.get('one')).runtime, 'runc', 'the runtime the agent chose, written with the start');
  assert.deepEqual((await containers.get('one')).warnings, ['nofile clamped']);
  const plain = await containers.create(input({ name: 'two' }), 'p1', { projectId: 'p1' });
  assert.deepEqual([plain.status, (await containers.get('two')).runtime, (await containers.get('two')).warnings], ['created', 'runc', ['nofile clamped']], 'a create alone writes them at once');
});

test('memory: unsized is best effort in an unlimited project, the default size (limited and charged) in a limited one, refused where none is left; a secure container is charged its guest', async (t) => {
  const MiB = 1024 * 1024;
  const { containers, input, quota, project } = await setup(t, false, () => undefined, { memoryDefaultBytes: 512 * MiB });
  const projectUnder = (id: string, hard: Record<string, number>) => project(id, 'p1', hard);
  const used = (p: string) => quota.show(p).resources.memory.used;
  const root = await containers.create(input({ name: 'root-unsized' }), 'p1', { projectId: 'p1' });
  assert.equal(root.config.memoryBytes, undefined, 'the unlimited root project: best effort, no size');
  assert.equal(used('p1'), 0);

  await projectUnder('team', { instances: 10, memory: 1024 });
  const unsized = await containers.create(input({ name: 'team-unsized' }), 'team', { projectId: 'p1' });
  assert.equal(unsized.config.memoryBytes, 512 * MiB, 'the default, in the record (and so to the agent, the scheduler and inspect)');
  const sized = await containers.create(input({ name: 'team-sized', memoryBytes: 64 * MiB }), 'team', { projectId: 'p1' });
  assert.equal(sized.config.memoryBytes, 64 * MiB, 'a size asked is kept');
  assert.equal(used('team'), 512 + 64, 'both charged');
  await assert.rejects(containers.create(input({ name: 'team-third' }), 'team', { projectId: 'p1' }), (e: unknown) => isNimbusError(e) && e.code === 'QuotaExceeded' && /memory: need 512.*without --memory is given 512 MiB/.test(e.message), 'the default does not fit the 448 MiB left, and the refusal says where the 512 came from');

  await projectUnder('nomem', { instances: 10 });
  await assert.rejects(containers.create(input({ name: 'nomem-unsized' }), 'nomem', { projectId: 'p1' }), (e: unknown) => isNimbusError(e) && e.code === 'QuotaExceeded', 'a project given no memory runs no unsized container');

  const secure = await containers.create(input({ name: 'secure', runtime: 'vm' }), 'p1', { projectId: 'p1' });
  assert.equal(secure.config.memoryBytes, 256 * MiB, "a secure container without a size: its microVM's 256 MiB");
  const tiny = await containers.create(input({ name: 'secure-tiny', runtime: 'vm', memoryBytes: 32 * MiB }), 'p1', { projectId: 'p1' });
  assert.equal(tiny.config.memoryBytes, 128 * MiB, 'raised to the guest minimum it is given');
  assert.equal(used('p1'), 256 + 128);
});

test("memory: a project's own default (LimitRange per namespace) wins over the daemon's, is inherited below it, and 0 there means best effort", async (t) => {
  const MiB = 1024 * 1024;
  const { containers, input, quota, project } = await setup(t, false, () => undefined, { memoryDefaultBytes: 512 * MiB });
  await project('team', 'p1', { instances: 20, memory: 4096 });
  await quota.setLimits('team', { containerMemoryDefault: 128 });
  await project('sub', 'team', { instances: 5, memory: 1024 });
  await project('free', 'team', { instances: 5, memory: 512 });
  await quota.setLimits('free', { containerMemoryDefault: 0 });
  const unsized = async (p: string, name: string) => (await containers.create(input({ name }), p, { projectId: 'p1' })).config.memoryBytes;
  assert.equal(await unsized('team', 't1'), 128 * MiB, "the project's own");
  assert.equal(await unsized('sub', 's1'), 128 * MiB, "a child without one of its own takes its parent's");
  assert.equal(await unsized('free', 'f1'), undefined, '0 set here: best effort, charged nothing');
  assert.equal(quota.show('free').resources.memory.used, 0);
  await quota.setLimits('team', { containerMemoryDefault: null });
  assert.equal(await unsized('sub', 's2'), 512 * MiB, "null: the parent's again, up to the daemon's");
  assert.deepEqual([quota.show('team').containerMemoryDefault, quota.show('free').containerMemoryDefault], [null, 0]);
  await assert.rejects(quota.setLimits('team', { containerMemoryDefault: 3 }), (e: unknown) => isNimbusError(e) && e.code === 'InvalidArgument' && /at least 6 MiB/.test(e.message));
});

test('memory: with no default (0), an unsized container is charged nothing in a limited project either', async (t) => {
  const { containers, input, quota, project } = await setup(t, false, () => undefined, { memoryDefaultBytes: 0 });
  await project('team', 'p1', { instances: 1 });
  const c = await containers.create(input({ name: 'unsized' }), 'team', { projectId: 'p1' });
  assert.equal(c.config.memoryBytes, undefined);
  assert.equal(quota.show('team').resources.memory.used, 0);
});

test('storage: an unsized writable layer is unbounded in an unlimited project, the default (bounded and charged to disk) in a limited one; a size asked is rounded up to MiB and sent to the agent', async (t) => {
  const MiB = 1024 * 1024;
  const sent: Array<number | undefined> = [];
  const { containers, input, quota, project } = await setup(t, false, (agent) => {
    agent.override('createContainer', async (req) => {
      sent.push(req.storageBytes);
      return { status: 'created', warnings: [], runtime: 'runc' };
    });
  }, { storageDefaultBytes: 1024 * MiB });
  const disk = (p: string) => quota.show(p).resources.disk.used;
  const root = await containers.create(input({ name: 'root-unsized' }), 'p1', { projectId: 'p1' });
  assert.equal(root.config.storageBytes, undefined, 'the unlimited root project: unbounded, as under Docker');
  const rootSized = await containers.create(input({ name: 'root-sized', storageBytes: 100 * MiB + 1 }), 'p1', { projectId: 'p1' });
  assert.equal(rootSized.config.storageBytes, 101 * MiB, 'rounded up to whole MiB');
  assert.equal(disk('p1'), 101);

  await project('team', 'p1', { instances: 10, disk: 1536 });
  const unsized = await containers.create(input({ name: 'team-unsized' }), 'team', { projectId: 'p1' });
  assert.equal(unsized.config.storageBytes, 1024 * MiB, "the daemon's default, in the record");
  const sized = await containers.create(input({ name: 'team-sized', storageBytes: 256 * MiB }), 'team', { projectId: 'p1' });
  assert.equal(sized.config.storageBytes, 256 * MiB);
  assert.equal(disk('team'), 1024 + 256, 'both charged to disk');
  await assert.rejects(containers.create(input({ name: 'team-third' }), 'team', { projectId: 'p1' }), (e: unknown) => isNimbusError(e) && e.code === 'QuotaExceeded' && /disk: need 1024.*without --storage has a writable layer of 1024 MiB/.test(e.message), 'the default does not fit the 256 MiB left, and the refusal says where the 1024 came from');
  await assert.rejects(containers.create(input({ name: 'tiny', storageBytes: 8 * MiB }), 'team', { projectId: 'p1' }), (e: unknown) => isNimbusError(e) && e.code === 'InvalidArgument' && /16 MiB/.test(e.message));
  assert.deepEqual(sent, [undefined, 101 * MiB, 1024 * MiB, 256 * MiB], 'what each create asked its agent for');
  // a log rotation keeping more than the default 10 MiB × 3 is charged to disk for the rest (Kubernetes counts logs in ephemeral storage)
  const logged = await containers.create(input({ name: 'root-logs', log: { maxSizeBytes: 100 * MiB, maxFiles: 5 } }), 'p1', { projectId: 'p1' });
  assert.equal(logged.config.storageBytes, undefined);
  assert.equal(disk('p1'), 101 + 470, 'the 500 MiB its log may keep, less the 30 every container has');
  await assert.rejects(containers.create(input({ name: 'team-logs', storageBytes: 16 * MiB, log: { maxSizeBytes: 1024 * MiB, maxFiles: 64 } }), 'team', { projectId: 'p1' }), (e: unknown) => isNimbusError(e) && e.code === 'QuotaExceeded' && /disk/.test(e.message), '64 GiB of log does not fit the project\'s disk');
  await containers.remove(unsized.id, true);
  assert.equal(disk('team'), 256, 'given back with the container');
});

test("storage: a project's own default wins over the daemon's, is inherited below it, and 0 there means unbounded", async (t) => {
  const MiB = 1024 * 1024;
  const { containers, input, quota, project } = await setup(t, false, () => undefined, { storageDefaultBytes: 1024 * MiB });
  await project('team', 'p1', { instances: 20, disk: 100_000 });
  await quota.setLimits('team', { containerStorageDefault: 10_240 });
  await project('sub', 'team', { instances: 5, disk: 50_000 });
  await project('free', 'team', { instances: 5, disk: 1024 });
  await quota.setLimits('free', { containerStorageDefault: 0 });
  const unsized = async (p: string, name: string) => (await containers.create(input({ name }), p, { projectId: 'p1' })).config.storageBytes;
  assert.equal(await unsized('team', 't1'), 10 * 1024 * MiB, "the project's own");
  assert.equal(await unsized('sub', 's1'), 10 * 1024 * MiB, "a child without one of its own takes its parent's");
  assert.equal(await unsized('free', 'f1'), undefined, '0 set here: unbounded, charged nothing');
  assert.equal(quota.show('free').resources.disk.used, 0);
  await quota.setLimits('team', { containerStorageDefault: null });
  assert.equal(await unsized('sub', 's2'), 1024 * MiB, "null: the parent's again, up to the daemon's");
  assert.deepEqual([quota.show('team').containerStorageDefault, quota.show('free').containerStorageDefault], [null, 0]);
  await assert.rejects(quota.setLimits('team', { containerStorageDefault: 8 }), (e: unknown) => isNimbusError(e) && e.code === 'InvalidArgument' && /16 MiB/.test(e.message));
});

test('names: 120 creates at once without names all succeed with names of their own (a generated name is held until its record has it)', async (t) => {
  const { containers, input } = await setup(t, false);
  const made = await Promise.allSettled(Array.from({ length: 120 }, () => containers.create(input(), 'p1', { projectId: 'p1' })));
  const failed = made.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
  assert.deepEqual(failed, [], 'none refused');
  const names = made.map((r) => (r as PromiseFulfilledResult<{ name: string }>).value.name);
  assert.equal(new Set(names).size, 120, 'each its own name');
});

test('names: a container may not take the name of a VM of its project; another project\'s VM does not hold it', async (t) => {
  const { store, containers, input } = await setup(t, false);
  await store.projects.insert({ id: 'p2', name: 'tenant', parentId: null, createdAt: new Date().toISOString() });
  const vm = (id: string, name: string, projectId: string) => store.vms.insert({
    id, name, projectId, config: { cpus: 1, memoryMiB: 64, kernel: '/boot/k' }, status: 'created', pid: null, exitCode: null,
    createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, savedAt: null, agent: 'local',
  });
  await vm('a'.repeat(32), 'db', 'p1');
  await vm('b'.repeat(32), 'web', 'p2');
  await vm('c'.repeat(32), 'db', 'p2'); // VM names are per project too
  await assert.rejects(containers.create(input({ name: 'db' }), 'p1'), { code: 'Conflict', message: 'the container name "db" is already in use in this project' });
  assert.equal((await containers.create(input({ name: 'web' }), 'p1')).name, 'web');
  // the store holds the rule when the service's check is raced past
  await assert.rejects(store.vms.insert({ ...(await store.vms.get('a'.repeat(32)))!, id: 'd'.repeat(32), name: 'web' }), { code: 'AlreadyExists', message: 'a container named "web" already exists in this project' });
});

test('create with start: a failed start leaves the container created, and the error names it', async (t) => {
  const { containers, calls, input } = await setup(t, true);
  const err = await containers.create(input({ name: 'kept' }), 'p1', { projectId: 'p1' }, { start: true }).then(
    () => assert.fail('the start should have failed'),
    (e: unknown) => e,
  );
  assert.ok(isNimbusError(err));
  assert.equal(err.code, 'Internal');
  assert.match(err.message, /init process is gone/);
  const c = await containers.get('kept');
  assert.equal(c.status, 'created', 'created, not started');
  assert.deepEqual([c.runtime, c.warnings], ['runc', ['nofile clamped']], 'what the create learnt is kept');
  assert.deepEqual(err.details, { container: c.id, removed: false });
  assert.ok(!calls.some((x) => x.startsWith('remove')), 'nothing removed');
});

test('create with start: a failed start of an autoRemove container removes it', async (t) => {
  const { store, containers, calls, input } = await setup(t, true);
  const err = await containers.create(input({ name: 'gone', autoRemove: true }), 'p1', { projectId: 'p1' }, { start: true }).then(
    () => assert.fail('the start should have failed'),
    (e: unknown) => e,
  );
  assert.ok(isNimbusError(err));
  const id = String(err.details?.container);
  assert.equal(err.details?.removed, true);
  assert.equal(await store.containers.get(id), undefined, 'its record is gone');
  assert.ok(calls.includes(`remove ${id}`), 'and its agent state');
});

test('requests the runtime cannot run as asked are refused (400, naming the field) before any agent call, warm or cold', async (t) => {
  const { containers, calls, input } = await setup(t, false, (agent, calls) => agent.override('claimWarmContainer', () => {
    calls.push('claim');
    return undefined;
  }));
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ cmd: ['sh', '-c', 'a\0b'] }, /cmd: argument .* NUL/],
    [{ cmd: ['\x01'] }, /cmd: the program name .* control character/],
    [{ cmd: ['sleep', 'x'.repeat(1024 * 1024)] }, /cmd: one entry is 1048577 bytes/],
    [{ cmd: ['sleep', ...Array.from({ length: 16 }, () => 'x'.repeat(100_000))] }, /cmd and env are \d+ bytes together; at most 1048576/],
    [{ env: ['A=1\0'] }, /env: "A" contains NUL/],
    [{ env: ['A\x1b=1'] }, /env: the name .* control character/],
    [{ user: '4294967295:4294967295' }, /user "4294967295:4294967295": ids are 0 to 2147483647/],
    [{ pidsLimit: 1e9 }, /pidsLimit must be a whole number from 1 to 4194304/],
    [{ pidsLimit: 1e308 }, /pidsLimit/],
    [{ memoryBytes: 1e18 }, /memoryBytes must be a whole number of bytes up to/],
    [{ user: 'a:b:c' }, /user "a:b:c"/],
    [{ hostname: 'a\nb' }, /hostname .* is not a valid host name/],
    [{ hostname: '../../etc' }, /not a valid host name/],
    [{ ip: '999.999.999.999', network: undefined }, /ip "999.999.999.999" is not an IPv4 address/],
    [{ dns: ['1.2.3.999'] }, /dns "1.2.3.999" is not an IPv4 address/],
    [{ stopTimeout: MAX_STOP_TIMEOUT_SEC + 1 }, /stopTimeout must be 0 to 3600 seconds/],
  ];
  for (const [extra, message] of cases) {
    await assert.rejects(containers.create(input(extra), 'p1', { projectId: 'p1' }), (e: unknown) => {
      assert.ok(isNimbusError(e), String(e));
      assert.equal(e.code, 'InvalidArgument', `${JSON.stringify(extra).slice(0, 80)}: ${e.message}`);
      assert.match(e.message, message);
      return true;
    });
  }
  assert.deepEqual(calls, [], 'neither a warm claim nor a create reached the agent');
  assert.equal((await containers.list({ all: true })).length, 0, 'nothing half-created');
  // the limits themselves are allowed
  await containers.create(input({ name: 'edge', user: '2147483647:0', pidsLimit: 4_194_304, stopTimeout: MAX_STOP_TIMEOUT_SEC, cmd: ['sleep', 'x'.repeat(128 * 1024 - 1)] }), 'p1', { projectId: 'p1' });
});

test('stop and restart timeouts above MAX_STOP_TIMEOUT_SEC are refused; an agent call that hangs does not hold the lock', async (t) => {
  let hang = true;
  const { containers, input } = await setup(t, false, (agent) => agent
    .override('pauseContainer', () => (hang ? new Promise(() => undefined) : Promise.resolve()))
    .override('unpauseContainer', async () => undefined)
    .override('killContainer', async () => undefined), { agentDeadlineMs: 300 });
  const c = await containers.create(input({ name: 'held' }), 'p1', { projectId: 'p1' }, { start: true });
  for (const bad of [MAX_STOP_TIMEOUT_SEC + 1, 1e9, -1, Number.NaN]) {
    await assert.rejects(containers.stop(c.id, bad), { code: 'InvalidArgument', message: /timeout must be 0 to 3600 seconds/ });
    await assert.rejects(containers.restart(c.id, bad), { code: 'InvalidArgument' });
  }
  const t0 = performance.now();
  await assert.rejects(containers.pause(c.id), { code: 'Unavailable', message: /pause of container .* did not finish within/ });
  assert.ok(performance.now() - t0 < 2000, 'the deadline, not the hung call');
  hang = false;
  // the lock was let go: the next lifecycle call goes through
  assert.equal((await containers.pause(c.id)).status, 'paused');
  assert.equal((await containers.unpause(c.id)).status, 'running');
});

test('restart policy: an exit is recorded and the container started again; a stop while it waits for the restart cancels it', async (t) => {
  const exits: Array<(id: string) => void> = [];
  let running = true;
  const { containers, calls, input } = await setup(t, false, (agent, calls) => agent
    .override('onContainerExit', (l) => void exits.push(l))
    .override('containerState', async () => (running ? { status: 'running', pid: 4242 } : { status: 'stopped', exitCode: 3, finishedAt: new Date().toISOString() }))
    .override('startContainer', async (id) => {
      calls.push(`start ${id}`);
      running = true;
      return { status: 'running', pid: 4242 };
    }));
  const c = await containers.create(input({ name: 'phoenix', restart: { name: 'always' } }), 'p1', { projectId: 'p1' }, { start: true });
  const exit = async () => {
    running = false;
    for (const l of exits) l(c.id);
    // the exit is recorded and the restart scheduled (asynchronously: the listener cannot wait)
    for (let i = 0; i < 50 && (await containers.get(c.id)).status === 'running'; i++) await sleep(5);
  };
  await exit();
  const waiting = await containers.get(c.id);
  assert.deepEqual([waiting.status, waiting.exitCode], ['restarting', 3]);
  for (let i = 0; i < 100 && (await containers.get(c.id)).status !== 'running'; i++) await sleep(10);
  const again = await containers.get(c.id);
  assert.deepEqual([again.status, again.restartCount], ['running', 1], 'started again by the policy, after its back-off');

  await exit();
  assert.equal((await containers.get(c.id)).status, 'restarting');
  const stopped = await containers.stop(c.id);
  assert.equal(stopped.status, 'exited');
  const startsBefore = calls.filter((x) => x.startsWith('start')).length;
  await sleep(400); // past the second back-off (200 ms)
  assert.equal((await containers.get(c.id)).status, 'exited', 'the stop cancelled the restart');
  assert.equal(calls.filter((x) => x.startsWith('start')).length, startsBefore, 'no start after the stop');
});

// ------------------------------------------------------------------ on several hosts (typed fake agents)

async function twoHosts(t: { after(fn: () => Promise<void>): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ctrsvc-hosts-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const local = new FakeAgent({ name: 'local' });
  const b = new FakeAgent({ name: 'b' });
  // a registry pull by digest gives the image the store knows (same layers)
  b.override('pullImage', async (ref) => fakeImage(ref, { manifestDigest: DIGEST, chainId: DIGEST }));
  const wired = await wireContainerService(store, local, {}, { b });
  const input = (extra: Record<string, unknown> = {}) =>
    ({ image: 'example.test/busybox:latest', cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra }) as never;
  return { store, local, b, input, ...wired };
}

test('hosts: a container placed on another host is pulled, made, run, read and removed there, and the claim follows it', async (t) => {
  const { store, local, b, input, containers, scheduler, networks } = await twoHosts(t);
  const front = await networks.create({ name: 'front' }, 'p1');
  await store.placement.insertGroup({ id: 'g'.repeat(32), projectId: 'p1', name: 'web-tier', policy: 'anti-affinity', createdAt: new Date().toISOString() });
  const c = await containers.create(input({ name: 'far', network: 'front', cpus: 1.5, memoryBytes: 64 * 1024 * 1024 }), 'p1', { projectId: 'p1' },
    { start: true, placement: { host: 'b', zone: 'z1', constraints: { disk: 'ssd' }, group: 'web-tier' } });
  assert.deepEqual([c.host, c.status, (await store.containers.get(c.id))?.host], ['b', 'running', 'b']);
  const asked = scheduler.asked.at(-1)!;
  assert.deepEqual(
    [asked.consumerId, asked.kind, asked.vcpus, asked.memoryBytes, asked.host, asked.zone, asked.constraints, asked.group, asked.imageChainId],
    [c.id, 'container', 1.5, 64 * 1024 * 1024, 'b', 'z1', { disk: 'ssd' }, 'g'.repeat(32), DIGEST],
    'the group named is passed as its id',
  );
  await assert.rejects(containers.create(input({ name: 'lonely' }), 'p1', { projectId: 'p1' }, { placement: { group: 'nope' } }), { code: 'NotFound', message: /no server group "nope"/ });
  assert.equal(scheduler.claims.get(c.id), 'b');
  // pulled on b by digest, from the registry its tag names; recorded there
  assert.deepEqual(b.calls('pullImage').map(([ref]) => ref), [`example.test/busybox@${DIGEST}`]);
  assert.deepEqual(await store.images.hosts(DIGEST), ['b', 'local']);
  // the network laid out on b before the container, and recorded
  assert.deepEqual(b.calls('ensureNetwork').map(([n]) => n.id), [front.id]);
  assert.deepEqual(await store.networks.hosts(front.id), ['b', 'local']);
  assert.deepEqual(local.calls('createContainer'), [], 'nothing made on the embedded agent');
  assert.deepEqual(b.calls('createContainer').map(([r]) => r.id), [c.id]);

  b.addLog(c.id, 'hello from b');
  const lines: string[] = [];
  for await (const r of await containers.logs(c.id, {})) lines.push(r.line);
  assert.deepEqual(lines, ['hello from b']);
  assert.equal(await (await containers.exec(c.id, { args: ['true'] } as never)).exit, 0);
  assert.equal((await containers.stats(c.id)).pids, 1);
  assert.equal((await containers.pause(c.id)).status, 'paused');
  assert.equal((await containers.unpause(c.id)).status, 'running');
  assert.equal((await containers.stop(c.id, 1)).status, 'exited');
  assert.equal((await containers.start(c.id)).status, 'running');

  // a second container there: the image is on b already, no second pull
  const d = await containers.create(input({ name: 'near-d' }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } });
  assert.equal(b.calls('pullImage').length, 1);
  // an exit reported by b is recorded; the same id reported by another host is not this container's
  local.exitContainer(c.id, 9);
  await sleep(20);
  assert.equal((await containers.get(c.id)).status, 'running', 'another host\'s report is ignored');
  b.exitContainer(c.id, 7);
  for (let i = 0; i < 50 && (await containers.get(c.id)).status === 'running'; i++) await sleep(5);
  assert.deepEqual([(await containers.get(c.id)).status, (await containers.get(c.id)).exitCode], ['exited', 7]);

  await containers.remove(c.id, true);
  await containers.remove(d.id, true);
  assert.deepEqual([...b.containers.keys()], [], 'nothing left on b');
  assert.equal(scheduler.claims.size, 0, 'claims released');
  assert.ok(local.calls('removeContainer').every(([id]) => id !== c.id && id !== d.id), 'removals went to b only');
  // network removal reaches every host it is laid out on
  await networks.remove('front', { projectId: 'p1' });
  assert.deepEqual([local.calls('removeNetwork').map(([id]) => id), b.calls('removeNetwork').map(([id]) => id)], [[front.id], [front.id]]);
  assert.deepEqual(await store.networks.hosts(front.id), []);
});

test('hosts: a create that fails on its host leaves nothing: no record, claim, quota or host state', async (t) => {
  const { store, b, input, containers, scheduler, quota } = await twoHosts(t);
  b.failNext('createContainer', new Internal('runc create: boom'));
  await assert.rejects(containers.create(input({ name: 'fails' }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } }), { code: 'Internal', message: /boom/ });
  const id = b.calls('createContainer')[0]![0].id;
  assert.equal(await store.containers.get(id), undefined);
  assert.equal(scheduler.claims.size, 0);
  assert.equal(quota.holds(id), false);
  assert.deepEqual([...b.containers.keys()], []);
  // a pull that fails on the host: the same, and the error says which host and image
  const other = await twoHosts(t);
  other.b.failNext('pullImage', new Unavailable('registry down'));
  await assert.rejects(other.containers.create(other.input({ name: 'nopull' }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } }),
    { code: 'Unavailable', message: /host b could not pull example.test\/busybox@sha256:a+: registry down/ });
  assert.deepEqual([(await other.store.containers.list()).length, other.scheduler.claims.size], [0, 0]);
  // a host that pulls other layers than the store's image is refused, not used
  other.b.override('pullImage', async (ref) => fakeImage(ref));
  await assert.rejects(other.containers.create(other.input({ name: 'other-layers' }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } }), { code: 'Conflict', message: /pulled .* as layers/ });
  assert.equal(other.scheduler.claims.size, 0);
});

test("a create whose address cannot be leased (its --ip taken) leaves nothing: no record, name, claim, quota hold or agent call", async (t) => {
  const { store, local, input, containers, scheduler, quota, networks } = await twoHosts(t);
  const front = await networks.create({ name: 'front' }, 'p1');
  const ip = front.subnet.replace(/0\/\d+$/, '50');
  const first = await containers.create(input({ name: 'first', network: 'front', ip }), 'p1', { projectId: 'p1' });
  assert.deepEqual((await store.networks.leases({ instanceId: first.id })).map((l) => l.address), [ip]);
  const made = local.calls('createContainer').length;
  await assert.rejects(containers.create(input({ name: 'second', network: 'front', ip }), 'p1', { projectId: 'p1' }), { code: 'Conflict', message: new RegExp(`address ${ip.replaceAll('.', '\\.')} is already in use on front`) });
  const failed = scheduler.asked.at(-1)!.consumerId;
  assert.notEqual(failed, first.id);
  assert.equal(quota.holds(failed), false, 'its quota released');
  // the record and its lease were one transaction: the failed lease left no record behind
  assert.equal(await store.containers.get(failed), undefined);
  assert.deepEqual((await store.containers.list()).map((c) => c.name), ['first']);
  assert.equal(local.calls('createContainer').length, made, 'nothing asked of the agent');
  assert.deepEqual([...scheduler.claims.keys()], [first.id], "the failed create's claim released");
  assert.equal((await store.networks.leases({ networkId: front.id })).length, 1);
  const second = await containers.create(input({ name: 'second', network: 'front' }), 'p1', { projectId: 'p1' });
  assert.equal(quota.holds(second.id), true);
  assert.notEqual((await store.networks.leases({ instanceId: second.id }))[0]?.address, ip, 'the name is free again, with another address');
});

/** A store and three hosts (local, b, c) for the carry tests; the hosts marked down are cleared after. */
async function threeHosts(t: { after(fn: () => Promise<void>): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ctrsvc-carry-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    downHosts.clear();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const local = new FakeAgent({ name: 'local' });
  const b = new FakeAgent({ name: 'b' });
  const c = new FakeAgent({ name: 'c' });
  const wired = await wireContainerService(store, local, {}, { b, c });
  const input = (extra: Record<string, unknown> = {}) =>
    ({ cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra }) as never;
  return { store, local, b, c, input, ...wired };
}

/** An image imported from an archive on the embedded agent: no tag, so no registry to pull it from; its blobs on `holder`. */
async function archivedImage(store: Store, holder: FakeAgent, name: string) {
  const img = fakeImage(name);
  await store.images.upsert({ digest: img.manifestDigest, projectId: 'p1', indexDigest: null, configDigest: img.configDigest, config: img.config, layers: img.layers, chainId: img.chainId, size: img.size, createdAt: new Date().toISOString() });
  await store.images.addHost(img.chainId, holder.host.name);
  holder.holdImage(img);
  return img;
}

test('hosts: an image imported from an archive is carried from a holder to the host that lacks it, once for concurrent creates; a holder that is down is skipped', async (t) => {
  const { store, local, b, c, containers, scheduler, input } = await threeHosts(t);
  const img = await archivedImage(store, local, 'archive-1');
  const blobs = [img.manifestDigest, img.configDigest, ...img.layers.map((l) => l.digest)];

  const far = await containers.create(input({ name: 'boxed', image: img.manifestDigest }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } });
  assert.equal(far.host, 'b');
  assert.deepEqual(b.calls('pullImage'), [], 'no registry to pull from');
  assert.deepEqual(b.calls('missingBlobs'), [[blobs]], 'the target says what it lacks');
  assert.deepEqual(local.calls('readBlob').map(([d]) => d).sort(), [...blobs].sort(), 'read from the holder');
  assert.deepEqual(b.calls('writeBlob').map(([d, size]) => [d, size]).sort(), blobs.map((d) => [d, local.blobs.get(d)!.length]).sort(), 'written to the target, sizes as read');
  assert.deepEqual(b.calls('adoptImage'), [[img.manifestDigest]]);
  assert.deepEqual(await store.images.hosts(img.chainId), ['b', 'local'], 'recorded on b');
  assert.deepEqual(b.calls('createContainer').map(([r]) => r.imageChainId), [img.chainId]);
  // there now: nothing carried again
  await containers.create(input({ name: 'boxed-2', image: img.manifestDigest }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } });
  assert.equal(b.calls('adoptImage').length, 1);

  // the embedded agent does not answer: carried from b, the other holder; two creates at once share one transfer
  downHosts.add('local');
  const readsFromLocal = local.calls('readBlob').length;
  const both = await Promise.all(['c-1', 'c-2'].map((name) => containers.create(input({ name, image: img.manifestDigest }), 'p1', { projectId: 'p1' }, { placement: { host: 'c' } })));
  assert.deepEqual(both.map((x) => x.host), ['c', 'c']);
  assert.equal(local.calls('readBlob').length, readsFromLocal, 'nothing asked of the holder that is down');
  assert.deepEqual(b.calls('readBlob').map(([d]) => d).sort(), [...blobs].sort());
  assert.deepEqual([c.calls('missingBlobs').length, c.calls('writeBlob').length, c.calls('adoptImage').length], [1, blobs.length, 1], 'one transfer for both');
  assert.deepEqual(await store.images.hosts(img.chainId), ['b', 'c', 'local']);
  assert.equal(scheduler.claims.size, 4);
});

test('hosts: a holder that fails mid-transfer is left for the next; no holder that answers is Unavailable naming them; a target that refuses the image ends it', async (t) => {
  const { store, local, b, c, containers, scheduler, quota, input } = await threeHosts(t);

  // held by the embedded agent and b; the embedded one breaks off: b gives it
  const img = await archivedImage(store, local, 'archive-2');
  await store.images.addHost(img.chainId, 'b');
  b.holdImage(img);
  local.failNext('readBlob', new Unavailable('agent local: connection reset'));
  assert.equal((await containers.create(input({ name: 'one', image: img.manifestDigest }), 'p1', { projectId: 'p1' }, { placement: { host: 'c' } })).host, 'c');
  assert.ok(b.calls('readBlob').length > 0, 'the next holder gave it');
  assert.deepEqual(c.calls('adoptImage'), [[img.manifestDigest]]);

  // only the embedded agent holds it and it does not answer
  const lone = await archivedImage(store, local, 'archive-3');
  downHosts.add('local');
  const err = await containers.create(input({ name: 'two', image: lone.manifestDigest }), 'p1', { projectId: 'p1' }, { placement: { host: 'c' } }).then(() => assert.fail('refused'), (e: unknown) => e);
  assert.ok(isNimbusError(err));
  assert.equal(err.code, 'Unavailable');
  assert.match(err.message, new RegExp(`image ${lone.manifestDigest.slice(7, 19)} cannot be carried to host c: the hosts that hold it \\(local\\) do not answer`));
  assert.deepEqual(err.details?.hosts, ['local']);
  downHosts.clear();

  // the target refuses what it is given (a hostile layer, a digest mismatch): the create fails naming both hosts, nothing is left
  c.failNext('adoptImage', new DataLoss('layer sha256:…: uncompressed digest does not match the config\'s diff id'));
  const refused = await containers.create(input({ name: 'three', image: lone.manifestDigest }), 'p1', { projectId: 'p1' }, { placement: { host: 'c' } }).then(() => assert.fail('refused'), (e: unknown) => e);
  assert.ok(isNimbusError(refused));
  assert.equal(refused.code, 'DataLoss');
  assert.match(refused.message, /carrying image [0-9a-f]{12} from host local to host c: layer/);
  assert.deepEqual(await store.images.hosts(lone.chainId), ['local'], 'not recorded on c');
  const id = scheduler.asked.at(-1)!.consumerId;
  assert.deepEqual([scheduler.claims.has(id), quota.holds(id), (await store.containers.list()).length], [false, false, 1]);
  // the registry's refusal of a tagged image (it no longer serves it): carried instead
  b.failNext('pullImage', new NotFound('manifest unknown'));
  local.holdImage(fakeImage('busybox', { manifestDigest: DIGEST, configDigest: DIGEST, layers: [], chainId: DIGEST }));
  assert.equal((await containers.create(input({ name: 'four', image: 'example.test/busybox:latest' }), 'p1', { projectId: 'p1' }, { placement: { host: 'b' } })).host, 'b');
  assert.deepEqual(b.calls('adoptImage').map(([d]) => d), [DIGEST]);
});

test('hosts: reconcile leaves a host that does not answer alone; its containers show unknown until it answers', async (t) => {
  const { b, input, containers } = await twoHosts(t);
  const c = await containers.create(input({ name: 'far' }), 'p1', { projectId: 'p1' }, { start: true, placement: { host: 'b' } });
  const l = await containers.create(input({ name: 'near' }), 'p1', { projectId: 'p1' }, { start: true });
  assert.equal(l.host, 'local');
  b.failNext('listContainers', new Unavailable('agent b is down'));
  const r = await containers.reconcile();
  assert.deepEqual(r.unreachableHosts, ['b']);
  assert.equal(r.lost, 0, 'not guessed lost');
  const far = await containers.get(c.id);
  assert.equal(far.status, 'running', 'the stored status is kept');
  assert.equal(containers.view(far).status, 'unknown');
  assert.equal(containers.view(await containers.get(l.id)).status, 'running');
  const again = await containers.reconcile();
  assert.deepEqual(again.unreachableHosts, []);
  assert.equal(containers.view(await containers.get(c.id)).status, 'running');
  // the directory's refresh finds b down between reconciles: unknown at once, running again when it is up
  downHosts.add('b');
  t.after(() => downHosts.clear());
  assert.deepEqual([containers.view(await containers.get(c.id)).status, containers.view(await containers.get(l.id)).status], ['unknown', 'running']);
  downHosts.delete('b');
  assert.equal(containers.view(await containers.get(c.id)).status, 'running');
  // a container b lost while away is exited when b answers; b's orphans are removed
  b.containers.delete(c.id);
  await b.createContainer({ id: 'f'.repeat(64), name: 'orphan', imageChainId: DIGEST, process: { args: ['sh'] } as never, resources: {} });
  const third = await containers.reconcile();
  assert.deepEqual([third.lost, third.orphansRemoved], [1, 1]);
  assert.equal((await containers.get(c.id)).status, 'exited');
  assert.deepEqual([...b.containers.keys()], []);
});

test('hosts: an agent that registers again is listened to, and exits it saw while away are recorded', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ctrsvc-rereg-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const local = new FakeAgent({ name: 'local' });
  let b = new FakeAgent({ name: 'b' });
  b.override('pullImage', async (ref) => fakeImage(ref, { manifestDigest: DIGEST, chainId: DIGEST }));
  // the directory hands out whichever connection to b is current (a registration replaces it)
  const { containers } = await wireContainerService(store, local, {}, {
    get b() {
      return b;
    },
  } as Record<string, Agent>);
  t.after(() => containers.shutdown());
  const input = { image: 'example.test/busybox:latest', cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none' } as never;
  const c = await containers.create({ ...(input as object), name: 'far' } as never, 'p1', { projectId: 'p1' }, { start: true, placement: { host: 'b' } });
  // b restarts and registers again: a new connection, which already holds the exit of c
  const again = new FakeAgent({ name: 'b' });
  again.containers.set(c.id, { ...b.containers.get(c.id)!, state: { status: 'stopped', exitCode: 5, finishedAt: new Date().toISOString() } });
  b = again;
  containers.watchHosts(20);
  for (let i = 0; i < 100 && (await containers.get(c.id)).status === 'running'; i++) await sleep(10);
  assert.deepEqual([(await containers.get(c.id)).status, (await containers.get(c.id)).exitCode], ['exited', 5], 'the exit seen while away');
  await containers.start(c.id);
  again.exitContainer(c.id, 6);
  for (let i = 0; i < 100 && (await containers.get(c.id)).status === 'running'; i++) await sleep(10);
  assert.equal((await containers.get(c.id)).exitCode, 6, 'and the new connection\'s exits are heard');
});

// ------------------------------------------------------------------ against real runc and conmon

const runcUsable = (await probeRuntime('runc')) === undefined;

/** The service over a real ContainerDriver (runc + conmon) on a busybox rootfs: the Agent calls it makes, and nothing more. */
async function realSetup(t: { after(fn: () => Promise<void>): void; diagnostic(m: string): void }) {
  const base = await mkdtemp(join(tmpdir(), 'nimbus-ctrsvc-real-'));
  const rootfs = join(base, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'etc'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of ['sh', 'sleep', 'true', 'echo']) await symlink('busybox', join(rootfs, 'bin', a));
  await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  const cgroupParent = `/nimbus-test-${process.pid}-svc`;
  const driver = new ContainerDriver({ stateDir: join(base, 'state'), runtime: 'runc', cgroupParent });
  const exitListeners: ((id: string) => void)[] = [];
  driver.onExit((id) => {
    for (const l of exitListeners) l(id);
  });
  // the Agent calls the service makes, over the real driver
  const agent = new FakeAgent({ name: 'local' })
    .override('onContainerExit', (l) => void exitListeners.push(l))
    .override('claimWarmContainer', () => undefined)
    .override('createContainer', async (req: ContainerCreateRequest) => {
      const st = await driver.create({
        id: req.id, name: req.name, rootfs: [{ type: 'bind', source: rootfs, options: ['rbind', 'rw'] }],
        process: req.process, resources: req.resources, ...(req.hostname ? { hostname: req.hostname } : {}),
      });
      return { ...st, warnings: await driver.warnings(req.id), runtime: 'runc' };
    })
    .override('startContainer', (id) => driver.start(id))
    .override('stopContainer', (id, sec, signal) => driver.stop(id, sec, signal))
    .override('killContainer', (id, signal) => driver.kill(id, signal))
    .override('pauseContainer', (id) => driver.pause(id))
    .override('unpauseContainer', (id) => driver.unpause(id))
    .override('containerState', (id) => driver.state(id))
    .override('removeContainer', (id) => driver.delete(id))
    .override('listContainers', () => driver.list());
  const dir = join(base, 'db');
  await mkdir(dir);
  const store = await openStore(join(dir, 'nimbus.db'));
  const { containers } = await wireContainerService(store, agent);
  t.after(async () => {
    containers.shutdown();
    for (const id of await driver.list()) await driver.delete(id).catch((e: unknown) => console.error('teardown delete', id, e));
    driver.close();
    await store.close();
    await removeCgroupParentIfEmpty(await detectCgroupLayout(), cgroupParent);
    const left = await mountsUnder(base);
    if (left.length === 0) await rm(base, { recursive: true, force: true });
    assert.deepEqual(left, [], 'no mounts left');
  });
  // ignores SIGTERM (as pid 1 it would anyway): only a SIGKILL or the stop's own SIGKILL ends it
  const stubborn = { image: 'example.test/busybox:latest', cmd: ['sh', '-c', 'trap "" TERM; while :; do sleep 1; done'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none' } as never;
  return { containers, driver, store, stubborn };
}

test('real runc: a kill during a graceful stop preempts it (no wait, no Conflict) and the container ends exited', { skip: !runcUsable && 'runc unusable' }, async (t) => {
  const { containers, stubborn } = await realSetup(t);
  const c = await containers.create(stubborn, 'p1', { projectId: 'p1' }, { start: true });
  await sleep(300);
  const stopping = containers.stop(c.id, 25);
  await sleep(300); // the stop has sent its SIGTERM and waits
  const t0 = performance.now();
  const killed = await containers.kill(c.id);
  const killMs = performance.now() - t0;
  t.diagnostic(`kill during a stop with timeout 25 answered in ${Math.round(killMs)} ms`);
  assert.ok(killMs < 5000, `kill answered in ${Math.round(killMs)} ms`);
  assert.equal(killed.status, 'exited');
  const stopped = await stopping;
  assert.equal(stopped.status, 'exited', 'the stop in progress completes normally');
  assert.equal(stopped.exitCode, 137);
  assert.ok(performance.now() - t0 < 5000, 'well before its 25 s timeout');
  assert.equal((await containers.get(c.id)).status, 'exited');
});

test('real runc: rm -f during a restart on a process ignoring SIGTERM cancels the restart and removes at once', { skip: !runcUsable && 'runc unusable' }, async (t) => {
  const { containers, driver, store, stubborn } = await realSetup(t);
  const c = await containers.create(stubborn, 'p1', { projectId: 'p1' }, { start: true });
  await sleep(300);
  const restarting = containers.restart(c.id, MAX_STOP_TIMEOUT_SEC);
  const restartOutcome = restarting.then(() => 'restarted', (e: unknown) => e);
  await sleep(300);
  const t0 = performance.now();
  await containers.remove(c.id, true);
  const rmMs = performance.now() - t0;
  t.diagnostic(`rm -f during a restart with timeout ${MAX_STOP_TIMEOUT_SEC} answered in ${Math.round(rmMs)} ms`);
  assert.ok(rmMs < 10_000, `rm -f answered in ${Math.round(rmMs)} ms`);
  const outcome = await restartOutcome;
  assert.ok(isNimbusError(outcome), `the restart was cancelled, not completed: ${String(outcome)}`);
  assert.equal(outcome.code, 'Conflict');
  assert.match(outcome.message, /removed \(rm -f\) while it stopped/);
  assert.equal(await store.containers.get(c.id), undefined, 'the record is gone');
  assert.ok(!(await driver.list()).includes(c.id), 'and the runtime container');
});

test('real runc: a program the image lacks is a 400 naming it, and nothing is left', { skip: !runcUsable && 'runc unusable' }, async (t) => {
  const { containers, driver, stubborn } = await realSetup(t);
  await assert.rejects(
    containers.create({ ...(stubborn as object), cmd: ['/nonexistent'] } as never, 'p1', { projectId: 'p1' }, { start: true }),
    { code: 'InvalidArgument', message: /cannot run "\/nonexistent": no such file in the image/ },
  );
  assert.equal((await containers.list({ all: true })).length, 0);
  assert.deepEqual(await driver.list(), []);
});
