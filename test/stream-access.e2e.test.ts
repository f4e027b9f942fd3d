/**
 * Long-lived streams end when their caller's access does (src/api/open-streams.ts), against a real
 * nimbusd over TCP and its Docker API socket with real tokens and a real container: a member
 * removed from the project loses the shell it had open (the exec WebSocket, a docker exec's
 * hijacked connection); a reader whose role is revoked loses its follows and event streams. A
 * member whose access is unchanged keeps every stream across the other's revocation.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, type RawData } from 'ws';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { call } from './helpers/http.js';
import { imageArchives } from './helpers/registry-images.js';
import { DOCKER_CLI } from './helpers/docker-cli.js';
import { buildTestImages } from '../scripts/fixtures/images.js';

const PASSWORD = 'stream-access-pw';
/** The daemon's recheck period (edge.ts accessRecheckMs, 5 s), a check's time and a loaded host's slack. */
const BOUND_MS = 5_000 + 4_000;

/** Resolves with `p`'s value, or fails naming `what` after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, fail) => (timer = setTimeout(() => fail(new Error(`${what}: still open after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** An interactive shell over the exec WebSocket, as the dashboard and nimbus exec -it open it. */
interface Terminal {
  output(): string;
  /** Text messages from the server ({"exitCode"} or {"error"}). */
  texts: string[];
  closed: Promise<{ code: number; reason: string }>;
  isClosed(): boolean;
  type(line: string): void;
  close(): void;
}

function terminal(port: number, container: string, token: string): Promise<Terminal> {
  return new Promise((ok, fail) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/containers/${container}/exec?cmd=sh&rows=24&cols=80`, ['nimbus-exec', `nimbus-token.${token}`]);
    let out = '';
    let isClosed = false;
    const texts: string[] = [];
    const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => {
      isClosed = true;
      resolve({ code, reason: reason.toString() });
    }));
    ws.on('message', (data: RawData, isBinary: boolean) => {
      const text = (Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as Buffer)).toString();
      if (isBinary) out += text;
      else texts.push(text);
    });
    ws.once('unexpected-response', (_req, res) => fail(new Error(`exec WebSocket refused: ${res.statusCode}`)));
    ws.once('error', (e) => fail(e));
    ws.once('open', () => ok({
      output: () => out, texts, closed, isClosed: () => isClosed,
      type: (line) => ws.send(Buffer.from(`${line}\n`), { binary: true }),
      close: () => ws.close(),
    }));
  });
}

/** A streamed GET (a follow, an event stream): what came, and when it was over. */
interface Stream {
  text(): string;
  over: Promise<void>;
  isOver(): boolean;
  close(): void;
}

function streamed(target: { port: number } | { socketPath: string }, path: string, headers: Record<string, string>): Promise<Stream> {
  return new Promise((ok, fail) => {
    let text = '';
    let isOver = false;
    let done!: () => void;
    const over = new Promise<void>((r) => (done = r));
    const finish = () => {
      isOver = true;
      done();
    };
    const where = 'port' in target ? { host: '127.0.0.1', port: target.port } : { socketPath: target.socketPath };
    const req = request({ ...where, path, headers }, (res) => {
      if (res.statusCode !== 200) fail(new Error(`GET ${path}: ${res.statusCode}`));
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('error', () => undefined); // cut mid-body: what a revoked caller's client sees
      res.on('close', finish);
      ok({ text: () => text, over, isOver: () => isOver, close: () => req.destroy() });
    });
    req.on('error', finish);
    req.end();
  });
}

describe('streams end when their caller\'s access does', { concurrency: false, timeout: 300_000 }, () => {
  let d: DaemonProcess;
  let port: number;
  let dir: string;
  let box: string;
  const tokens: Record<string, string> = {};
  const sock = () => ({ socketPath: d.socket });
  const tcp = () => ({ port });
  const login = async (user: string) => {
    const r = await call(tcp(), 'POST', '/auth/login', { body: { user, password: PASSWORD } });
    assert.equal(r.status, 201, r.text);
    return (r.body as { token: string }).token;
  };
  const grant = async (user: string, role: string) => assert.equal((await call(sock(), 'PUT', `/projects/A/roles/${user}`, { body: { role } })).status, 200);
  const revoke = async (user: string) => assert.equal((await call(sock(), 'DELETE', `/projects/A/roles/${user}`)).status, 204);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nimbus-stream-access-'));
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0']);
    const m = /tcp:127\.0\.0\.1:(\d+)/.exec(d.output());
    assert.ok(m, `ready line names the TCP port: ${d.output()}`);
    port = Number(m[1]);
    assert.equal((await call(sock(), 'POST', '/projects', { body: { name: 'A' } })).status, 201);
    const { dockerSave } = await imageArchives(await buildTestImages(), dir);
    assert.equal((await call(sock(), 'POST', '/images/import?project=A', { raw: readFileSync(dockerSave) })).status, 201);
    const made = await call(sock(), 'POST', '/containers?project=A', {
      body: { image: 'imported/saved:v1', name: 'box', cmd: ['sh', '-c', 'while true; do echo tick; sleep 0.2; done'], start: true },
    });
    assert.equal(made.status, 201, made.text);
    box = (made.body as { id: string }).id;
    for (const user of ['alice', 'bob', 'rita', 'rob', 'dora', 'dan']) {
      assert.equal((await call(sock(), 'POST', '/users', { body: { name: user, password: PASSWORD } })).status, 201);
    }
  });
  after(async () => {
    await d?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a member removed from the project: the shell open on the exec WebSocket is closed (1008, the reason); another member\'s shell goes on', async () => {
    await grant('alice', 'member');
    await grant('bob', 'member');
    tokens.alice = await login('alice');
    tokens.bob = await login('bob');
    const hers = await terminal(port, box, tokens.alice);
    const his = await terminal(port, box, tokens.bob);
    hers.type('echo $((6*7))');
    his.type('echo $((6*8))');
    await until('both shells answer', () => hers.output().includes('42') && his.output().includes('48'));

    await revoke('alice');
    const { code, reason } = await within(hers.closed, BOUND_MS, 'alice\'s shell');
    assert.equal(code, 1008, 'policy violation');
    assert.equal(reason, 'PermissionDenied: access revoked: this stream needs the member role on project "A"');
    assert.deepEqual(hers.texts.map((t) => JSON.parse(t) as unknown), [{ error: { code: 'PermissionDenied', message: 'access revoked: this stream needs the member role on project "A"' } }]);

    // another period later bob's shell is open and answering
    await sleep(6_000);
    assert.equal(his.isClosed(), false, 'an unchanged member keeps the shell');
    his.type('echo $((7*7))');
    await until('bob\'s shell answers after alice\'s removal', () => his.output().includes('49'));
    his.close();
    await his.closed;
  });

  test('a docker exec of a member removed from the project: its hijacked connection ends; another member\'s goes on', { skip: DOCKER_CLI ? false : 'no docker CLI on this machine' }, async () => {
    await grant('dora', 'member');
    await grant('dan', 'member');
    const docker = async (user: string): Promise<{ child: ChildProcess; out(): string; exited: Promise<number | null> }> => {
      const config = join(dir, `docker-${user}`);
      mkdirSync(config, { recursive: true });
      writeFileSync(join(config, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': await login(user), 'X-Nimbus-Project': 'A' } }));
      const child = spawn(DOCKER_CLI!, ['exec', '-i', 'box', 'sh'], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: config, DOCKER_CONFIG: config, DOCKER_HOST: `unix://${d.home}/docker.sock` },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
      child.stdin!.on('error', () => undefined);
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      return { child, out: () => out, exited };
    };
    const hers = await docker('dora');
    const his = await docker('dan');
    try {
      hers.child.stdin!.write('echo $((6*7))\n');
      his.child.stdin!.write('echo $((6*8))\n');
      await until('both docker exec shells answer', () => hers.out().includes('42') && his.out().includes('48'));

      await revoke('dora');
      const code = await within(hers.exited, BOUND_MS, 'dora\'s docker exec');
      assert.notEqual(code, 0, `the CLI sees its connection cut: ${hers.out()}`);

      await sleep(6_000);
      assert.equal(his.child.exitCode, null, 'an unchanged member keeps the docker exec');
      his.child.stdin!.write('echo $((7*7))\n');
      await until('dan\'s shell answers after dora\'s removal', () => his.out().includes('49'));
    } finally {
      for (const c of [hers.child, his.child]) if (c.exitCode === null) c.kill();
      his.child.stdin!.end();
    }
  });

  test('a reader whose role is revoked: logs --follow, /events?project= and docker events end; another reader\'s go on', async () => {
    await grant('rita', 'reader');
    await grant('rob', 'reader');
    tokens.rita = await login('rita');
    tokens.rob = await login('rob');
    const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
    const docker = (t: string) => ({ 'x-nimbus-token': t, 'x-nimbus-project': 'A' });
    const dockerSocket = { socketPath: `${d.home}/docker.sock` };
    const hers = {
      logs: await streamed(tcp(), `/containers/${box}/logs?follow=true&tail=1`, bearer(tokens.rita)),
      events: await streamed(tcp(), '/events?project=A', bearer(tokens.rita)),
      docker: await streamed(dockerSocket, '/v1.41/events', docker(tokens.rita)),
    };
    const his = {
      logs: await streamed(tcp(), `/containers/${box}/logs?follow=true&tail=1`, bearer(tokens.rob)),
      events: await streamed(tcp(), '/events?project=A', bearer(tokens.rob)),
      docker: await streamed(dockerSocket, '/v1.41/events', docker(tokens.rob)),
    };
    await until('both follows stream', () => hers.logs.text().includes('tick') && his.logs.text().includes('tick'));

    await revoke('rita');
    await within(Promise.all([hers.logs.over, hers.events.over, hers.docker.over]), BOUND_MS, 'rita\'s streams');
    const reason = '{"error":{"code":"PermissionDenied","message":"access revoked: this stream needs the reader role on project \\"A\\""}}';
    assert.ok(hers.logs.text().trimEnd().endsWith(reason), `the follow's last line says why: ${hers.logs.text().slice(-300)}`);
    assert.ok(hers.events.text().trimEnd().endsWith(`event: error\ndata: ${reason}`), `the event stream's last event says why: ${hers.events.text().slice(-300)}`);

    // events in A after her revocation still reach rob, not her
    await sleep(6_000);
    const seen = his.logs.text().length;
    const made = await call(sock(), 'POST', '/containers?project=A', { body: { image: 'imported/saved:v1', name: 'after-revoke', cmd: ['true'] } });
    assert.equal(made.status, 201, made.text);
    await until('rob\'s streams carry what happened after', () => his.events.text().includes('after-revoke') && his.docker.text().includes('after-revoke') && his.logs.text().length > seen);
    for (const s of Object.values(his)) assert.equal(s.isOver(), false, 'an unchanged reader keeps every stream');
    for (const s of Object.values(hers)) assert.ok(!s.text().includes('after-revoke'));
    for (const s of Object.values(his)) s.close();
    assert.equal((await call(sock(), 'DELETE', '/containers/after-revoke?project=A')).status, 204);
  });
});
