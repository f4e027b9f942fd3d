/**
 * Server group and explain routes over a real API server (TCP, bearer tokens for a system
 * administrator and a member of p1 only), a real FilterScheduler on a SQLite store.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiServer } from '../src/api/server.js';
import { schedulerRoutes } from '../src/api/routes/scheduler.js';
import { NotFound } from '../src/core/errors.js';
import { openStore } from '../src/store/open.js';
import type { Services } from '../src/control/services.js';
import { adminAndAlice } from '../src/api/testing/principals.js';
import { bearerCall } from '../src/api/testing/bearer-call.js';
import { FilterScheduler } from '../src/control/scheduler/filter-scheduler.js';
import type { HostCandidate } from '../src/control/scheduler/types.js';
import { explanationText } from '../src/cli/commands/scheduler.js';

const GiB = 1024 ** 3;

const host = (name: string, over: Partial<HostCandidate> = {}): HostCandidate => ({
  name, state: 'up', disabled: false, zone: 'z1', labels: {}, cpus: 4, memoryBytes: 4 * GiB, diskBytes: 0, runtimes: ['runc'], architecture: 'amd64', ...over,
});

async function api(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-sched-api-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  let server: ApiServer | undefined;
  t.after(async () => {
    await server?.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  for (const id of ['p1', 'p2']) await store.projects.insert({ id, name: id, parentId: null, createdAt: 'then' });
  const hosts = [host('a'), host('b', { disabled: true }), host('c', { zone: 'z2' })];
  const scheduler = new FilterScheduler(store, { candidates: async () => hosts });
  const services = {
    store, scheduler, defaultProjectId: 'p1',
    projects: {
      resolve: async (ref: string) => {
        if (ref !== 'p1' && ref !== 'p2') throw new NotFound(`no such project: ${ref}`);
        return { id: ref };
      },
      path: async (id: string) => id,
    },
    ...adminAndAlice,
  } as unknown as Services;
  server = new ApiServer(schedulerRoutes, services);
  const port = await server.listenTcp('127.0.0.1', 0);
  const call = bearerCall(port);
  return { store, scheduler, call };
}

test('server groups: create, list, show and remove in the caller\'s project; names unique per project; not while members remain', async (t) => {
  const { scheduler, call } = await api(t);
  const created = await call('alice', 'POST', '/groups', { name: 'web', policy: 'anti-affinity' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  assert.equal(created.body.projectId, 'p1');
  assert.equal((await call('alice', 'POST', '/groups', { name: 'web', policy: 'affinity' })).status, 409);
  assert.equal((await call('alice', 'POST', '/groups', { name: 'x', policy: 'sideways' })).status, 400, 'the schema refuses an unknown policy');
  assert.ok([403, 404].includes((await call('alice', 'POST', '/groups?project=p2', { name: 'x', policy: 'affinity' })).status), 'not in another project');
  assert.equal((await call('admin', 'POST', '/groups?project=p2', { name: 'web', policy: 'soft-affinity' })).status, 201);
  assert.deepEqual((await call('alice', 'GET', '/groups')).body.map((g: { projectId: string }) => g.projectId), ['p1']);
  assert.equal((await call('admin', 'GET', '/groups?project=*')).body.length, 2);
  assert.equal((await call('alice', 'GET', '/groups/web')).body.id, created.body.id);

  await scheduler.place({ consumerId: 'i1', projectId: 'p1', kind: 'container', vcpus: 1, memoryBytes: GiB, diskBytes: 0, group: created.body.id });
  assert.deepEqual((await call('alice', 'GET', '/groups/web')).body.members, ['i1']);
  const refused = await call('alice', 'DELETE', '/groups/web');
  assert.equal(refused.status, 409);
  assert.match(refused.body.error.message, /still has 1 member/);
  await scheduler.release('i1');
  assert.equal((await call('alice', 'DELETE', '/groups/web')).status, 204);
  assert.equal((await call('alice', 'GET', '/groups/web')).status, 404);
});

test('scheduler explain: administrators see every host\'s verdict, members only counts, and may not pin', async (t) => {
  const { store, call } = await api(t);
  const body = { kind: 'container', vcpus: 1, memoryBytes: 2 * GiB, zone: 'z1' };
  const a = await call('admin', 'POST', '/scheduler/explain', body);
  assert.equal(a.status, 200, JSON.stringify(a.body));
  assert.equal(a.body.chosen, 'a');
  assert.deepEqual(a.body.verdicts.map((v: { host: string; rejectedBy?: { filter: string } }) => [v.host, v.rejectedBy?.filter]), [['a', undefined], ['b', 'enabled'], ['c', 'zone']]);
  const text = explanationText(a.body);
  assert.match(text, /^would place on a\n/);
  assert.match(text, /c\s+rejected by zone\s+zone is z2, not z1/);

  const m = await call('alice', 'POST', '/scheduler/explain', { ...body, memoryBytes: 8 * GiB });
  assert.equal(m.status, 200);
  assert.deepEqual(m.body, { fits: false, message: '3 hosts: 1 rejected by enabled, 1 rejected by memory, 1 rejected by zone', hosts: 3, rejected: { enabled: 1, memory: 1, zone: 1 } });
  assert.equal(explanationText(m.body), 'does not fit: 3 hosts: 1 rejected by enabled, 1 rejected by memory, 1 rejected by zone\n');
  assert.equal((await call('alice', 'POST', '/scheduler/explain', { ...body, host: 'a' })).status, 403);
  assert.equal((await call('admin', 'POST', '/scheduler/explain', { ...body, host: 'b' })).body.chosen, 'b', 'a pin skips the enabled filter');
  assert.equal((await call('alice', 'POST', '/scheduler/explain', { ...body, bogus: 1 })).status, 400);
  assert.equal((await call('alice', 'POST', '/scheduler/explain', { ...body, group: 'nope' })).status, 404);
  assert.deepEqual(await store.placement.consumers(), [], 'explain claims nothing');
});
