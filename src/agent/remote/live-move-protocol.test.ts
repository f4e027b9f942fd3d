/**
 * A live move's methods over the agent protocol (protocol 9): the checkpoint, its images streamed
 * out of one agent and into another through the real server and RemoteAgent, the restore; the
 * host's `liveMove` in its info; an agent of protocol 8 refuses every one of them with a Conflict
 * naming the protocol (the client never sends them, and the server refuses one sent anyway).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { hasCode } from '../../core/errors.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import { startAgentServer } from './agent-server.js';
import { RemoteAgent } from './remote-agent.js';
import { LIVE_MOVE_METHODS, PATHS, PROTOCOL_HEADER } from './agent-protocol.js';

const TOKEN = 'live-move-protocol-token-0123456789';
const CHAIN = `sha256:${'c'.repeat(64)}`;
const REQ = { id: 'c1', name: 'c1', imageChainId: CHAIN, process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {} };

async function served(t: TestContext, agent: FakeAgent, protocol?: { min: number; max: number }) {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-live-proto-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  const socket = join(home, 'agent.sock');
  const server = await startAgentServer(agent, { token: TOKEN, socketPath: socket, ...(protocol ? { protocol } : {}) });
  t.after(() => server.close());
  const remote = new RemoteAgent({ name: agent.host.name, url: server.url, token: TOKEN });
  t.after(() => remote.close());
  return { remote, socket };
}

test('checkpoint, images out and in, restore: over the protocol', async (t) => {
  const src = new FakeAgent({ name: 'a', liveMove: { usable: true } });
  const dst = new FakeAgent({ name: 'b', liveMove: { usable: false, reason: 'criu check failed: vdso' } });
  await src.createContainer(REQ);
  await src.startContainer('c1');
  const a = await served(t, src);
  const b = await served(t, dst);
  assert.deepEqual([(await a.remote.info()).liveMove?.usable, (await b.remote.info()).liveMove?.reason], [true, 'criu check failed: vdso'], 'info says whether and why not');
  const cp = await a.remote.checkpointContainer('c1');
  assert.ok(cp.bytes > 0);
  const got = await b.remote.importCheckpoint('c1', await a.remote.exportCheckpoint('c1'));
  assert.equal(got.bytes, cp.bytes, 'the images arrived whole');
  const state = await b.remote.restoreContainer(REQ);
  assert.equal(state.status, 'running');
  assert.equal(dst.calls('restoreContainer')[0]?.[0].id, 'c1', 'the request travelled as it is');
  // a refusal comes back typed
  await assert.rejects(b.remote.restoreContainer({ ...REQ, id: 'c2' }), (e: unknown) => hasCode(e, 'NotFound'));
});

test('an agent of protocol 8 refuses the live-move calls, naming protocol 9; the server refuses one sent anyway', async (t) => {
  const agent = new FakeAgent({ name: 'eight' });
  const { remote, socket } = await served(t, agent, { min: 2, max: 8 });
  await assert.rejects(remote.checkpointContainer('c1'), (e: unknown) => hasCode(e, 'Conflict') && /protocol 8 and cannot move containers live \(checkpointContainer needs protocol 9\)/.test(String(e)));
  await assert.rejects(remote.exportCheckpoint('c1'), (e: unknown) => hasCode(e, 'Conflict'));
  await assert.rejects(remote.importCheckpoint('c1', Readable.from([Buffer.from('x')])), (e: unknown) => hasCode(e, 'Conflict'));
  await assert.rejects(remote.restoreContainer(REQ), (e: unknown) => hasCode(e, 'Conflict'));
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'GET', path: PATHS.move('checkpoint', 'c1'), headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: '8' } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(status, 409);
  assert.equal(LIVE_MOVE_METHODS.reduce((n, m) => n + agent.calls(m).length, 0), 0, 'the agent saw none of them');
});
