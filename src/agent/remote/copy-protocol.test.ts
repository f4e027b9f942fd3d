/**
 * docker cp over the agent protocol (copy-routes.ts): a tar streams in and out through the real
 * server and RemoteAgent with the stat in its header, refusals come back typed, the id and the
 * copy header are checked on the wire, and an agent of protocol 7 refuses the methods.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { Readable } from 'node:stream';
import { hasCode } from '../../core/errors.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import { servedAgent } from './served-agent.js';
import { COPY_HEADER, PATHS, PROTOCOL_HEADER } from './agent-protocol.js';

const TOKEN = 'copy-protocol-token-0123456789';
const CHAIN = `sha256:${'c'.repeat(64)}`;

const served = (t: TestContext, agent: FakeAgent, protocol?: { min: number; max: number }) => servedAgent(t, agent, TOKEN, protocol);

async function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

test('a tar goes into a container and comes back out over the protocol, the stat beside it', async (t) => {
  const agent = new FakeAgent({ name: 'a' });
  await agent.createContainer({ id: 'c1', name: 'c1', imageChainId: CHAIN, process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {} });
  const { remote } = await served(t, agent);
  const big = Buffer.alloc(3 * 1024 * 1024, 7);
  const r = await remote.writeContainerArchive('c1', '/etc', { noOverwriteDirNonDir: true, copyUIDGID: true }, Readable.from([big]));
  assert.equal(r.bytes, big.length);
  assert.deepEqual(agent.calls('writeContainerArchive')[0]?.slice(0, 3), ['c1', '/etc', { noOverwriteDirNonDir: true, copyUIDGID: true }], 'path and options travelled in the header');
  const out = await remote.readContainerArchive('c1', '/etc/hostname');
  assert.equal(out.stat.name, 'hostname');
  assert.equal(out.stat.mode, 0o100644);
  assert.ok((await collect(out.bytes)).equals(big), 'the bytes came back whole');
  assert.equal((await remote.containerPathStat('c1', '/etc/hostname')).size, 4);
  await assert.rejects(remote.containerPathStat('c1', '/nope'), (e: unknown) => hasCode(e, 'NotFound'));
  await assert.rejects(remote.readContainerArchive('c1', '/nope'), (e: unknown) => hasCode(e, 'NotFound'));
  await assert.rejects(remote.writeContainerArchive('zz', '/etc', {}, Readable.from([big])), (e: unknown) => hasCode(e, 'NotFound'));
});

test('the id and the copy header are checked on the wire; an agent of protocol 7 refuses the methods', async (t) => {
  const agent = new FakeAgent({ name: 'a' });
  const { socket } = await served(t, agent);
  const send = (method: string, path: string, headers: Record<string, string>) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method, path, headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: '8', ...headers } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(method === 'PUT' ? 'not a tar' : undefined);
  });
  const spec = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64');
  for (const [method, path, headers, field] of [
    ['GET', PATHS.copy('../../etc'), { [COPY_HEADER]: spec({ path: '/etc' }) }, /id/],
    ['GET', PATHS.copy('c1'), {}, /x-nimbus-copy/],
    ['GET', PATHS.copy('c1'), { [COPY_HEADER]: spec({ path: '' }) }, /path/],
    ['PUT', PATHS.copy('c1'), { [COPY_HEADER]: spec({ path: '/etc', copyUIDGID: 'yes' }) }, /copyUIDGID/],
  ] as const) {
    const r = await send(method, path, headers);
    assert.equal(r.status, 400, r.body);
    assert.match(r.body, field);
  }
  assert.equal(agent.calls('readContainerArchive').length + agent.calls('writeContainerArchive').length, 0, 'the agent saw none of them');

  const old = await served(t, new FakeAgent({ name: 'old' }), { min: 2, max: 7 });
  await assert.rejects(old.remote.readContainerArchive('c1', '/etc'), (e: unknown) => hasCode(e, 'Conflict') && /copy files into and out of containers/.test(String(e)) && /needs protocol 8/.test(String(e)));
  await assert.rejects(old.remote.containerPathStat('c1', '/etc'), (e: unknown) => hasCode(e, 'Conflict'));
  await assert.rejects(old.remote.writeContainerArchive('c1', '/etc', {}, Readable.from([Buffer.from('x')])), (e: unknown) => hasCode(e, 'Conflict'));
});
