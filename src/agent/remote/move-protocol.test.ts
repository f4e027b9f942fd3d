/**
 * A cold move's methods over the agent protocol (move-routes.ts): the trees stream both ways
 * through the real server and RemoteAgent, an import's refusal comes back typed, ids and chain
 * ids are checked on the wire before the agent sees them, and an agent of protocol 5 refuses the
 * methods with a Conflict naming the protocol (the client never sends them).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Readable } from 'node:stream';
import { Conflict, hasCode } from '../../core/errors.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import { servedAgent } from './served-agent.js';
import { IMAGE_CHAIN_HEADER, PATHS, PROTOCOL_HEADER } from './agent-protocol.js';

const TOKEN = 'move-protocol-token-0123456789';
const CHAIN = `sha256:${'c'.repeat(64)}`;

const served = (t: TestContext, agent: FakeAgent, protocol?: { min: number; max: number }) => servedAgent(t, agent, TOKEN, protocol);

test('a layer and a volume stream out of one agent and into another over the protocol', async (t) => {
  const src = new FakeAgent({ name: 'a' });
  const dst = new FakeAgent({ name: 'b' });
  await src.createContainer({ id: 'c1', name: 'c1', imageChainId: CHAIN, process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {} });
  const big = Buffer.alloc(3 * 1024 * 1024, 9); // several chunks
  src.layers.set('c1', big);
  await src.createVolume('v1', 16 << 20);
  src.volumeData.set('v1', Buffer.from('volume'));
  await dst.createVolume('v1', 16 << 20);
  const a = await served(t, src);
  const b = await served(t, dst);
  const req = await a.remote.containerRequest('c1');
  assert.equal(req.imageChainId, CHAIN, 'the saved request');
  const r = await b.remote.importContainerLayer('c1', CHAIN, await a.remote.exportContainerLayer('c1'));
  assert.equal(r.bytes, big.length);
  assert.ok(dst.layers.get('c1')?.equals(big), 'the bytes arrived whole');
  assert.equal(dst.calls('importContainerLayer')[0]?.[1], CHAIN, 'the chain id travelled in its header');
  assert.deepEqual(dst.calls('importContainerLayer')[0]?.[3], {}, 'no size: unbounded');
  dst.layers.delete('c1');
  await b.remote.importContainerLayer('c1', CHAIN, await a.remote.exportContainerLayer('c1'), { storageBytes: 64 << 20 });
  assert.deepEqual(dst.calls('importContainerLayer')[1]?.[3], { storageBytes: 64 << 20 }, 'a sized layer keeps its size at the destination (its header)');
  await b.remote.importVolume('v1', await a.remote.exportVolume('v1'));
  assert.equal(dst.volumeData.get('v1')?.toString(), 'volume');
  // its log, into the container created at the destination (protocol 8)
  src.logFiles.set('c1', Buffer.from('log-generations'));
  await dst.createContainer({ id: 'c1', name: 'c1', imageChainId: CHAIN, process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {} });
  const logs = await b.remote.importContainerLogs('c1', await a.remote.exportContainerLogs('c1'));
  assert.deepEqual([logs.bytes, dst.logFiles.get('c1')?.toString()], [15, 'log-generations']);
  // a refusal at the destination comes back typed, and the sender is not left hanging
  await assert.rejects(b.remote.importContainerLayer('c1', CHAIN, Readable.from([big])), (e: unknown) => hasCode(e, 'Conflict'));
  // an export of a container that runs is refused by the source
  await src.startContainer('c1');
  await assert.rejects(a.remote.exportContainerLayer('c1'), (e: unknown) => hasCode(e, 'Conflict'));
});

test('an agent of protocol 7 refuses the log calls, naming protocol 8', async (t) => {
  const agent = new FakeAgent({ name: 'seven' });
  const { remote } = await served(t, agent, { min: 2, max: 7 });
  await assert.rejects(remote.exportContainerLogs('c1'), (e: unknown) => hasCode(e, 'Conflict') && /protocol 7 .*carry a container's log when it moves \(exportContainerLogs needs protocol 8\)/.test(String(e)));
  await assert.rejects(remote.importContainerLogs('c1', Readable.from([Buffer.from('x')])), (e: unknown) => hasCode(e, 'Conflict'));
  assert.equal(agent.calls('exportContainerLogs').length + agent.calls('importContainerLogs').length, 0);
});

test('ids and chain ids are checked on the wire', async (t) => {
  const agent = new FakeAgent({ name: 'a' });
  const { socket } = await served(t, agent);
  const put = (path: string, headers: Record<string, string>) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'PUT', path, headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: '6', ...headers } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end('not a tar');
  });
  const badId = await put(PATHS.move('layer', '../../etc'), { [IMAGE_CHAIN_HEADER]: CHAIN });
  assert.equal(badId.status, 400, badId.body);
  assert.match(badId.body, /id/);
  const badChain = await put(PATHS.move('layer', 'c1'), { [IMAGE_CHAIN_HEADER]: 'sha256:nope' });
  assert.equal(badChain.status, 400);
  assert.match(badChain.body, /imageChainId/);
  const badLogId = await put(PATHS.move('log', '.hidden'), { [PROTOCOL_HEADER]: '8' });
  assert.equal(badLogId.status, 400, badLogId.body);
  assert.equal(agent.calls('importContainerLayer').length + agent.calls('importContainerLogs').length, 0, 'the agent saw none of them');
});

test('an agent of protocol 5 refuses the move methods with a Conflict naming the protocol', async (t) => {
  const agent = new FakeAgent({ name: 'old' });
  const { remote, socket } = await served(t, agent, { min: 2, max: 5 });
  await assert.rejects(remote.exportContainerLayer('c1'), (e: unknown) => e instanceof Conflict && /protocol 5/.test(String(e)) && /needs protocol 6/.test(String(e)));
  await assert.rejects(remote.importVolume('v1', Readable.from([Buffer.from('x')])), (e: unknown) => hasCode(e, 'Conflict') && /move containers between hosts/.test(String(e)));
  await assert.rejects(remote.containerRequest('c1'), (e: unknown) => hasCode(e, 'Conflict'));
  // and a client that sends one anyway at version 5 is refused by the server
  const got = await new Promise<number>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'GET', path: PATHS.move('layer', 'c1'), headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: '5' } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  assert.equal(got, 409);
  assert.equal(agent.calls('exportContainerLayer').length, 0);
});
