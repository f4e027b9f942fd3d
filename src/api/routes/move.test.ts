/**
 * Who may move a container and evacuate a host, over a real API server with stub services: a
 * member of the container's project moves it (the scheduler choosing), only a system
 * administrator names the destination (as --host on a create) or evacuates a host; a container
 * of another project does not exist for the caller.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiServer } from '../server.js';
import { containerRoutes } from './containers.js';
import { evacuateRoutes } from './evacuate.js';
import { NotFound } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
import { adminAndAlice } from '../testing/principals.js';
import { bearerCall } from '../testing/bearer-call.js';

const OP = { id: 'op1', kind: 'container.move', projectId: 'p1', status: 'running', target: 'c1', progress: {}, result: null, error: null, createdAt: '', updatedAt: '', replica: 'r' };

test('move: members move their containers; --to and evacuate are for system administrators', async (t) => {
  const moves: Array<[string, unknown]> = [];
  const services = {
    defaultProjectId: 'p1',
    containers: {
      get: async (ref: string, scope?: { canRead(p: string): boolean }) => {
        const c = { c1: { id: 'c1', projectId: 'p1' }, c2: { id: 'c2', projectId: 'p2' } }[ref];
        if (!c || (scope && !scope.canRead(c.projectId))) throw new NotFound(`no such container: ${ref}`);
        return c;
      },
      startMove: async (id: string, opts: unknown) => {
        moves.push([id, opts]);
        return OP;
      },
    },
    ...adminAndAlice,
  } as unknown as Services;
  const server = new ApiServer([...containerRoutes, ...evacuateRoutes], services);
  t.after(() => server.close());
  const port = await server.listenTcp('127.0.0.1', 0);
  const call = bearerCall(port);

  let r = await call('alice', 'POST', '/containers/c1/move', {});
  assert.equal(r.status, 202, JSON.stringify(r.body));
  assert.deepEqual(moves.pop(), ['c1', {}], 'a member moves it; the scheduler chooses');
  r = await call('alice', 'POST', '/containers/c1/move', { to: 'b' });
  assert.equal(r.status, 403);
  assert.match(r.body.error?.message ?? '', /system administrator/);
  assert.equal(moves.length, 0, 'nothing asked');
  r = await call('alice', 'POST', '/containers/c2/move', {});
  assert.equal(r.status, 404, 'another project\'s container does not exist for it');
  r = await call('admin', 'POST', '/containers/c1/move', { to: 'b', live: true });
  assert.equal(r.status, 202);
  assert.deepEqual(moves.pop(), ['c1', { to: 'b', live: true }], 'the service refuses --live (container-move.test.ts)');
  r = await call('alice', 'POST', '/containers/c1/move', { to: 'b', extra: 1 });
  assert.equal(r.status, 400, 'the body is checked');
  r = await call('alice', 'POST', '/hosts/b/evacuate', {});
  assert.equal(r.status, 403, 'evacuate: administrators only');
});
