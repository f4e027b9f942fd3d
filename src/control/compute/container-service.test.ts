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
import { Internal, isNimbusError } from '../../core/errors.js';
import type { Agent, ContainerCreateRequest } from '../../agent/agent.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

/** The control plane around a container service on `store` and `agent`: project p1 and the image example.test/busybox:latest in it. */
async function wireContainerService(store: Store, agent: Agent, opts?: ConstructorParameters<typeof ContainerService>[7]): Promise<ContainerService> {
  await store.projects.insert({ id: 'p1', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const events = new EventBus();
  const quota = await QuotaService.open(store);
  await quota.ensureProject('p1', null);
  const operations = new OperationService(store, events);
  const images = new ImageService(store, agent, events, operations, []);
  const networks = new NetworkService(store, agent, events, quota, { defaultProjectId: 'p1', bridge: 'nimbus0', bridgeSubnet: '10.88.0.0/16', subnetPool: '10.89.0.0/16' });
  const containers = new ContainerService(store, agent, images, events, quota, operations, networks, opts);
  const now = new Date().toISOString();
  await store.images.upsert({ digest: DIGEST, projectId: 'p1', indexDigest: null, configDigest: DIGEST, config: { config: { Cmd: ['sh'] } }, layers: [], chainId: DIGEST, size: 1, createdAt: now });
  await store.images.setTag({ projectId: 'p1', name: 'example.test/busybox:latest', digest: DIGEST, updatedAt: now });
  return containers;
}

async function setup(t: { after(fn: () => Promise<void>): void }, startFails: boolean, over: Record<string, unknown> = {}, opts: ContainerServiceOptions = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ctrsvc-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const calls: string[] = [];
  const agent = {
    claimWarmContainer: () => undefined,
    createContainer: async (req: { id: string }) => {
      calls.push(`create ${req.id}`);
      return { status: 'created', warnings: ['nofile clamped'], runtime: 'runc' };
    },
    startContainer: async (id: string) => {
      calls.push(`start ${id}`);
      if (startFails) throw new Internal('runc start: the init process is gone');
      return { status: 'running', pid: 4242 };
    },
    removeContainer: async (id: string) => {
      calls.push(`remove ${id}`);
    },
    stopContainer: async () => ({ status: 'stopped' }),
    containerState: async () => ({ status: 'created' }),
    onContainerExit: () => undefined,
    ...over,
  } as unknown as Agent;
  const containers = await wireContainerService(store, agent, opts);
  const input = (extra: Record<string, unknown> = {}) =>
    ({ image: 'example.test/busybox:latest', cmd: ['sleep', '60'], env: [], labels: {}, autoRemove: false, restart: { name: 'no' }, network: 'none', ...extra }) as never;
  return { store, containers, calls, input };
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
  const { containers, calls, input } = await setup(t, false, {
    claimWarmContainer: () => {
      calls.push('claim');
      return undefined;
    },
  });
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
  const { containers, input } = await setup(t, false, {
    pauseContainer: () => (hang ? new Promise(() => undefined) : Promise.resolve()),
    unpauseContainer: async () => undefined,
    killContainer: async () => undefined,
  }, { agentDeadlineMs: 300 });
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
  const { containers, calls, input } = await setup(t, false, {
    onContainerExit: (l: (id: string) => void) => exits.push(l),
    containerState: async () => (running ? { status: 'running', pid: 4242 } : { status: 'stopped', exitCode: 3, finishedAt: new Date().toISOString() }),
    startContainer: async (id: string) => {
      calls.push(`start ${id}`);
      running = true;
      return { status: 'running', pid: 4242 };
    },
  });
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
  const agent = {
    onContainerExit: (l: (id: string) => void) => exitListeners.push(l),
    claimWarmContainer: () => undefined,
    createContainer: async (req: ContainerCreateRequest) => {
      const st = await driver.create({
        id: req.id, name: req.name, rootfs: [{ type: 'bind', source: rootfs, options: ['rbind', 'rw'] }],
        process: req.process, resources: req.resources, ...(req.hostname ? { hostname: req.hostname } : {}),
      });
      return { ...st, warnings: await driver.warnings(req.id), runtime: 'runc' };
    },
    startContainer: (id: string) => driver.start(id),
    stopContainer: (id: string, sec: number, signal?: string) => driver.stop(id, sec, signal),
    killContainer: (id: string, signal: string) => driver.kill(id, signal),
    pauseContainer: (id: string) => driver.pause(id),
    unpauseContainer: (id: string) => driver.unpause(id),
    containerState: (id: string) => driver.state(id),
    removeContainer: (id: string) => driver.delete(id),
    listContainers: () => driver.list(),
  } as unknown as Agent;
  const dir = join(base, 'db');
  await mkdir(dir);
  const store = await openStore(join(dir, 'nimbus.db'));
  const containers = await wireContainerService(store, agent);
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
