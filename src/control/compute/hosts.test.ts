// The placement fields of a create: who may pin a host, what reaches the scheduler, hosts without the embedded agent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkPinnedHost, oneHost, placementFields, withoutEmbedded } from './hosts.js';
import { FakeAgent } from '../testing/fake-agent.js';

test('--host is for system administrators: a tenant gets PermissionDenied, an administrator nothing', () => {
  assert.throws(() => checkPinnedHost({ host: 'b' }, false), { code: 'PermissionDenied', message: /system administrator may pin an instance to a host \(host\)/ });
  assert.throws(() => checkPinnedHost({ host: 'b' }, false, 'agent'), { message: /\(agent\)/ });
  checkPinnedHost({ host: 'b' }, true);
  checkPinnedHost({ zone: 'z', constraints: { a: 'b' }, group: 'g' }, false); // the rest is anyone's
});

test('placement fields: only what was given reaches the request; empty constraints are none', () => {
  assert.deepEqual(placementFields({}), {});
  assert.deepEqual(placementFields({ constraints: {} }), {});
  assert.deepEqual(placementFields({ host: 'b', zone: 'z', constraints: { disk: 'ssd' }, group: 'g1' }), { host: 'b', zone: 'z', constraints: { disk: 'ssd' }, group: 'g1' });
});

test('without the embedded agent its name is no host; the others are', () => {
  const local = new FakeAgent({ name: 'local' });
  const b = new FakeAgent({ name: 'b' });
  const dir = { localName: 'local', names: () => ['local', 'b'], has: (n: string) => n === 'local' || n === 'b', get: (n: string) => (n === 'local' ? local : b) };
  const hosts = withoutEmbedded(dir);
  assert.equal(hosts.localName, undefined);
  assert.deepEqual(hosts.names(), ['b']);
  assert.deepEqual([hosts.has('local'), hosts.has('b')], [false, true]);
  assert.throws(() => hosts.get('local'), { code: 'NotFound', message: /runs no embedded agent/ });
  assert.equal(hosts.get('b'), b);
  assert.throws(() => oneHost(local).get('b'), { code: 'NotFound' });
});
