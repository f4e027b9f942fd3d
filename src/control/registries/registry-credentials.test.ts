/**
 * Registry credentials per project against a real SQLite store: the server a login names, the
 * password sealed at rest (never in the database in clear, bound to its row, one key per store),
 * and the pulls that use them: the project's own (on the first host and on any other host an
 * instance is placed on), never another project's, and a request's own credentials first.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import { EventBus } from '../events/event-bus.js';
import type { OperationService } from '../operations/operations.js';
import { FakeAgent } from '../testing/fake-agent.js';
import { ImageService } from '../images/image-service.js';
import { RegistryCredentialService, registryServer } from './registry-credentials.js';
import { SecretBox } from './sealed-secret.js';

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-registries-'));
  const opening = openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await (await opening.catch(() => undefined))?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const store = await opening;
  for (const id of ['p1', 'p2']) await store.projects.insert({ id, name: id, parentId: null, createdAt: new Date().toISOString() });
  const box = new SecretBox(join(dir, 'secrets.key'), store);
  return { dir, store, box, registries: new RegistryCredentialService(store, box, new EventBus()) };
}

test('the server a login names is the registry as pulls name it', () => {
  assert.equal(registryServer('https://index.docker.io/v1/'), 'docker.io', "the docker CLI's default");
  assert.equal(registryServer('registry-1.docker.io'), 'docker.io');
  assert.equal(registryServer('http://127.0.0.1:5000/v2/'), '127.0.0.1:5000');
  assert.equal(registryServer('Registry.Example.COM:443'), 'registry.example.com:443');
  assert.equal(registryServer('[::1]:5000'), '[::1]:5000');
  for (const bad of ['', 'https://', 'a b', 'host:port', '-x.com', `${'a'.repeat(300)}.com`]) assert.throws(() => registryServer(bad), { code: 'InvalidArgument' }, bad);
});

test('passwords are sealed at rest: never in the database in clear, bound to their row, one key per store', async (t) => {
  const { dir, store, box } = await setup(t);
  const password = 'pw-7f3a9c1e-never-in-clear';
  const sealed = await box.seal(password, 'p1\0reg.example');
  assert.equal(await box.open(sealed, 'p1\0reg.example'), password);
  assert.notEqual(await box.seal(password, 'p1\0reg.example'), sealed, 'a fresh nonce each time');
  await assert.rejects(box.open(sealed, 'p2\0reg.example'), { code: 'DataLoss' }, "another row's context does not open it");
  const [v, kid, iv, ct, tag] = sealed.split('.');
  const flipped = Buffer.from(ct!, 'base64url');
  flipped[0]! ^= 1;
  await assert.rejects(box.open([v, kid, iv, flipped.toString('base64url'), tag].join('.'), 'p1\0reg.example'), { code: 'DataLoss' }, 'tampered');
  assert.equal(statSync(join(dir, 'secrets.key')).mode & 0o777, 0o600);
  await store.registryCredentials.put({ projectId: 'p1', server: 'reg.example', username: 'u', sealedPassword: sealed, createdAt: 'x', updatedAt: 'x', updatedBy: 'admin' });
  for (const f of readdirSync(dir).filter((n) => n.startsWith('nimbus.db'))) assert.ok(!readFileSync(join(dir, f)).includes(password), `${f} holds the password in clear`);
  // another process on this store with a key of its own (or none) is refused, naming the file to copy
  const other = new SecretBox(join(dir, 'other.key'), store);
  await assert.rejects(other.seal('x', 'c'), { code: 'Conflict', message: /other\.key is missing, and the secrets in the store were sealed with a key: copy HOME\/secrets\.key/ });
  rmSync(join(dir, 'secrets.key'));
  await assert.rejects(new SecretBox(join(dir, 'secrets.key'), store).open(sealed, 'p1\0reg.example'), { code: 'Conflict' });
});

test("pulls use the project's stored credentials for that registry, a request's own first, never another project's; so does a pull onto another host", async (t) => {
  const { store, box, registries } = await setup(t);
  const local = new FakeAgent();
  const finished: Promise<unknown>[] = [];
  const operations = {
    start: (kind: string, target: string, projectId: string, work: (op: { id: string; progress(): void }) => Promise<unknown>) => {
      finished.push(work({ id: 'op1', progress: () => undefined }));
      return { id: 'op1', kind, target, projectId };
    },
  } as unknown as OperationService;
  const images = new ImageService(store, local, new EventBus(), operations);
  images.useCredentials((p, r) => registries.credentialsFor(p, r));
  const now = new Date().toISOString();
  const put = async (projectId: string, server: string, username: string, password: string) =>
    store.registryCredentials.put({ projectId, server, username, sealedPassword: await box.seal(password, `registry-credentials\0${projectId}\0${server}`), createdAt: now, updatedAt: now, updatedBy: 'admin' });
  await put('p1', 'reg.example:5000', 'alice', 'alice-pw');
  await put('p1', 'docker.io', 'hub-user', 'hub-pw');
  assert.deepEqual(await registries.list('p1'), [
    { server: 'docker.io', username: 'hub-user', createdAt: now, updatedAt: now, updatedBy: 'admin' },
    { server: 'reg.example:5000', username: 'alice', createdAt: now, updatedAt: now, updatedBy: 'admin' },
  ], 'a listing has no password');

  // one at a time: the agent's calls in the order of the pulls
  const pull = async (...args: Parameters<ImageService['pull']>) => {
    await images.pull(...args);
    await finished.at(-1);
  };
  await pull('reg.example:5000/team/app:v1', 'p1');
  await pull('REG.example:5000/team/app:v1', 'p1');
  await pull('busybox', 'p1');
  await pull('other.example/team/app:v1', 'p1');
  await pull('reg.example:5000/team/app:v1', 'p2');
  await pull('reg.example:5000/team/app:v1', 'p1', { username: 'bob', password: 'explicit' });
  assert.deepEqual(local.calls('pullImage').map(([, opts]) => opts.credentials), [
    { username: 'alice', password: 'alice-pw' },
    { username: 'alice', password: 'alice-pw' },
    { username: 'hub-user', password: 'hub-pw' },
    undefined,
    undefined,
    { username: 'bob', password: 'explicit' },
  ]);

  // a container of p1 placed on host b: b pulls by digest with p1's credentials
  const img = await images.resolve('reg.example:5000/team/app:v1', { projectId: 'p1' });
  const b = new FakeAgent({ name: 'b' }).override('pullImage', async () => ({ ...(await local.pullImage(`x@${img.digest}`, {}, () => undefined)), chainId: img.chainId }));
  images.useHosts({ localName: 'local', names: () => ['local', 'b'], has: (n) => n === 'local' || n === 'b', get: (n) => (n === 'b' ? b : local) });
  await images.ensureOnHost(img, 'b');
  const [ref, opts] = b.calls('pullImage')[0]!;
  assert.equal(ref, `reg.example:5000/team/app@${img.digest}`);
  assert.deepEqual(opts.credentials, { username: 'alice', password: 'alice-pw' });

  await registries.logout('p1', 'http://reg.example:5000/', 'admin');
  await assert.rejects(registries.logout('p1', 'reg.example:5000', 'admin'), { code: 'NotFound', message: 'not logged in to reg.example:5000 in this project' });
  assert.equal(await registries.credentialsFor('p1', 'reg.example:5000'), undefined);
});
