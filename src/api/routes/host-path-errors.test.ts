/**
 * Host paths are for system administrators: a member whose VM's host fails names the failure,
 * never a path under the host's state directory (Node's ENOENT through an agent call, a typed
 * error whose whole text is an administrator's, one that names a path all the same), in the
 * error body of the Nimbus and the Docker API or in the VM's hostError; an administrator reads
 * them whole. Over a real API server (TCP, bearer tokens), an agent directory and VM service on a
 * SQLite store, and a fake host.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { vmRoutes } from './vms.js';
import { AgentDirectory } from '../../control/agents/agent-directory.js';
import { vmRouteFixture } from '../testing/vm-route-fixture.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import { Conflict, Unavailable } from '../../core/errors.js';
import { addHostRoots } from '../../core/redaction.js';
import { dockerError } from '../docker/errors.js';

test('a host\'s failure: a member reads what failed, never a host path; an administrator reads it whole', async (t) => {
  const host = new FakeAgent({ name: 'local' });
  const { dir, call } = await vmRouteFixture(t, {
    prefix: 'nimbus-host-path-errors-', agent: 'local', routes: vmRoutes,
    openAgents: (store) => AgentDirectory.open(store, host, 'local', () => { throw new Error('no remote agents here'); }, undefined, { refreshIntervalMs: 0 }),
  });
  // the daemon's state directory (as daemon.ts adds it; nothing is written there)
  const home = join(dir, 'home');
  addHostRoots([home]);
  const qmp = join(home, 'vms', 'instances', 'v1', 'qmp.sock');

  const enoent = await readFile(qmp).then(() => assert.fail('read'), (e: unknown) => e as Error);
  const failures: Array<[string, Error]> = [
    ['Node\'s own error', enoent],
    ['a typed error with adminMessage', new Conflict('refusing to remove VM v1: still mounted', { id: 'v1' }, { adminMessage: `refusing to remove ${home}/vms/instances/v1: still mounted` })],
    // as QmpClosedError words it: Unavailable, so inspect shows the record with it as hostError
    ['a typed error naming a path all the same, in its details too', new Unavailable(`QMP socket ${qmp}: closed`, { socket: qmp })],
  ];
  for (const [what, failure] of failures) {
    host.override('startVm', async () => { throw failure; });
    host.override('inspectVm', async () => { throw failure; });
    let r = await call('alice', 'POST', '/vms/web/start');
    assert.ok(r.status >= 400, r.text);
    assert.ok(!r.text.includes(home), `${what}: a member's error body: ${r.text}`);
    r = await call('admin', 'POST', '/vms/web/start');
    assert.ok(r.text.includes(home), `${what}: an administrator's error body: ${r.text}`);
    // inspect: the record with hostError when the host is Unavailable, else the error
    r = await call('alice', 'GET', '/vms/web');
    assert.equal(r.status === 200, failure instanceof Unavailable, r.text);
    assert.ok(!r.text.includes(home), `${what}: a member's inspect: ${r.text}`);
    r = await call('admin', 'GET', '/vms/web');
    assert.ok(r.text.includes(home), `${what}: an administrator's inspect: ${r.text}`);
    assert.ok(!dockerError(failure).body.message.includes(home), `${what}: the Docker API's body: ${dockerError(failure).body.message}`);
    assert.ok(dockerError(failure, true).body.message.includes(home));
  }
});
