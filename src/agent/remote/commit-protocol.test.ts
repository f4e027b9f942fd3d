/**
 * docker commit over the agent protocol (protocol 9, commitContainer): the request travels through
 * the real server and RemoteAgent and the image comes back; a malformed request is refused on the
 * wire before the agent sees it; an agent of protocol 8 is refused with a Conflict naming the
 * protocol, before it is called.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { hasCode } from '../../core/errors.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';
import type { CommitRequest } from '../agent.js';
import { servedAgent } from './served-agent.js';
import { AGENT_PROTOCOL_VERSION, COMMIT_SINCE, PATHS, PROTOCOL_HEADER } from './agent-protocol.js';

const TOKEN = 'commit-protocol-token-0123456789';
const CHAIN = `sha256:${'c'.repeat(64)}`;
const PARENT = `sha256:${'a'.repeat(64)}`;

const served = (t: TestContext, agent: FakeAgent, protocol?: { min: number; max: number }) => servedAgent(t, agent, TOKEN, protocol);

async function withContainer(name: string): Promise<FakeAgent> {
  const agent = new FakeAgent({ name });
  agent.images.set(PARENT, {
    manifestDigest: PARENT, configDigest: PARENT, chainId: CHAIN, size: 10,
    config: { config: { Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: [`sha256:${'d'.repeat(64)}`] } },
    layers: [{ digest: `sha256:${'d'.repeat(64)}`, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: 10, diffId: `sha256:${'d'.repeat(64)}` }],
  });
  await agent.createContainer({ id: 'c1', name: 'c1', imageChainId: CHAIN, process: { args: ['true'], env: [], cwd: '/', user: '0' }, resources: {} });
  return agent;
}

const REQ: CommitRequest = { parentManifest: PARENT, config: { Cmd: ['cat', '/x'], Env: ['A=1'], ExposedPorts: { '80/tcp': {} } }, author: 'me', comment: 'hi', createdBy: 'sh', pause: true };

test('commitContainer is carried to an agent of protocol 9: the request as sent, the image back', async (t) => {
  assert.equal(COMMIT_SINCE, 9);
  assert.ok(AGENT_PROTOCOL_VERSION >= COMMIT_SINCE);
  const agent = await withContainer('a');
  const { remote } = await served(t, agent);
  const img = await remote.commitContainer('c1', REQ);
  assert.deepEqual(agent.calls('commitContainer')[0], ['c1', REQ], 'the request travelled whole');
  assert.equal(img.layers.length, 2);
  assert.deepEqual(img.config.config?.Cmd, ['cat', '/x']);
  await assert.rejects(remote.commitContainer('zz', REQ), (e: unknown) => hasCode(e, 'NotFound'));
});

test('a malformed commit request is refused on the wire; an agent of protocol 8 refuses the method by name', async (t) => {
  const agent = await withContainer('a');
  const { socket } = await served(t, agent);
  const send = (args: unknown[]) => new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'POST', path: PATHS.call('commitContainer'), headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: String(COMMIT_SINCE), 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(JSON.stringify({ args }));
  });
  for (const [args, field] of [
    [['c1', { ...REQ, parentManifest: '../../etc/passwd' }], /parentManifest/],
    [['c1', { ...REQ, config: { Cmd: 'not a list' } }], /Cmd/],
    [['c1', { ...REQ, pause: 'yes' }], /pause/],
    [['c1'], /req/],
  ] as const) {
    const r = await send([...args]);
    assert.equal(r.status, 400, r.body);
    assert.match(r.body, field);
  }
  assert.equal(agent.calls('commitContainer').length, 0, 'the agent saw none of them');

  const old = await withContainer('old');
  const o = await served(t, old, { min: 2, max: 8 });
  await assert.rejects(o.remote.commitContainer('c1', REQ), (e: unknown) => hasCode(e, 'Conflict') && /speaks protocol 8 and cannot commit a container to an image/.test(String(e)) && /needs protocol 9/.test(String(e)));
  assert.equal(old.calls('commitContainer').length, 0, 'never sent');
});
