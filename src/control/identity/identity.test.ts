import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { QuotaService } from '../quota/quota-service.js';
import { AccessControl, PrincipalAccess, type Principal } from './access.js';
import { ProjectTree } from './project-tree.js';
import type { Role } from '../../store/records.js';
import { IdentityService } from './identity-service.js';
import { ProjectService } from './project-service.js';
import { hashPassword, verifyPassword } from './passwords.js';

async function setup(t: { after(fn: () => Promise<void>): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-identity-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.projects.insert({ id: 'default', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const quota = await QuotaService.open(store);
  await quota.ensureProject('default', null);
  const access = new AccessControl(store);
  return { store, quota, identity: new IdentityService(store), projects: new ProjectService(store, quota, 'default', () => access.forgetTree()), access };
}

test('passwords: scrypt with a salt per hash, verified only by the right password', async () => {
  const a = await hashPassword('correct horse');
  const b = await hashPassword('correct horse');
  assert.match(a, /^scrypt\$16384\$8\$1\$/);
  assert.notEqual(a, b, 'salted');
  assert.ok(!a.includes('correct'));
  assert.equal(await verifyPassword('correct horse', a), true);
  assert.equal(await verifyPassword('correct horsf', a), false);
  assert.equal(await verifyPassword('x', 'garbage'), false);
});

test('identity: failed logins are throttled per user and address (429 with when to retry, before the password is checked), and per address over all users', async (t) => {
  const { identity } = await setup(t);
  await identity.ensureAdmin('admin-password-1', 'default');
  for (let i = 0; i < 5; i++) await assert.rejects(identity.login('admin', 'wrong', undefined, '192.0.2.1'), { code: 'Unauthenticated' });
  // the right password too: a throttled attempt is not checked
  await assert.rejects(identity.login('admin', 'admin-password-1', undefined, '192.0.2.1'), (e: Error & { code?: string; details?: { retryAfterSeconds?: number } }) => {
    assert.equal(e.code, 'TooManyRequests');
    assert.ok((e.details?.retryAfterSeconds ?? 0) > 0 && (e.details?.retryAfterSeconds ?? 0) <= 300, JSON.stringify(e.details));
    return true;
  });
  // from another address the user is not locked out
  assert.ok((await identity.login('admin', 'admin-password-1', undefined, '192.0.2.2')).token);
  // a spray over many names from one address: 20 failures, then that address is held for every name
  for (let i = 0; i < 20; i++) await assert.rejects(identity.login(`user${i}`, 'wrong', undefined, '192.0.2.3'), { code: 'Unauthenticated' });
  await assert.rejects(identity.login('admin', 'admin-password-1', undefined, '192.0.2.3'), { code: 'TooManyRequests' });
});

test('identity: admin bootstrap, login, tokens stored hashed, expiry, logout, API keys', async (t) => {
  const { store, identity } = await setup(t);
  const first = await identity.ensureAdmin(undefined, 'default');
  assert.equal(first.created, true);
  assert.ok(first.generatedPassword && first.generatedPassword.length >= 20);
  assert.deepEqual(await identity.ensureAdmin(undefined, 'default'), { created: false }, 'only on first start');

  await assert.rejects(identity.login('admin', 'wrong-password'), { code: 'Unauthenticated', message: 'invalid user name or password' });
  await assert.rejects(identity.login('nobody', 'wrong-password'), { code: 'Unauthenticated', message: 'invalid user name or password' });
  const s = await identity.login('admin', first.generatedPassword!);
  assert.match(s.token, /^nmbs_[A-Za-z0-9_-]{43}$/);
  const p = await identity.authenticate(s.token);
  assert.equal(p.name, 'admin');
  assert.equal(p.systemAdmin, true);
  assert.equal(p.via, 'session');
  assert.equal(await store.tokens.byHash(s.token), undefined, 'the secret itself is not stored');
  await assert.rejects(identity.authenticate(s.token + 'x'), { code: 'Unauthenticated' });

  const short = await identity.login('admin', first.generatedPassword!, 1);
  // age the one-second session instead of sleeping
  const row = (await store.tokens.list(p.userId!, 'session')).find((x) => x.expiresAt! < Date.now() + 5000)!;
  await store.tokens.delete(row.id);
  await store.tokens.insert({ ...row, expiresAt: Date.now() - 1 });
  await assert.rejects(identity.authenticate(short.token), { code: 'Unauthenticated', message: /expired/ });
  assert.equal((await store.tokens.list(p.userId!, 'session')).some((x) => x.id === row.id), false, 'an expired token is deleted when shown');

  await identity.logout(p);
  await assert.rejects(identity.authenticate(s.token), { code: 'Unauthenticated' }, 'logout revokes the session');

  const u = await identity.createUser('ci', 'long-enough-pw');
  const me: Principal = { userId: u.id, name: 'ci', systemAdmin: false, defaultProjectId: null, via: 'session', tokenId: null };
  const key = await identity.createApiKey(me, 'deploy');
  assert.match(key.key, /^nmbk_/);
  await assert.rejects(identity.createApiKey(me, 'deploy'), { code: 'AlreadyExists' });
  assert.equal((await identity.authenticate(key.key)).via, 'apikey');
  assert.deepEqual((await identity.listApiKeys(me)).map((k) => k.name), ['deploy']);
  assert.ok(!JSON.stringify(await identity.listApiKeys(me)).includes(key.key.slice(5)), 'keys are never listed');
  await identity.removeApiKey(me, 'deploy');
  await assert.rejects(identity.authenticate(key.key), { code: 'Unauthenticated' });
  await assert.rejects(identity.removeApiKey(me, 'deploy'), { code: 'NotFound' });

  await assert.rejects(identity.createUser('ci', 'long-enough-pw'), { code: 'AlreadyExists' });
  await assert.rejects(identity.createUser('short', 'abc'), { code: 'InvalidArgument' });
  await assert.rejects(identity.removeUser('admin'), { code: 'Conflict' }, 'the last system administrator stays');
  assert.deepEqual((await identity.listUsers()).map((x) => x.name).sort(), ['admin', 'ci']);
  await identity.setPassword('ci', 'another-long-pw');
  await assert.rejects(identity.login('ci', 'long-enough-pw'), { code: 'Unauthenticated' });
  assert.equal((await identity.login('ci', 'another-long-pw')).user.name, 'ci');
  await identity.removeUser('ci');
  await assert.rejects(identity.user('ci'), { code: 'NotFound' });
  assert.equal((await identity.localAdmin('default')).name, 'admin');
});

test('projects: a tree of any depth, names unique among siblings, paths, rm refused with children or resources, ledger in step', async (t) => {
  const { store, quota, projects } = await setup(t);
  const org = await projects.create('org', null);
  const team = await projects.create('team', org.id);
  const deep = await projects.create('team', team.id); // same name, different parent
  const leaf = await projects.create('leaf', deep.id);
  assert.equal(leaf.path, 'org/team/team/leaf');
  const inLedger = Object.keys(quota.ledger.snapshot().projects).length;
  await assert.rejects(projects.create('team', org.id), { code: 'AlreadyExists' });
  assert.equal(Object.keys(quota.ledger.snapshot().projects).length, inLedger, 'a refused create leaves no ledger entry');
  assert.equal((await projects.resolve('org/team/team')).id, deep.id);
  assert.equal((await projects.resolve(leaf.id)).id, leaf.id);
  await assert.rejects(projects.resolve('team'), { code: 'InvalidArgument', message: /ambiguous: use its path \(org\/team, org\/team\/team\)|ambiguous: use its path \(org\/team\/team, org\/team\)/ });
  // a root project of that name too: its path is the bare name, and names it (every listed path resolves)
  const rootTeam = await projects.create('team', null);
  assert.equal((await projects.resolve('team')).id, rootTeam.id, "the root project's path");
  assert.equal((await projects.resolve('/team')).id, rootTeam.id);
  assert.equal((await projects.resolve('org/team')).id, team.id);
  await assert.rejects(projects.resolve('team', (id) => id !== rootTeam.id), { code: 'InvalidArgument', message: /ambiguous/ }, 'an invisible root is no candidate');
  for (const p of await projects.list(() => true)) assert.equal((await projects.resolve(p.path)).id, p.id, `${p.path} names its project`);
  await projects.remove(rootTeam.id);
  assert.equal((await projects.resolve('team', (id) => id === team.id)).id, team.id, 'only visible projects are candidates');
  await assert.rejects(projects.resolve('org', () => false), { code: 'NotFound' });
  await assert.rejects(projects.resolve('org/nope'), { code: 'NotFound' });
  assert.deepEqual((await projects.list(() => true)).map((p) => p.path), ['default', 'org', 'org/team', 'org/team/team', 'org/team/team/leaf']);
  assert.deepEqual((await projects.list((id) => id === deep.id || id === leaf.id)).map((p) => p.path), ['org/team/team', 'org/team/team/leaf']);

  // the ledger knows the tree: a child's hard limit lives within its parent's free
  assert.equal(quota.show(leaf.id).parent, deep.id);
  await quota.setLimits(org.id, { hard: { instances: 10 } });
  await quota.setLimits(team.id, { hard: { instances: 6 } });
  await assert.rejects(quota.setLimits(deep.id, { hard: { instances: 7 } }), { code: 'QuotaExceeded' });

  await assert.rejects(projects.remove(team.id), { code: 'Conflict', message: /child project/ });
  await store.images.upsert({ digest: 'sha256:' + 'b'.repeat(64), projectId: leaf.id, indexDigest: null, configDigest: 'sha256:c', config: {}, layers: [], chainId: 'x', size: 1, createdAt: 'now' });
  await assert.rejects(projects.remove(leaf.id), { code: 'Conflict', message: /1 image/ });
  await store.images.delete('sha256:' + 'b'.repeat(64));
  await projects.remove(leaf.id);
  assert.equal(quota.ledger.hasProject(leaf.id), false);
  assert.equal(await store.projects.get(leaf.id), undefined);
  await assert.rejects(projects.remove('default'), { code: 'Conflict' });
});

test('access: the project tree is listed once for many requests, again at once after a project is made or removed here', async (t) => {
  const { store, identity, projects, access } = await setup(t);
  let listings = 0;
  const list = store.projects.list.bind(store.projects);
  store.projects.list = () => {
    listings++;
    return list();
  };
  const org = await projects.create('org', null);
  await identity.createUser('olga', 'long-enough-pw');
  await projects.grant('olga', org.id, 'reader');
  const p = await identity.authenticate((await identity.login('olga', 'long-enough-pw')).token);
  listings = 0;
  for (let i = 0; i < 20; i++) assert.equal((await access.forPrincipal(p)).canRead(org.id), true);
  assert.equal(listings, 1, 'twenty requests, one listing');
  const team = await projects.create('team', org.id);
  assert.equal((await access.forPrincipal(p)).roleOn(team.id), 'reader', 'a project made here is seen by the next request');
  assert.equal(listings, 2);
  await projects.remove(team.id);
  assert.equal((await access.forPrincipal(p)).roleOn(team.id), undefined, 'nor a removed one');
  assert.equal(listings, 3);
  // one made by another control-plane process (straight into the store): seen once the kept tree expires
  await store.projects.insert({ id: 'elsewhere', name: 'elsewhere', parentId: org.id, createdAt: new Date().toISOString() });
  assert.equal((await access.forPrincipal(p)).roleOn('elsewhere'), undefined, 'not yet: the tree is kept');
  await new Promise((r) => setTimeout(r, 2_100));
  assert.equal((await access.forPrincipal(p)).roleOn('elsewhere'), 'reader', 'within the kept tree\'s 2 s');
});

test('roles: granted on a project, inherited by descendants, never upwards or sideways', async (t) => {
  const { identity, projects, access } = await setup(t);
  const org = await projects.create('org', null);
  const a = await projects.create('a', org.id);
  const b = await projects.create('b', org.id);
  const a1 = await projects.create('a1', a.id);
  const a1x = await projects.create('x', a1.id);
  const u = await identity.createUser('olga', 'long-enough-pw');
  const before = await access.forPrincipal({ userId: u.id, name: 'olga', systemAdmin: false, defaultProjectId: null, via: 'session', tokenId: null });
  assert.equal(before.canRead(a.id), false, 'no grants: nothing is visible');
  await projects.grant('olga', a.id, 'reader');
  await projects.grant('olga', a1.id, 'admin');
  const p = await identity.authenticate((await identity.login('olga', 'long-enough-pw')).token);
  assert.equal(p.defaultProjectId, a.id, 'the first grant became the default project');
  const view = await access.forPrincipal(p);
  assert.equal(view.roleOn(a.id), 'reader');
  assert.equal(view.roleOn(a1.id), 'admin', 'the higher of own and inherited');
  assert.equal(view.roleOn(a1x.id), 'admin', 'inherited over more than one level');
  assert.equal(view.roleOn(org.id), undefined, 'not upwards');
  assert.equal(view.roleOn(b.id), undefined, 'not sideways');
  assert.equal(view.canRead(b.id), false);
  assert.equal(view.canRead(a1.id), true);
  assert.equal(view.canRead(null), false);
  assert.deepEqual(await access.lineage(a1x.id), [a1x.id, a1.id, a.id, org.id]);
  assert.deepEqual((await projects.grants(a1.id)).map((g) => [g.user, g.role, g.inheritedFrom]), [['olga', 'admin', null], ['olga', 'reader', 'org/a']]);
  await projects.revoke('olga', a1.id);
  assert.equal((await access.forPrincipal(p)).roleOn(a1.id), 'reader');
  await assert.rejects(projects.revoke('olga', a1.id), { code: 'NotFound' });
  await assert.rejects(projects.grant('nobody', a.id, 'reader'), { code: 'NotFound' });
  const admin = await access.forPrincipal({ ...p, systemAdmin: true });
  assert.equal(admin.roleOn(b.id), 'admin', 'a system administrator holds admin everywhere');
  assert.equal(u.systemAdmin, false);
});

test('access: the readable projects are exactly those with a role (a grant on them or above), on random trees', async () => {
  const fc = (await import('fast-check')).default;
  await fc.assert(
    fc.property(
      fc.array(fc.nat(), { minLength: 1, maxLength: 40 }), // each project's parent: one made before it, or none
      fc.array(fc.tuple(fc.nat(), fc.constantFrom<Role>('reader', 'member', 'admin')), { maxLength: 6 }),
      (parentPicks, grantPicks) => {
        const parents = new Map<string, string | null>();
        parentPicks.forEach((pick, i) => parents.set(`p${i}`, i === 0 || pick % 3 === 0 ? null : `p${pick % i}`));
        const grants = new Map<string, Role>(grantPicks.map(([n, role]) => [`p${n % (parentPicks.length + 2)}`, role])); // some on no project of the tree
        const view = new PrincipalAccess({ userId: 'u', name: 'u', systemAdmin: false, defaultProjectId: null, via: 'session', tokenId: null }, grants, new ProjectTree(parents));
        const byRole = [...parents.keys()].filter((id) => view.roleOn(id) !== undefined).sort();
        const readable = view.readableProjects()!;
        assert.deepEqual([...readable].sort(), byRole);
        assert.equal(new Set(readable).size, readable.length, 'each once');
      },
    ),
    { numRuns: 300, seed: 31 },
  );
});
