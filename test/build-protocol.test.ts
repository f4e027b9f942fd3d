/**
 * The build over the agent protocol (6): the context streams up as the request body, every output
 * line comes back as progress, then the image; a malformed request is refused before the agent
 * sees it; a control plane that goes away cancels the build; an agent of protocol 5 refuses it
 * with a Conflict naming the host and the versions (and the method is never sent).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { NimbusError } from '../src/core/errors.js';
import { FakeAgent } from '../src/control/testing/fake-agent.js';
import { startAgentServer } from '../src/agent/remote/agent-server.js';
import { RemoteAgent } from '../src/agent/remote/remote-agent.js';
import { BUILD_HEADER, BUILD_PATH, PROTOCOL_HEADER } from '../src/agent/remote/agent-protocol.js';
import type { AgentImage, BuildRequest } from '../src/agent/agent.js';

const TOKEN = 'build-protocol-token-0123456789';

async function served(t: TestContext, agent: FakeAgent, protocol?: { min: number; max: number }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-build-proto-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const socket = join(dir, 'agent.sock');
  const server = await startAgentServer(agent, { token: TOKEN, socketPath: socket, ...(protocol ? { protocol } : {}) });
  t.after(() => server.close());
  const remote = new RemoteAgent({ name: 'b', url: server.url, token: TOKEN });
  t.after(() => remote.close());
  return { remote, socket };
}

const request = (over: Partial<BuildRequest> = {}): BuildRequest => ({
  id: 'b123', projectId: 'p1', dockerfile: 'Dockerfile', buildArgs: { A: '1' }, network: 'none',
  baseImages: [{ name: 'busybox', manifestDigest: `sha256:${'a'.repeat(64)}` }], resources: { cpus: 1, memoryBytes: 1024 ** 3 }, ...over,
});

async function* chunks(b: Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
}

test('protocol 6: the context streams up whole, lines and the image come back', async (t) => {
  const agent = new FakeAgent({ name: 'b' });
  let got: { req: BuildRequest; bytes: Buffer } | undefined;
  agent.override('buildImage', async (req, context, progress) => {
    const parts: Buffer[] = [];
    for await (const c of context) parts.push(Buffer.from(c));
    got = { req, bytes: Buffer.concat(parts) };
    for (let i = 0; i < 50; i++) progress({ line: `line ${i}` });
    return { manifestDigest: `sha256:${'b'.repeat(64)}`, configDigest: `sha256:${'c'.repeat(64)}`, config: {}, layers: [], chainId: 'x', size: 1 } as AgentImage;
  });
  const { remote } = await served(t, agent);
  const context = randomBytes(3 * 1024 * 1024 + 17);
  const lines: string[] = [];
  const img = await remote.buildImage(request(), chunks(context), (p) => lines.push(p.line));
  assert.equal(img.manifestDigest, `sha256:${'b'.repeat(64)}`);
  assert.deepEqual(lines, Array.from({ length: 50 }, (_, i) => `line ${i}`));
  assert.ok(got && got.bytes.equals(context), 'the context arrived intact');
  assert.deepEqual(got.req, request());
  assert.equal(agent.calls('buildImage').length, 1, 'calls are counted');
});

test('a malformed request is refused before the agent sees it; a failure comes back typed', async (t) => {
  const agent = new FakeAgent({ name: 'b' });
  const { remote } = await served(t, agent);
  await assert.rejects(remote.buildImage(request({ projectId: '../etc' }), chunks(Buffer.from('x')), () => undefined), (e: unknown) => {
    assert.ok(e instanceof NimbusError && e.code === 'InvalidArgument', String(e));
    assert.match(e.message, /projectId/);
    return true;
  });
  await assert.rejects(remote.buildImage(request({ network: 'bridge' as 'none' }), chunks(Buffer.from('x')), () => undefined), /network/);
  assert.equal(agent.calls('buildImage').length, 0);
  agent.override('buildImage', async (_req, _ctx, progress) => {
    progress({ line: 'boom' });
    throw new NimbusError('InvalidArgument', 'the build failed at STEP 2/2: RUN false');
  });
  await assert.rejects(remote.buildImage(request(), chunks(Buffer.from('x')), () => undefined), (e: unknown) => e instanceof NimbusError && e.code === 'InvalidArgument' && /STEP 2\/2/.test(e.message));
});

test('a control plane that goes away cancels the build on the agent', async (t) => {
  const agent = new FakeAgent({ name: 'b' });
  let aborted = false;
  agent.override('buildImage', async (_req, _ctx, progress, signal) => {
    progress({ line: 'started' });
    await new Promise<void>((r) => signal?.addEventListener('abort', () => r()));
    aborted = true;
    throw new NimbusError('Unavailable', 'cancelled');
  });
  const { remote } = await served(t, agent);
  const ac = new AbortController();
  const building = remote.buildImage(request(), chunks(Buffer.from('x')), () => ac.abort(), ac.signal);
  await assert.rejects(building);
  for (let i = 0; i < 100 && !aborted; i++) await sleep(20);
  assert.equal(aborted, true, 'the agent saw its caller go');
});

test('protocol 5: buildImage is refused with a Conflict naming the versions, and never sent', async (t) => {
  const agent = new FakeAgent({ name: 'b' });
  const { remote, socket } = await served(t, agent, { min: 2, max: 5 });
  await assert.rejects(remote.buildImage(request(), chunks(Buffer.from('x')), () => undefined), (e: unknown) => {
    assert.ok(e instanceof NimbusError && e.code === 'Conflict', String(e));
    assert.match(e.message, /host b's agent speaks protocol 5 and cannot build images \(buildImage needs protocol 6\); upgrade it/);
    return true;
  });
  assert.equal(agent.calls('buildImage').length, 0);
  // a peer that sends it at 5 anyway is refused by the agent, not served
  const r = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ socketPath: socket, method: 'POST', path: BUILD_PATH, headers: { authorization: `Bearer ${TOKEN}`, [PROTOCOL_HEADER]: '5', [BUILD_HEADER]: Buffer.from(JSON.stringify(request())).toString('base64') } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end('x');
  });
  assert.equal(r.status, 409, r.body);
  assert.match(r.body, /buildImage is part of agent protocol 6; the request speaks 5/);
  assert.equal(agent.calls('buildImage').length, 0);
});
