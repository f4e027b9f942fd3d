/**
 * Registry authentication against the real docker-registry behind a loopback
 * auth front: Bearer-token challenges (as Docker Hub's token service) and Basic.
 * Pulls go through the agent's real client into a real content store.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalContentStore } from '../src/agent/content/local-content-store.js';
import { pullImage } from '../src/agent/images/pull.js';
import { allowedForDaemons } from '../scripts/fixtures/registry.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { FRONT_PASS, FRONT_USER, authFront } from './helpers/registry-auth-front.js';
import { RegistryClient } from '../src/agent/images/registry-client.js';

const USER = FRONT_USER;
const PASS = FRONT_PASS;

describe('registry authentication', () => {
  let registry: TestRegistry;
  before(async () => {
    registry = await startTestRegistryWithImages();
  });
  after(async () => {
    await registry?.stop();
  });

  for (const mode of ['bearer', 'basic'] as const) {
    test(`${mode}: refused without credentials, pulled with them`, async (t) => {
      const front = await authFront(registry.host, mode);
      const dir = mkdtempSync(join(tmpdir(), 'nimbus-auth-'));
      t.after(async () => {
        await front.close();
        rmSync(dir, { recursive: true, force: true });
      });
      const store = new LocalContentStore(dir);
      const ref = `${front.host}/nimbus-test/busybox:latest`;
      await assert.rejects(pullImage(ref, { ...allowedForDaemons(), store }), { code: 'Unauthenticated' });
      await assert.rejects(pullImage(ref, { ...allowedForDaemons(), store, credentials: { username: USER, password: 'wrong' } }), { code: 'Unauthenticated' });
      const img = await pullImage(ref, { ...allowedForDaemons(), store, credentials: { username: USER, password: PASS } });
      assert.equal(img.layers.length, 3);
      for (const l of img.layers) assert.ok(await store.info(l.digest), `layer ${l.digest} stored`);
      if (mode === 'bearer') assert.ok(front.scopes.includes('repository:nimbus-test/busybox:pull'), `token asked for the pull scope: ${front.scopes.join(', ')}`);
    });
  }

  test('login checks as dockerd: GET /v2/ with the challenge answered; a refusal in dockerd\'s words', async (t) => {
    const fronts = { bearer: await authFront(registry.host, 'bearer'), basic: await authFront(registry.host, 'basic') };
    t.after(async () => {
      await fronts.bearer.close();
      await fronts.basic.close();
    });
    const login = (host: string, password: string) => new RegistryClient(host, '', { allowedRegistries: [...allowedForDaemons().allowedRegistries, '127.0.0.1:1'], credentials: { username: USER, password } }).checkLogin();
    await login(fronts.bearer.host, PASS);
    assert.deepEqual(fronts.bearer.scopes, [''], 'the token was asked for without a scope, as a login does');
    await assert.rejects(login(fronts.bearer.host, 'wrong'), { code: 'Unauthenticated', message: `Get "http://${fronts.bearer.host}/v2/": unauthorized: authentication required` });
    await login(fronts.basic.host, PASS);
    await assert.rejects(login(fronts.basic.host, 'wrong'), { code: 'Unauthenticated', message: `login attempt to http://${fronts.basic.host}/v2/ failed with status: 401 Unauthorized` });
    // a registry that wants no credentials accepts any (dockerd says Login Succeeded there too)
    await login(registry.host, 'anything');
    await assert.rejects(login('127.0.0.1:1', PASS), { code: 'Unavailable' });
  });

  test('a tag that does not exist is NotFound naming the reference; an index without the platform says which it has', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'nimbus-auth-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const store = new LocalContentStore(dir);
    await assert.rejects(pullImage(`${registry.host}/nimbus-test/busybox:nope`, { ...allowedForDaemons(), store }), { code: 'NotFound', message: /nimbus-test\/busybox nope/ });
    await assert.rejects(pullImage(`${registry.host}/nimbus-test/busybox:latest`, { ...allowedForDaemons(), store, platform: { os: 'linux', architecture: 's390x' } }), {
      code: 'NotFound', message: /available: linux\/arm64, linux\/amd64/,
    });
    await assert.rejects(pullImage(`127.0.0.1:1/nothing/here:latest`, { allowedRegistries: ["127.0.0.1:1"], store }), { code: 'Unavailable' });
  });
});
