/** The registry credentials part of the store conformance suite: per project and server, replaced in place, gone with their project. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ConformanceTarget } from './conformance.js';
import type { RegistryCredentialRecord } from './repos/registry-credentials.js';

const T0 = '2026-01-01T00:00:00.000Z';
const cred = (projectId: string, server: string, over: Partial<RegistryCredentialRecord> = {}): RegistryCredentialRecord => ({
  projectId, server, username: 'alice', sealedPassword: `v1.kid.${projectId}.${server}`, createdAt: T0, updatedAt: T0, updatedBy: 'admin', ...over,
});

export function registryCredentialConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  test(`${name}: registry credentials: one row per project and server, replaced in place, listed by server, gone with their project`, async (t) => {
    const target = await open();
    t.after(() => target.cleanup());
    const s = target.store;
    for (const id of ['p1', 'p2']) await s.projects.insert({ id, name: id, parentId: null, createdAt: T0 });
    const r = s.registryCredentials;
    await r.put(cred('p1', 'registry.example:5000'));
    await r.put(cred('p1', 'docker.io', { username: 'bob' }));
    await r.put(cred('p2', 'docker.io', { username: 'carol' }));
    assert.deepEqual(await r.get('p1', 'registry.example:5000'), cred('p1', 'registry.example:5000'));
    assert.deepEqual((await r.list('p1')).map((c) => [c.server, c.username]), [['docker.io', 'bob'], ['registry.example:5000', 'alice']], 'by server');
    assert.deepEqual((await r.list('p2')).map((c) => c.username), ['carol'], "another project's are its own");
    // a second login replaces the user and password, keeps when it was first made
    const later = '2026-02-01T00:00:00.000Z';
    await r.put(cred('p1', 'docker.io', { username: 'dave', sealedPassword: 'v1.kid.new', createdAt: later, updatedAt: later, updatedBy: 'eve' }));
    assert.deepEqual(await r.get('p1', 'docker.io'), cred('p1', 'docker.io', { username: 'dave', sealedPassword: 'v1.kid.new', updatedAt: later, updatedBy: 'eve' }));
    assert.equal(await r.delete('p1', 'docker.io'), true);
    assert.equal(await r.delete('p1', 'docker.io'), false, 'gone is gone');
    assert.equal(await r.get('p1', 'docker.io'), undefined);
    assert.equal((await r.get('p2', 'docker.io'))?.username, 'carol', "another project's row is untouched");
    await s.projects.delete('p2');
    assert.deepEqual(await r.list('p2'), [], 'removed with the project');
  });
}
