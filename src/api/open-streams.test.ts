/**
 * Streams are held to their caller's access while they last (open-streams.ts): the edge over TCP
 * with real tokens, a real store and a short recheck period, and streams that never end by
 * themselves. A revoked caller's stream ends with the reason in band; everyone else's goes on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import { WebSocket } from 'ws';
import { openStore } from '../store/open.js';
import { QuotaService } from '../control/quota/quota-service.js';
import { AccessControl } from '../control/identity/access.js';
import { IdentityService } from '../control/identity/identity-service.js';
import { ProjectService } from '../control/identity/project-service.js';
import { EventBus } from '../control/events/event-bus.js';
import type { Services } from '../control/services.js';
import { ApiServer } from './server.js';
import { route, stream } from './route.js';
import { allRoutes } from './routes/index.js';

const PERIOD_MS = 100;
/** Long enough for a revocation to be seen (a period and a check), short enough for a test. */
const BOUND_MS = PERIOD_MS * 2 + 400;
const PASSWORD = 'stream-test-pw';

/** Ticks until the client goes: a stream that never ends by itself, as a follow or a console. */
function ticks(signal: AbortSignal): AsyncIterable<unknown> {
  return (async function* () {
    for (let i = 0; !signal.aborted; i++) {
      yield { i };
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
}

const PROJECT = { param: 'project', kind: 'project' } as const;
const tickRoutes = [
  route({
    method: 'GET', path: '/read/{project}', operationId: 'readTicks', tag: 't', access: 'read', summary: 'a reader\'s stream', streams: 'ndjson',
    auth: { role: 'reader', project: PROJECT }, params: Type.Object({ project: Type.String() }), response: Type.Unknown(),
    handler: ({ signal }) => stream('ndjson', ticks(signal)),
  }),
  route({
    method: 'GET', path: '/write/{project}', operationId: 'memberTicks', tag: 't', access: 'write', summary: 'a member\'s stream', streams: 'ndjson',
    auth: { role: 'member', project: PROJECT }, params: Type.Object({ project: Type.String() }), response: Type.Unknown(),
    handler: ({ signal }) => stream('ndjson', ticks(signal)),
  }),
];

interface Open {
  /** Everything received so far. */
  text(): string;
  /** Resolves when the response is over (ended or aborted). */
  over: Promise<void>;
  isOver(): boolean;
  close(): void;
}

function open(port: number, path: string, token: string): Promise<Open> {
  return new Promise((ok, fail) => {
    let text = '';
    let over = false;
    let done!: () => void;
    const finished = new Promise<void>((r) => (done = r));
    const req = request({ host: '127.0.0.1', port, path, headers: { authorization: `Bearer ${token}` } }, (res) => {
      if (res.statusCode !== 200) fail(new Error(`${path}: ${res.statusCode}`));
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('error', () => undefined); // aborted mid-body: what the client of a revoked stream sees
      res.on('close', () => {
        over = true;
        done();
      });
      ok({ text: () => text, over: finished, isOver: () => over, close: () => req.destroy() });
    });
    req.on('error', () => {
      over = true;
      done();
    });
    req.end();
  });
}

/** Resolves when `o` is over, or fails after `ms`. */
async function endsWithin(o: Open, ms: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([o.over, new Promise((_, fail) => (timer = setTimeout(() => fail(new Error(`${what}: still open after ${ms} ms`)), ms)))]);
  clearTimeout(timer);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function setup(t: { after(fn: () => Promise<void>): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-streams-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  await store.projects.insert({ id: 'default', name: 'default', parentId: null, createdAt: new Date().toISOString() });
  const quota = await QuotaService.open(store);
  await quota.ensureProject('default', null);
  const identity = new IdentityService(store);
  const access = new AccessControl(store);
  const projects = new ProjectService(store, quota, 'default', () => access.forgetTree());
  const events = new EventBus();
  // one VM, vm1 in project A, whose serial console sends a byte every 20 ms until it is let go
  const consoles: { input: Duplex; signal: AbortSignal }[] = [];
  const vms = {
    get: async () => ({ id: 'vm1', projectId: (await projects.resolve('A')).id }),
    console: async (_id: string, input: Readable, signal: AbortSignal) => {
      consoles.push({ input: input as Duplex, signal }); // the WebSocket bridge's PassThrough
      return (async function* () {
        while (!signal.aborted) {
          yield { data: Buffer.from('.').toString('base64') };
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
    },
  };
  const services = { store, quota, identity, projects, access, events, vms, defaultProjectId: 'default' } as unknown as Services;
  const real = allRoutes().filter((r) => r.operationId === 'events' || r.operationId === 'vmConsole');
  const server = new ApiServer([...tickRoutes, ...real], services, { accessRecheckMs: PERIOD_MS });
  const port = await server.listenTcp('127.0.0.1', 0);
  t.after(async () => {
    await server.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const user = async (name: string, grants: [string, 'reader' | 'member' | 'admin'][]) => {
    await identity.createUser(name, PASSWORD);
    for (const [project, role] of grants) await projects.grant(name, (await projects.resolve(project)).id, role);
    return (await identity.login(name, PASSWORD)).token;
  };
  return { store, identity, projects, events, consoles, port, user };
}

test('a reader whose role is revoked: the stream ends within the bound with the reason; another reader\'s goes on', async (t) => {
  const { projects, port, user } = await setup(t);
  const a = await projects.create('A', null);
  const alice = await user('alice', [['A', 'reader']]);
  const bob = await user('bob', [['A', 'reader']]);
  const hers = await open(port, '/read/A', alice);
  const his = await open(port, '/read/A', bob);
  await projects.revoke('alice', a.id);
  await endsWithin(hers, BOUND_MS, 'alice\'s stream');
  const last = JSON.parse(hers.text().trim().split('\n').pop()!) as { error?: { code: string; message: string } };
  assert.deepEqual(last.error, { code: 'PermissionDenied', message: 'access revoked: this stream needs the reader role on project "A"' });
  // several periods later, bob's is still open and still streaming
  const seen = his.text().length;
  await sleep(PERIOD_MS * 4);
  assert.equal(his.isOver(), false, 'an unchanged reader\'s stream goes on');
  assert.ok(his.text().length > seen, 'and still streams');
  his.close();
});

test('a member lowered to reader loses a member\'s stream, not a reader\'s', async (t) => {
  const { projects, port, user } = await setup(t);
  await projects.create('A', null);
  const carol = await user('carol', [['A', 'member']]);
  const write = await open(port, '/write/A', carol);
  const read = await open(port, '/read/A', carol);
  await projects.grant('carol', (await projects.resolve('A')).id, 'reader');
  await endsWithin(write, BOUND_MS, 'the member\'s stream');
  assert.match(write.text(), /"code":"PermissionDenied","message":"access revoked: this stream needs the member role on project \\"A\\""/);
  await sleep(PERIOD_MS * 3);
  assert.equal(read.isOver(), false, 'reading is still allowed');
  read.close();
});

test('an inherited role revoked on the parent ends the child\'s stream; a project removed ends its streams', async (t) => {
  const { projects, port, user } = await setup(t);
  const org = await projects.create('org', null);
  await projects.create('team', org.id);
  const solo = await projects.create('solo', null);
  const dave = await user('dave', [['org', 'admin'], ['solo', 'member']]);
  const child = await open(port, '/read/org%2Fteam', dave);
  const gone = await open(port, '/read/solo', dave);
  await projects.revoke('dave', org.id);
  await projects.remove(solo.id);
  await endsWithin(child, BOUND_MS, 'the child project\'s stream');
  await endsWithin(gone, BOUND_MS, 'the removed project\'s stream');
  assert.match(child.text(), /needs the reader role on project \\"org\/team\\"/);
  assert.match(gone.text(), /"message":"access revoked: the project was removed"/);
});

test('a session logged out, an API key removed, a user removed, a session expired: each one\'s streams end as Unauthenticated', async (t) => {
  const { identity, projects, port, user } = await setup(t);
  await projects.create('A', null);
  const erin = await user('erin', [['A', 'reader']]);
  const erinPrincipal = await identity.authenticate(erin);
  const key = (await identity.createApiKey(erinPrincipal, 'ci')).key;
  const frank = await user('frank', [['A', 'reader']]);
  const brief = (await identity.login('frank', PASSWORD, 1)).token;
  const streams = {
    session: await open(port, '/read/A', erin),
    key: await open(port, '/read/A', key),
    user: await open(port, '/read/A', frank),
    expiring: await open(port, '/read/A', brief),
  };
  await identity.logout(erinPrincipal);
  await identity.removeApiKey(erinPrincipal, 'ci');
  await endsWithin(streams.session, BOUND_MS, 'the logged-out session\'s stream');
  await endsWithin(streams.key, BOUND_MS, 'the removed key\'s stream');
  assert.match(streams.session.text(), /"code":"Unauthenticated","message":"the session was revoked; log in again"/);
  assert.match(streams.key.text(), /"code":"Unauthenticated","message":"the API key was revoked; log in again"/);
  assert.equal(streams.user.isOver(), false, 'frank\'s own session is untouched by erin\'s logout');
  await endsWithin(streams.expiring, 1000 + BOUND_MS, 'the expired session\'s stream');
  assert.match(streams.expiring.text(), /"message":"token expired; log in again"/);
  assert.equal(streams.user.isOver(), false, 'a session that did not expire goes on');
  await identity.removeUser('frank');
  await endsWithin(streams.user, BOUND_MS, 'the removed user\'s stream');
  assert.match(streams.user.text(), /"code":"Unauthenticated"/);
});

test('events: ?project= ends when reading it is revoked; every readable project\'s stream goes on without the revoked one\'s events', async (t) => {
  const { projects, events, port, user } = await setup(t);
  const a = await projects.create('A', null);
  const b = await projects.create('B', null);
  const gina = await user('gina', [['A', 'reader'], ['B', 'reader']]);
  const onlyA = await open(port, '/events?project=A', gina);
  const all = await open(port, '/events', gina);
  events.publish({ type: 'container', action: 'create', id: 'before-in-A', projectId: a.id });
  await projects.revoke('gina', a.id);
  await endsWithin(onlyA, BOUND_MS, 'the stream of A\'s events');
  assert.match(onlyA.text(), /before-in-A/);
  assert.match(onlyA.text(), /event: error\ndata: \{"error":\{"code":"PermissionDenied","message":"access revoked: this stream needs the reader role on project \\"A\\""/);
  events.publish({ type: 'container', action: 'create', id: 'after-in-A', projectId: a.id });
  events.publish({ type: 'container', action: 'create', id: 'after-in-B', projectId: b.id });
  await sleep(PERIOD_MS);
  assert.equal(all.isOver(), false, 'she still reads B');
  assert.match(all.text(), /before-in-A/);
  assert.match(all.text(), /after-in-B/);
  assert.doesNotMatch(all.text(), /after-in-A/, 'A\'s events stop once she may no longer read A');
  all.close();
});

test('a VM console WebSocket: a member removed from the project is closed with 1008 and the reason, its console let go; another member\'s stays', async (t) => {
  const { projects, consoles, port, user } = await setup(t);
  const a = await projects.create('A', null);
  const alice = await user('alice', [['A', 'member']]);
  const bob = await user('bob', [['A', 'member']]);
  const console_ = (token: string) => new Promise<{ ws: WebSocket; closed: Promise<[number, string]> }>((ok, fail) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/vms/vm1/console`, ['nimbus-console', `nimbus-token.${token}`]);
    const closed = new Promise<[number, string]>((r) => ws.once('close', (code, reason) => r([code, reason.toString()])));
    ws.once('unexpected-response', (_req, res) => fail(new Error(`console refused: ${res.statusCode}`)));
    ws.once('open', () => ok({ ws, closed }));
  });
  const hers = await console_(alice);
  const his = await console_(bob);
  assert.equal(consoles.length, 2);
  let hisOpen = true;
  void his.closed.then(() => (hisOpen = false));
  await projects.revoke('alice', a.id);
  let timer: NodeJS.Timeout | undefined;
  const [code, reason] = await Promise.race([hers.closed, new Promise<never>((_, fail) => (timer = setTimeout(() => fail(new Error('alice\'s console still open')), BOUND_MS)))]);
  clearTimeout(timer);
  assert.equal(code, 1008, 'policy violation');
  assert.equal(reason, 'PermissionDenied: access revoked: this stream needs the member role on project "A"');
  assert.equal(consoles[0]!.signal.aborted, true, 'her console let go');
  assert.equal(consoles[0]!.input.writableEnded, true, 'nothing more reaches the guest from her');
  await sleep(PERIOD_MS * 3);
  assert.equal(hisOpen, true, 'an unchanged member keeps the console');
  assert.equal(consoles[1]!.signal.aborted, false);
  his.ws.close();
  await his.closed;
});
