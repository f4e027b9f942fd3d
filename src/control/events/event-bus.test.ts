import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventBus, type NimbusEvent } from './event-bus.js';
import { runAsActor } from './actor.js';

test('events carry the actor of the request they came from, "system" otherwise, and an actor given wins', async () => {
  const bus = new EventBus();
  const seen: NimbusEvent[] = [];
  bus.on((e) => seen.push(e));
  bus.publish({ type: 'container', action: 'die', id: 'c1', projectId: 'p1' });
  await runAsActor('tina', async () => {
    await new Promise((r) => setTimeout(r, 1)); // across an await, as deep in a service
    bus.publish({ type: 'container', action: 'create', id: 'c2', projectId: 'p1' });
    bus.publish({ type: 'quota', action: 'admit', id: 'c2', projectId: 'p1', actor: 'reclaimer' });
  });
  assert.deepEqual(seen.map((e) => e.actor), ['system', 'tina', 'reclaimer']);
});

test('subscribe filters by type, id and project set; onPublished sees only what this bus published', async () => {
  const bus = new EventBus();
  const published: string[] = [];
  const off = bus.onPublished((e) => published.push(e.id));
  const ac = new AbortController();
  const stream = bus.subscribe({ types: ['container'], projectIds: new Set(['p1', 'p1-child']) }, ac.signal);
  bus.publish({ type: 'container', action: 'create', id: 'a', projectId: 'p1' });
  bus.publish({ type: 'container', action: 'create', id: 'b', projectId: 'p2' });
  bus.publish({ type: 'network', action: 'create', id: 'c', projectId: 'p1' });
  bus.publish({ type: 'container', action: 'create', id: 'd' }); // no project: left out of a project filter
  bus.publish({ type: 'container', action: 'start', id: 'e', projectId: 'p1-child' });
  setTimeout(() => ac.abort(), 10);
  const got: string[] = [];
  for await (const e of stream) got.push(e.id);
  assert.deepEqual(got, ['a', 'e']);
  off();
  bus.publish({ type: 'container', action: 'create', id: 'f', projectId: 'p1' });
  assert.deepEqual(published, ['a', 'b', 'c', 'd', 'e']);
  assert.ok(EventBus.matches({ seq: 1, time: '', type: 'vm', action: 'start', id: 'x', projectId: 'p1' }, { id: 'x' }));
  assert.ok(!EventBus.matches({ seq: 1, time: '', type: 'vm', action: 'start', id: 'x', projectId: 'p1' }, { id: 'y' }));
  // an instance by id or by the name its events carry (a name of another type's object does not count)
  assert.ok(EventBus.matches({ seq: 1, time: '', type: 'container', action: 'create', id: 'c9', attributes: { name: 'web' } }, { instance: 'web' }));
  assert.ok(EventBus.matches({ seq: 1, time: '', type: 'quota', action: 'admit', id: 'c9' }, { instance: 'c9' }));
  assert.ok(!EventBus.matches({ seq: 1, time: '', type: 'network', action: 'create', id: 'n1', attributes: { name: 'web' } }, { instance: 'web' }));
});
