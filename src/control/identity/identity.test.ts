import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../store/sqlite.js';
import { QuotaService } from '../quota/quota-service.js';
import { AccessControl, type Principal } from './access.js';
import { IdentityService } from './identity-service.js';
import { ProjectService } from './project-service.js';
import { hashPassword, verifyPassword } from './passwords.js';

function setup(t: { after(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-identity-'));
  const store = new SqliteStore(join(dir, 'nimbus.db'));
  t.after(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  store.projects.insert({ id: 'default', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const quota = new QuotaService(store);
  quota.ensureProject('default', null);
  return { store, quota, identity: new IdentityService(store), projects: new ProjectService(store, quota, 'default'), access: new AccessControl(store) };
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

test('identity: admin bootstrap, login, tokens stored hashed, expiry, logout, API keys', async (t) => {
  const { store, identity } = setup(t);
  const first = await identity.ensureAdmin(undefined, 'default');
  assert.equal(first.created, true);
  assert.ok(first.generatedPassword && first.generatedPassword.length >= 20);
  assert.deepEqual(await identity.ensureAdmin(undefined, 'default'), { created: false }, 'only on first start');

  await assert.rejects(identity.login('admin', 'wrong-password'), { code: 'Unauthenticated', message: 'invalid user name or password' });
  await assert.rejects(identity.login('nobody', 'wrong-password'), { code: 'Unauthenticated', message: 'invalid user name or password' });
  const s = await identity.login('admin', first.generatedPassword!);
  assert.match(s.token, /^nmbs_[A-Za-z0-9_-]{43}$/);
  const p = identity.authenticate(s.token);
  assert.equal(p.name, 'admin');
  assert.equal(p.systemAdmin, true);
  assert.equal(p.via, 'session');
  assert.equal(store.tokens.byHash(s.token), undefined, 'the secret itself is not stored');
  assert.throws(() => identity.authenticate(s.token + 'x'), { code: 'Unauthenticated' });

  const short = await identity.login('admin', first.generatedPassword!, 1);
  // age the one-second session instead of sleeping
  const row = store.tokens.list(p.userId!, 'session').find((x) => x.expiresAt! < Date.now() + 5000)!;
  store.tokens.delete(row.id);
  store.tokens.insert({ ...row, expiresAt: Date.now() - 1 });
  assert.throws(() => identity.authenticate(short.token), { code: 'Unauthenticated', message: /expired/ });

  identity.logout(p);
  assert.throws(() => identity.authenticate(s.token), { code: 'Unauthenticated' }, 'logout revokes the session');

  const u = await identity.createUser('ci', 'long-enough-pw');
  const me: Principal = { userId: u.id, name: 'ci', systemAdmin: false, defaultProjectId: null, via: 'session', tokenId: null };
  const key = identity.createApiKey(me, 'deploy');
  assert.match(key.key, /^nmbk_/);
  assert.throws(() => identity.createApiKey(me, 'deploy'), { code: 'AlreadyExists' });
  assert.equal(identity.authenticate(key.key).via, 'apikey');
  assert.deepEqual(identity.listApiKeys(me).map((k) => k.name), ['deploy']);
  assert.ok(!JSON.stringify(identity.listApiKeys(me)).includes(key.key.slice(5)), 'keys are never listed');
  identity.removeApiKey(me, 'deploy');
  assert.throws(() => identity.authenticate(key.key), { code: 'Unauthenticated' });

  await assert.rejects(identity.createUser('ci', 'long-enough-pw'), { code: 'AlreadyExists' });
  await assert.rejects(identity.createUser('short', 'abc'), { code: 'InvalidArgument' });
  assert.throws(() => identity.removeUser('admin'), { code: 'Conflict' }, 'the last system administrator stays');
});

test('projects: a tree of any depth, names unique among siblings, paths, rm refused with children or resources, ledger in step', async (t) => {
  const { store, quota, projects } = setup(t);
  const org = projects.create('org', null);
  const team = projects.create('team', org.id);
  const deep = projects.create('team', team.id); // same name, different parent
  const leaf = projects.create('leaf', deep.id);
  assert.equal(leaf.path, 'org/team/team/leaf');
  assert.throws(() => projects.create('team', org.id), { code: 'AlreadyExists' });
  assert.equal(projects.resolve('org/team/team').id, deep.id);
  assert.equal(projects.resolve(leaf.id).id, leaf.id);
  assert.throws(() => projects.resolve('team'), { code: 'InvalidArgument', message: /ambiguous/ });
  assert.equal(projects.resolve('team', (id) => id === team.id).id, team.id, 'only visible projects are candidates');
  assert.throws(() => projects.resolve('org', () => false), { code: 'NotFound' });

  // the ledger knows the tree: a child's hard limit lives within its parent's free
  assert.equal(quota.show(leaf.id).parent, deep.id);
  quota.setLimits(org.id, { hard: { instances: 10 } });
  quota.setLimits(team.id, { hard: { instances: 6 } });
  assert.throws(() => quota.setLimits(deep.id, { hard: { instances: 7 } }), { code: 'QuotaExceeded' });

  assert.throws(() => projects.remove(team.id), { code: 'Conflict', message: /child project/ });
  store.images.upsert({ digest: 'sha256:' + 'b'.repeat(64), projectId: leaf.id, indexDigest: null, configDigest: 'sha256:c', config: {}, layers: [], chainId: 'x', size: 1, createdAt: 'now' });
  assert.throws(() => projects.remove(leaf.id), { code: 'Conflict', message: /1 image/ });
  store.images.delete('sha256:' + 'b'.repeat(64));
  projects.remove(leaf.id);
  assert.equal(quota.ledger.hasProject(leaf.id), false);
  assert.throws(() => projects.remove('default'), { code: 'Conflict' });
});

test('roles: granted on a project, inherited by descendants, never upwards or sideways', async (t) => {
  const { identity, projects, access } = setup(t);
  const org = projects.create('org', null);
  const a = projects.create('a', org.id);
  const b = projects.create('b', org.id);
  const a1 = projects.create('a1', a.id);
  const u = await identity.createUser('olga', 'long-enough-pw');
  projects.grant('olga', a.id, 'reader');
  projects.grant('olga', a1.id, 'admin');
  const p = identity.authenticate((await identity.login('olga', 'long-enough-pw')).token);
  assert.equal(p.defaultProjectId, a.id, 'the first grant became the default project');
  const view = access.forPrincipal(p);
  assert.equal(view.roleOn(a.id), 'reader');
  assert.equal(view.roleOn(a1.id), 'admin', 'the higher of own and inherited');
  assert.equal(view.roleOn(org.id), undefined, 'not upwards');
  assert.equal(view.roleOn(b.id), undefined, 'not sideways');
  assert.deepEqual(projects.grants(a1.id).map((g) => [g.user, g.role, g.inheritedFrom]), [['olga', 'admin', null], ['olga', 'reader', 'org/a']]);
  projects.revoke('olga', a1.id);
  assert.equal(access.forPrincipal(p).roleOn(a1.id), 'reader');
  assert.throws(() => projects.revoke('olga', a1.id), { code: 'NotFound' });
  assert.equal(u.systemAdmin, false);
});
