/**
 * The store conformance suite: what every Store implementation must do, run against each
 * backend (src/store/store-sqlite.test.ts, test/store-postgres.test.ts). Register it with
 * storeConformance(name, open); open() gives a store on an empty database, reopen() (when
 * given) closes the current store and opens another on the same data, cleanup() closes
 * whatever is open and removes the data.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { ConstraintViolation } from './sql/executor.js';
import type { ContainerRecord, ImageRecord, NetworkRecord, VmRecord } from './records.js';
import type { Store } from './store.js';
import { BASELINE_VERSION, MIGRATIONS } from './schema.js';
import { placementConformance } from './conformance-placement.js';
import { registryCredentialConformance } from './conformance-registry-credentials.js';
import { failedAttemptConformance } from './conformance-failed-attempts.js';

export interface ConformanceTarget {
  store: Store;
  reopen?: () => Promise<Store>;
  cleanup: () => Promise<void>;
}

const hex = (prefix: string, length: number) => prefix + '0'.repeat(length - prefix.length);
const NOW = '2026-01-01T00:00:00.000Z';

export function container(id: string, name: string, over: Partial<ContainerRecord> = {}): ContainerRecord {
  return {
    id, name, projectId: 'p1', imageDigest: 'sha256:' + 'a'.repeat(64),
    config: { image: 'busybox', env: [], restart: { name: 'no' }, autoRemove: false, labels: {} },
    status: 'created', runtime: 'runc', pid: null, exitCode: null, oomKilled: false, restartCount: 0,
    stoppedByUser: false, createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, warnings: [], host: 'local',
    ...over,
  };
}

export function vm(id: string, name: string, over: Partial<VmRecord> = {}): VmRecord {
  return {
    id, name, projectId: 'p1', config: { cpus: 2, memoryMiB: 192, kernel: '/boot/vmlinuz', pin: [0, 1] },
    status: 'created', pid: null, exitCode: null, createdAt: new Date().toISOString(), startedAt: null, finishedAt: null, savedAt: null, agent: 'local',
    ...over,
  };
}

function image(digest: string, projectId: string, over: Partial<ImageRecord> = {}): ImageRecord {
  return {
    digest, projectId, indexDigest: null, configDigest: 'sha256:c', config: { architecture: 'amd64', config: { Cmd: ['sh'] } },
    layers: [{ digest: 'sha256:l1', mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 5_000_000_000, diffId: 'sha256:d1' }],
    chainId: 'chain', size: 5_000_000_000, createdAt: NOW, ...over,
  };
}

function network(id: string, name: string, n: number, over: Partial<NetworkRecord> = {}): NetworkRecord {
  return {
    id, name, projectId: 'p1', driver: 'bridge', subnet: `10.${n}.0.0/24`, gateway: `10.${n}.0.1`, internal: false,
    device: `nb-${n}`, builtin: false, labels: { team: 'a' }, createdAt: `2026-01-01T00:00:0${n}.000Z`, ...over,
  };
}

const project = (id: string, name: string, parentId: string | null = null, createdAt = NOW) => ({ id, name, parentId, createdAt });

/** Rejects with the typed error code (AlreadyExists…) and, when given, this exact message. */
async function rejectsWith(p: Promise<unknown>, code: string, message?: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal((e as { code?: unknown }).code, code, `expected ${code}, got ${String(e)}`);
    if (message !== undefined) assert.equal((e as Error).message, message);
    return true;
  });
}

/** Resolves with p's value, or fails the test when p takes longer than ms. */
async function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, no) => (timer = setTimeout(() => no(new Error(`${what}: still pending after ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The schema version that brought instance_names (and VM names unique per project). */
export const INSTANCE_NAMES_VERSION = BASELINE_VERSION + 3;
if (!MIGRATIONS[INSTANCE_NAMES_VERSION - BASELINE_VERSION - 1]?.includes('CREATE TABLE instance_names')) throw new Error('INSTANCE_NAMES_VERSION is not the migration that made instance_names');

/**
 * Data of a store one version before INSTANCE_NAMES_VERSION (portable SQL): p1's "web" is a
 * container and, created later (a race of the services' check), a VM.
 */
export const INSTANCE_NAMES_SEED = `
  INSERT INTO projects (id, name, parent_id, created_at) VALUES ('p1', 'default', NULL, 'then'), ('p2', 'other', NULL, 'then');
  INSERT INTO containers (id, name, project_id, image_digest, config, status, runtime, created_at) VALUES
    ('c1', 'web', 'p1', 'sha256:x', '{}', 'exited', 'runc', '2026-01-01T00:00:01.000Z'),
    ('c2', 'api', 'p2', 'sha256:x', '{}', 'exited', 'runc', '2026-01-01T00:00:01.000Z');
  INSERT INTO vms (id, name, project_id, config, status, created_at, agent) VALUES
    ('v1', 'web', 'p1', '{"cpus":1,"memoryMiB":64}', 'stopped', '2026-01-01T00:00:02.000Z', 'local'),
    ('v2', 'db', 'p1', '{"cpus":1,"memoryMiB":64}', 'stopped', '2026-01-01T00:00:01.000Z', 'b');
`;

/** What the migration to INSTANCE_NAMES_VERSION must make of INSTANCE_NAMES_SEED. */
export async function assertInstanceNamesMigrated(s: Store): Promise<void> {
  assert.deepEqual((await s.containers.list()).map((c) => c.id).sort(), ['c1', 'c2'], 'containers kept');
  assert.deepEqual((await s.vms.list()).map((v) => [v.id, v.name, v.projectId, v.agent]).sort(), [['v1', 'web', 'p1', 'local'], ['v2', 'db', 'p1', 'b']], 'VMs kept');
  const vmLike = async (over: Partial<VmRecord>) => ({ ...(await s.vms.get('v2'))!, ...over });
  // the names are reserved across kinds
  await rejectsWith(s.containers.insert(container('c3', 'db')), 'AlreadyExists', 'a VM named "db" already exists in this project');
  await rejectsWith(s.vms.insert(await vmLike({ id: 'v3', name: 'api', projectId: 'p2' })), 'AlreadyExists', 'a container named "api" already exists in this project');
  // of the old duplicate, the older (the container) holds the name; the VM keeps its row and its name
  await rejectsWith(s.vms.insert(await vmLike({ id: 'v4', name: 'web' })), 'AlreadyExists', 'a container named "web" already exists in this project');
  await s.vms.delete('v1'); // the unreserved one goes without taking the container's name with it
  await rejectsWith(s.vms.insert(await vmLike({ id: 'v5', name: 'web' })), 'AlreadyExists', 'a container named "web" already exists in this project');
  // VM names are no longer unique across projects
  await s.vms.insert(await vmLike({ id: 'v6', projectId: 'p2' }));
  assert.deepEqual((await s.vms.named('db')).map((v) => v.projectId), ['p1', 'p2']);
}

export function storeConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  placementConformance(name, open);
  registryCredentialConformance(name, open);
  failedAttemptConformance(name, open);
  /** A store on an empty database, cleaned up after the test; reopen() is the target's (or fails the test). */
  async function setup(t: TestContext): Promise<{ s: Store; reopen: () => Promise<Store> }> {
    const target = await open();
    t.after(() => target.cleanup());
    return {
      s: target.store,
      reopen: async () => {
        assert.ok(target.reopen, `${name}: the target cannot reopen`);
        return target.reopen();
      },
    };
  }

  test(`${name}: projects: names unique among siblings, roots first, ordered lists`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'default'));
    await s.projects.insert(project('p2', 'default', 'p1', '2025-01-01T00:00:00.000Z'));
    await s.projects.insert(project('p3', 'zeta', 'p1'));
    await s.projects.insert(project('p4', 'alpha', 'p1'));
    await s.projects.insert(project('p5', 'Beta'));
    await rejectsWith(s.projects.insert(project('p6', 'default', 'p1')), 'AlreadyExists', 'project "default" already exists under that parent');
    await rejectsWith(s.projects.insert(project('p7', 'default')), 'AlreadyExists', 'project "default" already exists');
    await rejectsWith(s.projects.insert(project('p1', 'other')), 'AlreadyExists');
    assert.deepEqual(await s.projects.get('p2'), project('p2', 'default', 'p1', '2025-01-01T00:00:00.000Z'));
    assert.equal(await s.projects.get('nope'), undefined);
    assert.equal((await s.projects.byName('default'))?.id, 'p1', 'root first, though the child is older');
    assert.deepEqual((await s.projects.named('default')).map((p) => p.id), ['p1', 'p2'], 'every project of the name, roots first');
    assert.deepEqual(await s.projects.named('nope'), []);
    assert.equal((await s.projects.child('p1', 'default'))?.id, 'p2');
    assert.equal((await s.projects.child(null, 'default'))?.id, 'p1');
    assert.equal(await s.projects.child('p1', 'Beta'), undefined);
    assert.deepEqual((await s.projects.children('p1')).map((p) => p.name), ['alpha', 'default', 'zeta']);
    assert.deepEqual((await s.projects.children(null)).map((p) => p.id), ['p5', 'p1'], 'byte order: upper case first');
    assert.deepEqual((await s.projects.list()).map((p) => p.id), ['p5', 'p4', 'p1', 'p2', 'p3']);
    await s.projects.delete('p5');
    assert.equal(await s.projects.get('p5'), undefined);
  });

  test(`${name}: users: round trip, unique names, update, delete cascades tokens and grants`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'default'));
    const alice = { id: 'u1', name: 'alice', passwordHash: 'scrypt$x', systemAdmin: true, defaultProjectId: 'p1', createdAt: NOW };
    await s.users.insert(alice);
    await s.users.insert({ ...alice, id: 'u2', name: 'Bob', systemAdmin: false, defaultProjectId: null });
    await rejectsWith(s.users.insert({ ...alice, id: 'u3' }), 'AlreadyExists', 'user "alice" already exists');
    assert.deepEqual(await s.users.get('u1'), alice);
    assert.equal((await s.users.byName('Bob'))?.id, 'u2');
    assert.equal(await s.users.byName('bob'), undefined, 'names are case-sensitive');
    assert.deepEqual((await s.users.list()).map((u) => u.name), ['Bob', 'alice']);
    await s.users.update('u2', { systemAdmin: true, passwordHash: 'scrypt$y' });
    assert.deepEqual(await s.users.get('u2'), { ...alice, id: 'u2', name: 'Bob', systemAdmin: true, passwordHash: 'scrypt$y', defaultProjectId: null });
    await rejectsWith(s.users.update('nope', { systemAdmin: true }), 'NotFound', 'no such user: nope');
    await s.tokens.insert({ id: 't1', userId: 'u2', kind: 'session', name: null, hash: 'h1', createdAt: NOW, expiresAt: 1_800_000_000_000 });
    await s.roles.grant({ userId: 'u2', projectId: 'p1', role: 'member', createdAt: NOW });
    await s.users.delete('u2');
    assert.equal(await s.users.get('u2'), undefined);
    assert.equal(await s.tokens.byHash('h1'), undefined, 'tokens went with the user');
    assert.deepEqual(await s.roles.list({ userId: 'u2' }), [], 'grants went with the user');
    // a user's default project: cleared when the project goes
    await s.projects.insert(project('p9', 'gone'));
    await s.users.update('u1', { defaultProjectId: 'p9' });
    await s.projects.delete('p9');
    assert.equal((await s.users.get('u1'))?.defaultProjectId, null);
  });

  test(`${name}: tokens: by hash, per user and kind in order, API key names unique per user, expiry`, async (t) => {
    const { s } = await setup(t);
    for (const id of ['u1', 'u2']) await s.users.insert({ id, name: id, passwordHash: 'x', systemAdmin: false, defaultProjectId: null, createdAt: NOW });
    const key = { id: 'k1', userId: 'u1', kind: 'apikey' as const, name: 'deploy', hash: 'hk1', createdAt: '2026-01-02T00:00:00.000Z', expiresAt: null };
    await s.tokens.insert(key);
    await s.tokens.insert({ ...key, id: 'k0', name: 'ci', hash: 'hk0', createdAt: '2026-01-01T00:00:00.000Z' });
    await rejectsWith(s.tokens.insert({ ...key, id: 'k2', hash: 'hk2' }), 'AlreadyExists', 'an API key named "deploy" already exists');
    await s.tokens.insert({ ...key, id: 'k3', userId: 'u2', hash: 'hk3' }); // another user's "deploy"
    await rejectsWith(s.tokens.insert({ ...key, id: 'k4', userId: 'u2', name: 'other', hash: 'hk1' }), 'AlreadyExists');
    const session = (id: string, expiresAt: number | null) => ({ id, userId: 'u1', kind: 'session' as const, name: null, hash: `h${id}`, createdAt: NOW, expiresAt });
    await s.tokens.insert(session('s1', 1_700_000_000_000));
    await s.tokens.insert(session('s2', 1_900_000_000_000));
    await s.tokens.insert(session('s3', null));
    assert.deepEqual(await s.tokens.byHash('hk1'), key);
    assert.equal((await s.tokens.byHash('hs2'))?.expiresAt, 1_900_000_000_000, 'epoch ms round-trip as a number');
    assert.deepEqual(await s.tokens.get('k1'), key);
    assert.equal(await s.tokens.get('hk1'), undefined, 'by id, not by hash');
    assert.deepEqual((await s.tokens.list('u1', 'apikey')).map((k) => k.id), ['k0', 'k1']);
    assert.deepEqual((await s.tokens.list('u1', 'session')).map((k) => k.id), ['s1', 's2', 's3']);
    assert.equal(await s.tokens.deleteExpired(1_800_000_000_000), 1);
    assert.equal(await s.tokens.deleteExpired(1_800_000_000_000), 0);
    assert.deepEqual((await s.tokens.list('u1', 'session')).map((k) => k.id), ['s2', 's3']);
    await s.tokens.delete('k0');
    assert.equal(await s.tokens.byHash('hk0'), undefined);
    assert.equal(await s.tokens.get('k0'), undefined);
  });

  test(`${name}: roles: one grant per user and project, filters, revoke`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'a'));
    await s.projects.insert(project('p2', 'b'));
    for (const id of ['u1', 'u2']) await s.users.insert({ id, name: id, passwordHash: 'x', systemAdmin: false, defaultProjectId: null, createdAt: NOW });
    await s.roles.grant({ userId: 'u1', projectId: 'p1', role: 'reader', createdAt: '2026-01-01T00:00:01.000Z' });
    await s.roles.grant({ userId: 'u2', projectId: 'p1', role: 'member', createdAt: '2026-01-01T00:00:02.000Z' });
    await s.roles.grant({ userId: 'u1', projectId: 'p2', role: 'admin', createdAt: '2026-01-01T00:00:03.000Z' });
    await s.roles.grant({ userId: 'u1', projectId: 'p1', role: 'admin', createdAt: '2026-01-01T00:00:09.000Z' });
    const brief = (gs: { userId: string; projectId: string; role: string }[]) => gs.map((g) => `${g.userId}@${g.projectId}=${g.role}`);
    assert.deepEqual(brief(await s.roles.list()), ['u1@p1=admin', 'u2@p1=member', 'u1@p2=admin'], 'replaced in place (creation time kept)');
    assert.deepEqual(brief(await s.roles.list({ userId: 'u1' })), ['u1@p1=admin', 'u1@p2=admin']);
    assert.deepEqual(brief(await s.roles.list({ projectId: 'p1' })), ['u1@p1=admin', 'u2@p1=member']);
    assert.deepEqual(brief(await s.roles.list({ userId: 'u2', projectId: 'p2' })), []);
    assert.equal(await s.roles.revoke('u1', 'p1'), true);
    assert.equal(await s.roles.revoke('u1', 'p1'), false);
    await s.projects.delete('p2');
    assert.deepEqual(brief(await s.roles.list()), ['u2@p1=member'], 'grants went with the project');
  });

  test(`${name}: images: shared content, references and tags per project, cascades`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('pa', 'A'));
    await s.projects.insert(project('pb', 'B'));
    const d = 'sha256:' + 'd'.repeat(64);
    const e = 'sha256:' + 'e'.repeat(64);
    await s.images.upsert(image(d, 'pa', { indexDigest: 'sha256:idx' }));
    await s.images.upsert(image(e, 'pa', { createdAt: '2025-01-01T00:00:00.000Z' }));
    await s.images.setTag({ projectId: 'pa', name: 'r/x:latest', digest: d, updatedAt: NOW });
    const { projectId: _owner, ...stored } = image(d, 'pa', { indexDigest: 'sha256:idx' });
    assert.deepEqual(await s.images.get(d), stored);
    assert.equal((await s.images.get(d))?.size, 5_000_000_000, 'sizes past 2^32 round-trip as numbers');
    assert.deepEqual((await s.images.contents()).map((i) => i.digest), [e, d]);
    assert.deepEqual((await s.images.list('pa')).map((i) => [i.digest, i.projectId]), [[e, 'pa'], [d, 'pa']]);
    assert.deepEqual(await s.images.list('pb'), []);
    assert.equal(await s.images.ref('pb', d), undefined);
    // B gets the same image: shared content, its own reference and tag; a second upsert keeps the index digest
    await s.images.upsert({ ...(await s.images.ref('pa', d))!, projectId: 'pb', indexDigest: null, createdAt: '2026-02-01T00:00:00.000Z' });
    assert.equal((await s.images.ref('pb', d))?.createdAt, '2026-02-01T00:00:00.000Z', "the reference's time");
    assert.equal((await s.images.get(d))?.indexDigest, 'sha256:idx');
    assert.equal((await s.images.get(d))?.createdAt, NOW, "the content's time");
    await s.images.upsert({ ...(await s.images.ref('pa', d))!, createdAt: '2027-01-01T00:00:00.000Z' }); // again: no second reference
    assert.equal((await s.images.ref('pa', d))?.createdAt, NOW);
    await s.images.setTag({ projectId: 'pb', name: 'r/x:latest', digest: d, updatedAt: NOW });
    await s.images.setTag({ projectId: 'pb', name: 'r/a:1', digest: d, updatedAt: NOW });
    assert.equal(await s.images.refCount(d), 2);
    assert.deepEqual((await s.images.list()).map((i) => i.projectId), ['pa', 'pa', 'pb']);
    const tagNames = async (f?: Parameters<Store['images']['tags']>[0]) => (await s.images.tags(f)).map((x) => `${x.projectId}:${x.name}`);
    assert.deepEqual(await tagNames(), ['pb:r/a:1', 'pa:r/x:latest', 'pb:r/x:latest']);
    assert.deepEqual(await tagNames({ name: 'r/x:latest' }), ['pa:r/x:latest', 'pb:r/x:latest']);
    assert.deepEqual(await tagNames({ projectId: 'pb', digest: d }), ['pb:r/a:1', 'pb:r/x:latest']);
    // a tag moves in place
    await s.images.setTag({ projectId: 'pa', name: 'r/x:latest', digest: e, updatedAt: '2026-03-01T00:00:00.000Z' });
    assert.deepEqual(await s.images.tag('pa', 'r/x:latest'), { projectId: 'pa', name: 'r/x:latest', digest: e, updatedAt: '2026-03-01T00:00:00.000Z' });
    await s.images.setTag({ projectId: 'pa', name: 'r/x:latest', digest: d, updatedAt: NOW });
    // a reference goes with its tags, the content stays while referenced
    await s.images.deleteRef('pa', d);
    assert.equal(await s.images.tag('pa', 'r/x:latest'), undefined, "A's tag went with its reference");
    assert.equal((await s.images.tag('pb', 'r/x:latest'))?.digest, d, "B's did not");
    assert.equal((await s.images.get(d))?.chainId, 'chain');
    assert.equal(await s.images.refCount(d), 1);
    // a tag needs its reference
    await assert.rejects(s.images.setTag({ projectId: 'pa', name: 'r/y:1', digest: d, updatedAt: NOW }), (err: unknown) => err instanceof ConstraintViolation && err.kind === 'foreign-key');
    await s.images.deleteTag('pb', 'r/a:1');
    assert.deepEqual(await tagNames({ projectId: 'pb' }), ['pb:r/x:latest']);
    // the content goes with every reference and tag
    await s.images.delete(d);
    assert.equal(await s.images.get(d), undefined);
    assert.equal(await s.images.refCount(d), 0);
    assert.deepEqual(await tagNames({ digest: d }), []);
    assert.deepEqual((await s.images.list()).map((i) => i.digest), [e]);
  });

  test(`${name}: containers: round trip, survive reopen, resolve by prefix and name, names unique per project`, async (t) => {
    const target = await setup(t);
    let s = target.s;
    await s.projects.insert(project('p1', 'default', null, new Date().toISOString()));
    const web = container(hex('abc123', 64), 'web', { createdAt: '2026-01-01T00:00:01.000Z' });
    await s.containers.insert(web);
    await s.containers.insert(container(hex('abd456', 64), 'db', { createdAt: '2026-01-01T00:00:02.000Z' }));
    await rejectsWith(s.containers.insert(container(hex('ffff', 64), 'web')), 'AlreadyExists', 'a container named "web" already exists in this project');
    await rejectsWith(s.containers.insert(container(web.id, 'other')), 'AlreadyExists');
    const updated = await s.containers.update(web.id, { status: 'running', pid: 42, oomKilled: true, warnings: ['w'], config: { ...web.config, cmd: ['top'] } });
    assert.deepEqual(updated, { ...web, status: 'running', pid: 42, oomKilled: true, warnings: ['w'], config: { ...web.config, cmd: ['top'] } }, 'the row as updated');
    assert.deepEqual(await s.containers.update(web.id, {}), updated, 'an empty patch: the row');
    await rejectsWith(s.containers.update('nope', { status: 'exited' }), 'NotFound', 'no such container: nope');
    await rejectsWith(s.containers.update('nope', {}), 'NotFound', 'no such container: nope');

    s = await target.reopen();
    const got = (await s.containers.byName('p1', 'web'))!;
    assert.equal(got.status, 'running');
    assert.equal(got.pid, 42);
    assert.equal(got.oomKilled, true);
    assert.equal(got.stoppedByUser, false);
    assert.deepEqual(got, updated);
    assert.deepEqual((await s.containers.withIdPrefix('abc')).map((c) => c.name), ['web']);
    assert.deepEqual((await s.containers.withIdPrefix('ab')).map((c) => c.name), ['web', 'db'], 'oldest first');
    assert.deepEqual(await s.containers.withIdPrefix('x%'), [], 'not hex: no LIKE patterns');
    assert.deepEqual(await s.containers.withIdPrefix('ABC'), [], 'ids are lower-case hex');
    assert.equal(await s.containers.byName('p1', 'nope'), undefined);
    // names are unique per project only
    await s.projects.insert(project('p2', 'other', null, 'now'));
    await s.containers.insert(container(hex('eeee', 64), 'web', { projectId: 'p2', createdAt: '2026-01-01T00:00:03.000Z', imageDigest: 'sha256:other' }));
    assert.deepEqual((await s.containers.named('web')).map((c) => c.projectId), ['p1', 'p2']);
    assert.deepEqual((await s.containers.list({ status: ['running'] })).map((c) => c.name), ['web']);
    assert.deepEqual((await s.containers.list({ status: ['running', 'created'] })).map((c) => c.id), [hex('eeee', 64), hex('abd456', 64), web.id], 'newest first');
    assert.deepEqual((await s.containers.list({ projectId: 'p2' })).map((c) => c.id), [hex('eeee', 64)]);
    assert.equal((await s.containers.list({ status: [] })).length, 3, 'no statuses: no filter');
    assert.equal(await s.containers.countByImage('sha256:' + 'a'.repeat(64)), 2);
    assert.equal(await s.containers.countByImage('sha256:' + 'a'.repeat(64), 'p2'), 0);
    assert.equal(await s.containers.countByImage('sha256:other', 'p2'), 1);
  });

  test(`${name}: VMs: round trip, survive reopen, look up by prefix and name, names unique per project`, async (t) => {
    const target = await setup(t);
    let s = target.s;
    await s.projects.insert(project('p1', 'default', null, new Date().toISOString()));
    await s.vms.insert(vm(hex('abc1', 32), 'web', { createdAt: '2026-01-01T00:00:01.000Z' }));
    await s.vms.insert(vm(hex('abd2', 32), 'db', { createdAt: '2026-01-01T00:00:02.000Z' }));
    await rejectsWith(s.vms.insert(vm(hex('ffff', 32), 'web')), 'AlreadyExists', 'a VM named "web" already exists in this project');
    await rejectsWith(s.vms.insert(vm(hex('abc1', 32), 'other')), 'AlreadyExists');
    await s.vms.update(hex('abc1', 32), { status: 'saved', savedAt: '2026-01-01T00:00:00.000Z' });
    await rejectsWith(s.vms.update('nope', { status: 'saved' }), 'NotFound', 'no such vm: nope');
    s = await target.reopen();
    const web = (await s.vms.byName('p1', 'web'))!;
    assert.equal(web.id, hex('abc1', 32));
    assert.equal(web.status, 'saved');
    assert.equal(web.savedAt, '2026-01-01T00:00:00.000Z');
    assert.deepEqual(web.config.pin, [0, 1]);
    assert.deepEqual((await s.vms.withIdPrefix('abc')).map((v) => v.name), ['web']);
    assert.deepEqual((await s.vms.withIdPrefix('ab')).map((v) => v.name), ['web', 'db'], 'oldest first');
    assert.deepEqual(await s.vms.withIdPrefix('a%'), [], 'not hex: no LIKE patterns');
    assert.equal(await s.vms.byName('p1', 'nope'), undefined);
    // names are unique per project only
    await s.projects.insert(project('p2', 'other', null, 'now'));
    await s.vms.insert(vm(hex('eeee', 32), 'web', { projectId: 'p2', createdAt: '2026-01-01T00:00:03.000Z' }));
    assert.deepEqual((await s.vms.named('web')).map((v) => v.projectId), ['p1', 'p2']);
    assert.equal((await s.vms.byName('p2', 'web'))?.id, hex('eeee', 32));
    assert.deepEqual((await s.vms.list({ status: ['saved'] })).map((v) => v.name), ['web']);
    assert.deepEqual((await s.vms.list()).map((v) => v.id), [hex('eeee', 32), hex('abd2', 32), hex('abc1', 32)], 'newest first');
    assert.deepEqual((await s.vms.list({ projectId: 'p1', status: ['created'] })).map((v) => v.name), ['db']);
    await s.vms.delete(web.id);
    assert.equal((await s.vms.list()).length, 2);
    assert.equal(await s.vms.byName('p1', 'web'), undefined);
    await s.vms.insert(vm(hex('abc3', 32), 'web')); // the name is free again
  });

  test(`${name}: instance names: one per project across containers and VMs, freed on delete, kept by a rename`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'default'));
    await s.projects.insert(project('p2', 'other'));
    await s.containers.insert(container(hex('c1', 64), 'web'));
    await s.vms.insert(vm(hex('a1', 32), 'db'));
    // either way round, whichever holds the name is named
    await rejectsWith(s.vms.insert(vm(hex('a2', 32), 'web')), 'AlreadyExists', 'a container named "web" already exists in this project');
    await rejectsWith(s.containers.insert(container(hex('c2', 64), 'db')), 'AlreadyExists', 'a VM named "db" already exists in this project');
    assert.equal(await s.vms.get(hex('a2', 32)), undefined, 'the refused VM left no row');
    assert.equal(await s.containers.get(hex('c2', 64)), undefined, 'the refused container left no row');
    // an id in use is refused before its name is reserved
    await rejectsWith(s.vms.insert(vm(hex('a1', 32), 'fresh')), 'AlreadyExists');
    await s.containers.insert(container(hex('c3', 64), 'fresh')); // "fresh" was not left reserved
    // other projects are free to use the names
    await s.vms.insert(vm(hex('a3', 32), 'web', { projectId: 'p2' }));
    await s.containers.insert(container(hex('c4', 64), 'db', { projectId: 'p2' }));
    // a name is freed with its instance, for either kind
    await s.containers.delete(hex('c1', 64));
    await s.vms.insert(vm(hex('a4', 32), 'web'));
    await s.vms.delete(hex('a1', 32));
    await s.containers.insert(container(hex('c5', 64), 'db'));
    // inside a caller's transaction the name is reserved too, and rolled back with it
    await assert.rejects(s.transaction(async () => {
      await s.vms.insert(vm(hex('a5', 32), 'tx'));
      throw new Error('roll back');
    }), /roll back/);
    await s.containers.insert(container(hex('c6', 64), 'tx'));
    // a rename takes the new name and frees the old one, or fails whole
    await rejectsWith(s.vms.update(hex('a4', 32), { name: 'db' }), 'AlreadyExists');
    assert.equal((await s.vms.get(hex('a4', 32)))?.name, 'web', 'the refused rename changed nothing');
    await s.vms.update(hex('a4', 32), { name: 'www' });
    await s.containers.insert(container(hex('c7', 64), 'web'));
    await rejectsWith(s.containers.insert(container(hex('c8', 64), 'www')), 'AlreadyExists', 'a VM named "www" already exists in this project');
  });

  test(`${name}: agents are registered again in place, and a VM keeps the agent it moved to`, async (t) => {
    const target = await setup(t);
    let s = target.s;
    await s.projects.insert(project('p1', 'default', null, new Date().toISOString()));
    await s.agents.put({ name: 'b', url: 'http://127.0.0.1:1', token: 't1', registeredAt: '2026-01-01T00:00:00.000Z' });
    await s.agents.put({ name: 'a', url: 'unix:/run/a.sock', token: 't0', registeredAt: '2026-01-01T00:00:00.000Z' });
    await s.agents.put({ name: 'b', url: 'http://127.0.0.1:2', token: 't2', registeredAt: '2026-01-02T00:00:00.000Z' });
    const id = hex('abc1', 32);
    await s.vms.insert(vm(id, 'web'));
    assert.equal((await s.vms.get(id))?.agent, 'local');
    await s.vms.update(id, { agent: 'b' });
    s = await target.reopen();
    assert.deepEqual((await s.agents.list()).map((a) => [a.name, a.url, a.token, a.registeredAt]), [
      ['a', 'unix:/run/a.sock', 't0', '2026-01-01T00:00:00.000Z'],
      ['b', 'http://127.0.0.1:2', 't2', '2026-01-02T00:00:00.000Z'],
    ]);
    assert.equal((await s.vms.get(id))?.agent, 'b');
    await s.agents.delete('a');
    assert.equal(await s.agents.get('a'), undefined);
    assert.equal((await s.agents.get('b'))?.token, 't2');
  });

  test(`${name}: hosts: zone, labels, disabled, ratios and facts round trip; a registration again keeps them; the embedded row is made once`, async (t) => {
    const target = await setup(t);
    let s = target.s;
    await s.agents.put({ name: 'b', url: 'unix:/run/b.sock', token: 't1', registeredAt: NOW });
    const fresh = await s.agents.get('b');
    assert.deepEqual([fresh?.zone, fresh?.labels, fresh?.disabled, fresh?.allocationRatios, fresh?.facts], ['default', {}, null, {}, null], 'defaults');
    const disabled = { reason: 'disk swap, ünïcode', at: '2026-01-02T00:00:00.000Z', by: 'admin' };
    const updated = await s.agents.updateSettings('b', { zone: 'eu-1a', labels: { rack: 'r12', ssd: 'true' }, disabled, allocationRatios: { cpu: 2.5 } });
    assert.deepEqual([updated.zone, updated.labels, updated.disabled, updated.allocationRatios], ['eu-1a', { rack: 'r12', ssd: 'true' }, disabled, { cpu: 2.5 }]);
    const facts = { cpus: 64, memoryBytes: 2 ** 38, diskBytes: 2 ** 42, accelerator: 'kvm', runtimes: ['runc', 'crun'], architecture: 'arm64', hostname: 'b.example', kernel: '6.1.0', seenAt: 1_800_000_000_123 };
    assert.equal(await s.agents.recordFacts('b', facts), true);
    assert.equal(await s.agents.recordFacts('gone', facts), false, 'no row, nothing recorded');
    // an agent registering again (a new address) keeps what the administrator set and the facts
    await s.agents.put({ name: 'b', url: 'unix:/run/b2.sock', token: 't2', registeredAt: '2026-01-03T00:00:00.000Z' });
    await s.agents.ensureEmbedded('local', NOW);
    await s.agents.updateSettings('local', { zone: 'home' });
    await s.agents.ensureEmbedded('local', '2027-01-01T00:00:00.000Z');
    s = await target.reopen();
    const b = await s.agents.get('b');
    assert.deepEqual(b, { name: 'b', url: 'unix:/run/b2.sock', token: 't2', registeredAt: '2026-01-03T00:00:00.000Z', zone: 'eu-1a', labels: { rack: 'r12', ssd: 'true' }, disabled, allocationRatios: { cpu: 2.5 }, facts });
    const local = await s.agents.get('local');
    assert.deepEqual([local?.url, local?.token, local?.registeredAt, local?.zone], ['embedded:', '', NOW, 'home'], 'made once, settings kept');
    // enable (disabled null), labels replaced whole, an untouched field kept
    const enabled = await s.agents.updateSettings('b', { disabled: null, labels: {} });
    assert.deepEqual([enabled.disabled, enabled.labels, enabled.zone, enabled.allocationRatios], [null, {}, 'eu-1a', { cpu: 2.5 }]);
    assert.deepEqual(await s.agents.updateSettings('b', {}), enabled, 'an empty patch changes nothing');
    await rejectsWith(s.agents.updateSettings('nope', { zone: 'x' }), 'NotFound');
    // a host's row can be made whole (as migrate-store copies it)
    await s.agents.put({ ...b!, name: 'c' });
    assert.deepEqual(await s.agents.get('c'), { ...b, name: 'c' });
  });

  test(`${name}: control-plane settings: the first claim of a key decides, concurrent claimers all get the winner's value`, async (t) => {
    const { s } = await setup(t);
    assert.equal(await s.settings.get('k'), undefined);
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => s.settings.claim('k', `v${i}`)));
    assert.equal(new Set(answers).size, 1, 'one value for everyone');
    assert.equal(await s.settings.get('k'), answers[0]);
    assert.equal(await s.settings.claim('k', 'later'), answers[0], 'a later claim gets the stored value');
  });

  test(`${name}: agent join tokens: redeemed once, by hash, unexpired; concurrent redeemers, one wins; stale ones go`, async (t) => {
    const target = await setup(t);
    let s = target.s;
    const T0 = 1_800_000_000_000;
    const tok = (id: string, expiresAt: number) => ({ id, hash: `h-${id}`, createdAt: new Date(T0).toISOString(), expiresAt, usedAt: null, usedBy: null });
    await s.joinTokens.insert(tok('j1', T0 + 600_000));
    await s.joinTokens.insert(tok('j2', T0 + 1_000));
    await s.joinTokens.insert(tok('j3', T0 + 600_000));
    assert.equal(await s.joinTokens.redeem('j1', 'h-wrong', 'b', T0), false, 'a wrong hash burns nothing');
    assert.equal(await s.joinTokens.redeem('j2', 'h-j2', 'b', T0 + 1_000), false, 'expired at its expiry');
    assert.equal(await s.joinTokens.redeem('nope', 'h-nope', 'b', T0), false);
    const racers = await Promise.all(Array.from({ length: 8 }, (_, i) => s.joinTokens.redeem('j1', 'h-j1', `agent${i}`, T0 + 5)));
    assert.equal(racers.filter(Boolean).length, 1, 'one redeemer of eight wins');
    s = await target.reopen();
    const j1 = await s.joinTokens.get('j1');
    assert.equal(j1?.usedAt, T0 + 5);
    assert.match(j1?.usedBy ?? '', /^agent\d$/);
    assert.equal(await s.joinTokens.redeem('j1', 'h-j1', 'again', T0 + 6), false, 'used is used');
    assert.deepEqual((await s.joinTokens.get('j3'))?.expiresAt, T0 + 600_000, 'large epoch ms round-trip');
    assert.equal(await s.joinTokens.deleteStale(T0 + 1_000), 2, 'the used one and the expired one');
    assert.deepEqual((await s.joinTokens.list()).map((j) => j.id), ['j3']);
  });

  test(`${name}: operations: round trip, patch, newest first with a limit`, async (t) => {
    const { s } = await setup(t);
    const op = (id: string, createdAt: string) => ({
      id, kind: 'image.pull', projectId: 'p1', status: 'pending' as const, target: 'busybox', progress: {}, result: null, error: null, createdAt, updatedAt: createdAt, replica: null,
    });
    await s.operations.insert(op('o1', '2026-01-01T00:00:01.000Z'));
    await s.operations.insert(op('o2', '2026-01-01T00:00:02.000Z'));
    await s.operations.insert(op('o3', '2026-01-01T00:00:02.000Z'));
    assert.deepEqual(await s.operations.get('o1'), op('o1', '2026-01-01T00:00:01.000Z'));
    const done = await s.operations.update('o1', { status: 'succeeded', progress: { layers: 2 }, result: { digest: 'sha256:x' }, updatedAt: '2026-01-01T00:01:00.000Z' });
    assert.deepEqual(await s.operations.get('o1'), done);
    assert.deepEqual(done.result, { digest: 'sha256:x' });
    const failed = await s.operations.update('o2', { status: 'failed', error: { code: 'Unavailable', message: 'registry down' } });
    assert.deepEqual((await s.operations.get('o2'))?.error, failed.error);
    await s.operations.update('o1', { result: null });
    assert.equal((await s.operations.get('o1'))?.result, null);
    await rejectsWith(s.operations.update('nope', { status: 'failed' }), 'NotFound', 'no such operation: nope');
    assert.deepEqual((await s.operations.list()).map((o) => o.id), ['o3', 'o2', 'o1']);
    assert.deepEqual((await s.operations.list(2)).map((o) => o.id), ['o3', 'o2']);
    await s.operations.insert({ ...op('o4', '2026-01-01T00:00:03.000Z'), kind: 'vm.migrate' });
    assert.deepEqual((await s.operations.list(10, { kind: 'vm.migrate' })).map((o) => o.id), ['o4'], 'of one kind');
    assert.deepEqual((await s.operations.list(10, { kind: op('x', '').kind })).map((o) => o.id), ['o3', 'o2', 'o1']);
    assert.equal(await s.operations.get('nope'), undefined);
    // of some projects: the newest of theirs, though another project's are newer (and more than the limit)
    for (let i = 0; i < 5; i++) await s.operations.insert({ ...op(`q${i}`, `2026-01-01T00:00:1${i}.000Z`), projectId: 'p2' });
    assert.deepEqual((await s.operations.list(3)).map((o) => o.id), ['q4', 'q3', 'q2']);
    assert.deepEqual((await s.operations.list(3, { projectIds: ['p1'] })).map((o) => o.id), ['o4', 'o3', 'o2'], 'not crowded out by p2');
    assert.deepEqual((await s.operations.list(2, { projectIds: ['p1'], kind: 'vm.migrate' })).map((o) => o.id), ['o4']);
    const many = [...Array.from({ length: 1200 }, (_, i) => `x${i}`), 'p1', 'p2'];
    assert.deepEqual((await s.operations.list(4, { projectIds: many })).map((o) => o.id), ['q4', 'q3', 'q2', 'q1'], 'ids past one IN list');
    assert.deepEqual((await s.operations.list(10, { projectIds: [] })).map((o) => o.id), []);
  });

  test(`${name}: operations: replicas register, beat and go; only the unfinished operations of replicas gone are failed, once`, async (t) => {
    const { s } = await setup(t);
    const T = 1_800_000_000_000; // epoch ms past 2^32: INT64 columns
    const replica = (id: string, lastSeen: number) => ({ id, hostname: 'h1', pid: 42, startedAt: T - 60_000, lastSeen, apiUrl: id === 'live' ? 'https://10.0.0.1:8443' : null });
    await s.operations.registerReplica(replica('live', T));
    await s.operations.registerReplica(replica('stale', T - 20_000));
    await s.operations.registerReplica({ ...replica('live', T - 1), pid: 43 }); // registered again in place
    assert.deepEqual(await s.operations.listReplicas(), [{ ...replica('live', T - 1), pid: 43 }, replica('stale', T - 20_000)]);
    assert.equal(await s.operations.touchReplica('live', T), true);
    assert.equal(await s.operations.touchReplica('nope', T), false, 'no row: the caller registers again');
    const op = (id: string, replicaId: string | null, status: 'running' | 'pending' | 'succeeded' = 'running') => ({
      id, kind: 'image.pull', projectId: 'p1', status, target: 'busybox', progress: { n: 1 }, result: null, error: null,
      createdAt: `2026-01-01T00:00:0${id.slice(1)}.000Z`, updatedAt: NOW, replica: replicaId,
    });
    await s.operations.insert(op('o1', 'live'));
    await s.operations.insert(op('o2', 'stale'));
    await s.operations.insert(op('o3', 'vanished'));
    await s.operations.insert(op('o4', null, 'pending'));
    await s.operations.insert(op('o5', 'stale', 'succeeded'));
    await s.operations.insert(op('o6', 'me'));
    assert.equal((await s.operations.get('o1'))?.replica, 'live');
    const error = { code: 'Unavailable', message: 'gone' };
    const failed = await s.operations.failOrphaned(T - 15_000, 'me', error, '2026-01-02T00:00:00.000Z');
    assert.deepEqual(failed.map((o) => o.id), ['o2', 'o3', 'o4'], 'the stale replica\'s, an unknown replica\'s, one without a replica; oldest first');
    assert.deepEqual(failed[0], { ...op('o2', 'stale'), status: 'failed', error, updatedAt: '2026-01-02T00:00:00.000Z' });
    assert.equal((await s.operations.get('o1'))?.status, 'running', 'a live replica\'s operation is left alone');
    assert.equal((await s.operations.get('o5'))?.status, 'succeeded', 'finished ones are left alone');
    assert.equal((await s.operations.get('o6'))?.status, 'running', 'the caller\'s own are left alone');
    assert.deepEqual(await s.operations.failOrphaned(T - 15_000, 'me', error, NOW), [], 'failed once');
    // the replica goes (a clean shutdown): its operations are orphans at once
    await s.operations.removeReplica('live');
    assert.deepEqual((await s.operations.failOrphaned(T - 15_000, 'me', error, NOW)).map((o) => o.id), ['o1']);
    assert.equal(await s.operations.pruneReplicas(T - 15_000), 1);
    assert.deepEqual(await s.operations.listReplicas(), []);
  });

  test(`${name}: networks: unique name, subnet and device (told apart), prefixes, leases`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'a'));
    await s.projects.insert(project('p2', 'b'));
    const n1 = network(hex('aa1', 64), 'front', 1);
    await s.networks.insert(n1);
    await s.networks.insert(network(hex('aa2', 64), 'back', 2, { internal: true, builtin: true, labels: {} }));
    await s.networks.insert(network(hex('bb3', 64), 'front', 3, { projectId: 'p2' }));
    await rejectsWith(s.networks.insert(network(hex('cc1', 64), 'front', 4)), 'AlreadyExists', 'network "front" already exists in this project');
    await rejectsWith(s.networks.insert(network(hex('cc2', 64), 'subnet-device', 5, { subnet: n1.subnet })), 'AlreadyExists', `subnet ${n1.subnet} is used by another network`);
    await rejectsWith(s.networks.insert(network(hex('cc3', 64), 'subnet-device', 6, { device: n1.device })), 'AlreadyExists', `device ${n1.device} is used by another network`);
    assert.deepEqual(await s.networks.get(n1.id), n1);
    assert.equal((await s.networks.byName('p1', 'back'))?.internal, true);
    assert.equal((await s.networks.byName('p1', 'back'))?.builtin, true);
    assert.equal(await s.networks.byName('p2', 'back'), undefined);
    assert.deepEqual((await s.networks.named('front')).map((n) => n.projectId), ['p1', 'p2']);
    assert.deepEqual((await s.networks.withIdPrefix('aa')).map((n) => n.name), ['front', 'back']);
    assert.deepEqual(await s.networks.withIdPrefix('a_'), []);
    assert.deepEqual((await s.networks.list()).map((n) => n.id), [hex('aa1', 64), hex('aa2', 64), hex('bb3', 64)]);
    assert.deepEqual((await s.networks.list({ projectId: 'p2' })).map((n) => n.name), ['front']);
    // a VXLAN id is given once and held by one network only
    assert.equal(await s.networks.setVni(n1.id, 7), 7);
    assert.equal(await s.networks.setVni(n1.id, 8), 7, 'given once');
    assert.equal(await s.networks.setVni(hex('aa2', 64), 7), undefined, 'another network holds 7');
    assert.equal((await s.networks.get(hex('aa2', 64)))?.vni, undefined);
    assert.equal(await s.networks.setVni(hex('aa2', 64), 9), 9);
    assert.deepEqual((await s.networks.vnisInUse()).sort((a, b) => a - b), [7, 9]);
    assert.equal((await s.networks.get(n1.id))?.vni, 7);
    n1.vni = 7;

    const lease = (networkId: string, address: string, instanceId: string, ifIndex: number) => ({ networkId, address, instanceId, ifIndex, createdAt: NOW });
    await s.networks.lease(lease(n1.id, '10.1.0.2', 'c2', 0));
    await s.networks.lease(lease(n1.id, '10.1.0.3', 'c1', 1));
    await s.networks.lease(lease(hex('aa2', 64), '10.2.0.2', 'c1', 0));
    const taken = 'address 10.1.0.2 is already leased on this network, or the container is already on it';
    await rejectsWith(s.networks.lease(lease(n1.id, '10.1.0.2', 'c3', 0)), 'AlreadyExists', taken);
    await rejectsWith(s.networks.lease(lease(n1.id, '10.1.0.9', 'c1', 2)), 'AlreadyExists', 'address 10.1.0.9 is already leased on this network, or the container is already on it');
    const brief = (ls: { instanceId: string; ifIndex: number; address: string }[]) => ls.map((l) => `${l.instanceId}/${l.ifIndex}=${l.address}`);
    assert.deepEqual(brief(await s.networks.leases({})), ['c1/0=10.2.0.2', 'c1/1=10.1.0.3', 'c2/0=10.1.0.2']);
    assert.deepEqual(brief(await s.networks.leases({ networkId: n1.id })), ['c1/1=10.1.0.3', 'c2/0=10.1.0.2']);
    assert.deepEqual(brief(await s.networks.leases({ instanceId: 'c1', networkId: n1.id })), ['c1/1=10.1.0.3']);
    assert.deepEqual((await s.networks.leasedAddresses(n1.id)).sort(), ['10.1.0.2', '10.1.0.3'], 'the addresses alone, of that network');
    assert.deepEqual((await s.networks.leasedAmong(n1.id, ['10.1.0.1', '10.1.0.2', '10.1.0.3', '10.1.0.4', '10.2.0.2'])).sort(), ['10.1.0.2', '10.1.0.3'], 'of those asked, the leased ones of that network');
    assert.deepEqual(await s.networks.leasedAmong(n1.id, []), []);
    assert.equal(await s.networks.release('c1', n1.id), 1);
    assert.equal(await s.networks.release('c1'), 1);
    assert.equal(await s.networks.release('c1'), 0);
    // an instance's leases go with its row (containers and VMs alike)
    await s.containers.insert(container('c2', 'web'));
    await s.vms.insert(vm('v1', 'vm1'));
    await s.networks.lease(lease(hex('aa2', 64), '10.2.0.5', 'v1', 0));
    await s.containers.delete('c2');
    await s.vms.delete('v1');
    assert.deepEqual(await s.networks.leases({}), []);
    assert.equal(await s.containers.get('c2'), undefined);
    await s.networks.delete(n1.id);
    assert.equal(await s.networks.get(n1.id), undefined);
  });

  test(`${name}: instances name their host: containers by host, networks and images per host`, async (t) => {
    const { s, reopen } = await setup(t);
    await s.projects.insert(project('p1', 'a'));
    await s.containers.insert(container('c1', 'web', { host: 'edge-1', createdAt: '2026-01-01T00:00:01.000Z' }));
    await s.containers.insert(container('c2', 'db', { createdAt: '2026-01-01T00:00:02.000Z' }));
    await s.containers.insert(container('c3', 'cache', { host: 'edge-1', createdAt: '2026-01-01T00:00:03.000Z' }));
    assert.equal((await s.containers.get('c1'))?.host, 'edge-1');
    assert.equal((await s.containers.get('c2'))?.host, 'local');
    assert.deepEqual((await s.containers.onHost('edge-1')).map((c) => c.id), ['c3', 'c1']);
    assert.deepEqual((await s.containers.onHost('nowhere')).map((c) => c.id), []);
    assert.equal((await s.containers.update('c2', { host: 'edge-2' })).host, 'edge-2');

    const n1 = network(hex('aa1', 64), 'front', 1);
    const n2 = network(hex('aa2', 64), 'back', 2);
    await s.networks.insert(n1);
    await s.networks.insert(n2);
    await s.networks.addHost(n1.id, 'local', NOW);
    await s.networks.addHost(n1.id, 'edge-1', NOW);
    await s.networks.addHost(n1.id, 'edge-1', NOW); // idempotent
    await s.networks.addHost(n2.id, 'edge-1', NOW);
    assert.deepEqual(await s.networks.hosts(n1.id), ['edge-1', 'local']);
    assert.deepEqual((await s.networks.onHost('edge-1')).map((n) => n.name), ['front', 'back']);
    await s.networks.removeHost(n1.id, 'edge-1');
    assert.deepEqual(await s.networks.hosts(n1.id), ['local']);
    // a network's host rows go with it
    await s.networks.delete(n1.id);
    assert.deepEqual(await s.networks.hosts(n1.id), []);
    assert.deepEqual((await s.networks.onHost('local')).map((n) => n.name), []);

    await s.images.addHost('chain-a', 'local', NOW);
    await s.images.addHost('chain-a', 'edge-1', NOW);
    await s.images.addHost('chain-a', 'edge-1', NOW);
    await s.images.addHost('chain-b', 'edge-1', NOW);
    assert.deepEqual(await s.images.hosts('chain-a'), ['edge-1', 'local']);
    assert.deepEqual(await s.images.hosts('chain-none'), []);
    assert.equal(await s.images.removeHost('local', 'chain-a'), 1);
    assert.equal(await s.images.removeHost('edge-1'), 2);
    assert.deepEqual(await s.images.hosts('chain-a'), []);
    const r = await reopen();
    assert.equal((await r.containers.get('c1'))?.host, 'edge-1');
    assert.deepEqual(await r.networks.hosts(n2.id), ['edge-1']);
  });

  test(`${name}: disk images: names per project, ordered, counted by digest, large sizes`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'a'));
    await s.projects.insert(project('p2', 'b'));
    const disk = (projectId: string, name: string, digest: string) => ({
      projectId, name, digest, format: 'qcow2' as const, size: 3_000_000_000, virtualSize: 64 * 2 ** 30, createdAt: NOW,
    });
    await s.disks.insert(disk('p2', 'ubuntu', 'sha256:u'));
    await s.disks.insert(disk('p1', 'ubuntu', 'sha256:u'));
    await s.disks.insert(disk('p1', 'alpine', 'sha256:a'));
    await rejectsWith(s.disks.insert(disk('p1', 'alpine', 'sha256:b')), 'AlreadyExists', 'disk image "alpine" already exists in this project');
    assert.deepEqual(await s.disks.get('p1', 'ubuntu'), disk('p1', 'ubuntu', 'sha256:u'));
    assert.equal((await s.disks.get('p1', 'ubuntu'))?.virtualSize, 64 * 2 ** 30);
    assert.deepEqual((await s.disks.list('p1')).map((d) => d.name), ['alpine', 'ubuntu']);
    assert.deepEqual((await s.disks.list()).map((d) => `${d.projectId}/${d.name}`), ['p1/alpine', 'p1/ubuntu', 'p2/ubuntu']);
    assert.equal(await s.disks.countByDigest('sha256:u'), 2);
    await s.disks.delete('p2', 'ubuntu');
    assert.equal(await s.disks.countByDigest('sha256:u'), 1);
    assert.equal(await s.disks.get('p2', 'ubuntu'), undefined);
  });

  test(`${name}: quota ledger rows: state, instances, audit (idempotent, newest within the limit, oldest first)`, async (t) => {
    const target = await setup(t);
    let s = target.s;
    assert.equal(await s.loadQuotaState(), undefined);
    await s.saveQuotaState('{"v":1}');
    await s.saveQuotaState('{"v":2}');
    assert.equal(await s.loadQuotaState(), '{"v":2}');
    await s.saveQuotaInstances([{ id: 'i2', json: '{"id":"i2"}' }, { id: 'i1', json: '{"id":"i1"}' }, { id: 'i3', json: '{"id":"i3"}' }]);
    await s.saveQuotaInstances([{ id: 'i2', json: null }, { id: 'i3', json: '{"id":"i3","n":2}' }, { id: 'gone', json: null }]);
    await s.saveQuotaInstances([]);
    assert.deepEqual(await s.loadQuotaInstances(), ['{"id":"i1"}', '{"id":"i3","n":2}']);
    const entry = (seq: number, project: string) => ({ seq, project, json: `{"seq":${seq}}` });
    await s.appendQuotaAudit([entry(1, 'a'), entry(2, 'b'), entry(3, 'a')]);
    await s.appendQuotaAudit([entry(3, 'a'), entry(4, 'a'), { seq: 2, project: 'b', json: '{"changed":true}' }]);
    await s.appendQuotaAudit([]);
    assert.deepEqual(await s.queryQuotaAudit({ limit: 10 }), ['{"seq":1}', '{"seq":2}', '{"seq":3}', '{"seq":4}'], 'appending again changes nothing');
    assert.deepEqual(await s.queryQuotaAudit({ limit: 2 }), ['{"seq":3}', '{"seq":4}'], 'the newest, oldest first');
    assert.deepEqual(await s.queryQuotaAudit({ project: 'a', limit: 2 }), ['{"seq":3}', '{"seq":4}']);
    assert.deepEqual(await s.queryQuotaAudit({ project: 'a', sinceSeq: 1, limit: 10 }), ['{"seq":3}', '{"seq":4}']);
    assert.deepEqual(await s.queryQuotaAudit({ project: 'b', limit: 10 }), ['{"seq":2}']);
    assert.deepEqual(await s.queryQuotaAudit({ sinceSeq: 4, limit: 10 }), []);
    await s.appendQuotaAudit([entry(2 ** 40, 'a')]);
    assert.deepEqual(await s.queryQuotaAudit({ sinceSeq: 4, limit: 1 }), [`{"seq":${2 ** 40}}`], 'sequence numbers past 2^32');
    s = await target.reopen();
    assert.equal(await s.loadQuotaState(), '{"v":2}');
    assert.deepEqual(await s.loadQuotaInstances(), ['{"id":"i1"}', '{"id":"i3","n":2}']);
    assert.equal((await s.queryQuotaAudit({ limit: 100 })).length, 5);
  });

  test(`${name}: transactions: commit, roll back on a throw, nested calls join the outer one`, async (t) => {
    const { s } = await setup(t);
    assert.equal(await s.transaction(async () => {
      await s.projects.insert(project('a', 'a'));
      return 42;
    }), 42);
    assert.equal((await s.projects.get('a'))?.name, 'a');
    await assert.rejects(s.transaction(async () => {
      await s.projects.insert(project('x', 'x'));
      assert.equal((await s.projects.get('x'))?.name, 'x', 'a transaction sees its own writes');
      throw new Error('boom');
    }), /boom/);
    assert.equal(await s.projects.get('x'), undefined, 'rolled back');
    // nested: the inner one commits only with the outer one
    await assert.rejects(s.transaction(async () => {
      await s.transaction(async () => s.projects.insert(project('y', 'y')));
      await s.projects.insert(project('z', 'z'));
      throw new Error('outer fails');
    }), /outer fails/);
    assert.equal(await s.projects.get('y'), undefined, 'the nested write went with the outer rollback');
    assert.equal(await s.projects.get('z'), undefined);
    // a refused write caught inside a transaction does not spoil it (IPAM tries the next address)
    await s.transaction(async () => {
      await rejectsWith(s.projects.insert(project('a', 'again')), 'AlreadyExists');
      await s.projects.insert(project('w', 'w'));
    });
    assert.equal((await s.projects.get('w'))?.name, 'w');
    // deep calls inside fn join too (no handle threaded through)
    const deep = async () => { await new Promise((ok) => setImmediate(ok)); await s.projects.insert(project('d', 'd')); };
    await assert.rejects(s.transaction(async () => { await deep(); throw new Error('undo'); }));
    assert.equal(await s.projects.get('d'), undefined);
  });

  test(`${name}: transactions: a read from outside neither sees uncommitted writes nor hangs`, async (t) => {
    const { s } = await setup(t);
    let entered!: () => void;
    const inside = new Promise<void>((ok) => (entered = ok));
    let letGo!: () => void;
    const gate = new Promise<void>((ok) => (letGo = ok));
    // the test holds the transaction open on purpose (services must not): a gate, not the store
    const tx = s.transaction(async () => {
      await s.projects.insert(project('u', 'uncommitted'));
      entered();
      await gate;
      throw new Error('roll back');
    });
    await inside;
    const outside = s.projects.get('u'); // from the test's context, outside the transaction
    const outsideList = s.projects.list();
    await new Promise((ok) => setTimeout(ok, 50));
    letGo();
    await assert.rejects(tx, /roll back/);
    assert.equal(await within(5000, outside, 'read from outside'), undefined);
    assert.deepEqual(await within(5000, outsideList, 'list from outside'), []);
    // and a committed one is seen by the next outside read
    await s.transaction(async () => s.projects.insert(project('c', 'committed')));
    assert.equal((await s.projects.get('c'))?.name, 'committed');
  });

  test(`${name}: transactions: concurrent read-then-write transactions lose no update`, async (t) => {
    const { s } = await setup(t);
    await s.projects.insert(project('p1', 'default'));
    await s.containers.insert(container('c1', 'counter'));
    await within(60_000, Promise.all(Array.from({ length: 50 }, () => s.transaction(async () => {
      const c = (await s.containers.get('c1'))!;
      await s.containers.update('c1', { restartCount: c.restartCount + 1 });
    }))), '50 increments');
    assert.equal((await s.containers.get('c1'))?.restartCount, 50);
    // with outside writes between them, all of them land too
    await within(60_000, Promise.all(Array.from({ length: 20 }, (_, i) => i % 2
      ? s.transaction(async () => { await s.agents.put({ name: `a${i}`, url: 'u', token: 't', registeredAt: NOW }); })
      : s.agents.put({ name: `a${i}`, url: 'u', token: 't', registeredAt: NOW }))), 'mixed writes');
    assert.equal((await s.agents.list()).length, 20);
  });
}
