/**
 * The nimbus CLI end to end against a canned daemon on a temporary unix socket:
 * real process, real exit codes, real streams. The daemon here is a script,
 * so the tests pin the CLI's side of the REST contract (order of requests,
 * streaming, exit codes), not the engine.
 */
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// From src/ under tsx, or compiled under dist/ (npm test).
const COMPILED = import.meta.url.endsWith('.js');
const MAIN = fileURLToPath(new URL(COMPILED ? './main.js' : './main.ts', import.meta.url));
const NODE_ARGS = COMPILED ? [MAIN] : ['--import', 'tsx', MAIN];
let server: Server;
let dir: string;
let socket: string;
let log: string[] = [];

/** Open streams the script writes to when the container "runs". */
let logStreams: ServerResponse[] = [];
let eventStreams: ServerResponse[] = [];
let waiters: ServerResponse[] = [];
let scenario: { imagePresent: boolean; startError?: string; waitLosesRace?: boolean; exitCode: number } = { imagePresent: true, exitCode: 0 };

const CONTAINER = {
  id: 'c0ffee1234567890c0ffee1234567890', name: 'happy_turing', projectId: 'default', imageDigest: 'sha256:abc', status: 'created', runtime: 'runc',
  pid: null, exitCode: null, oomKilled: false, restartCount: 0, stoppedByUser: false, createdAt: new Date(Date.now() - 5000).toISOString(),
  startedAt: null, finishedAt: null, warnings: [], config: { image: 'busybox:latest', cmd: ['sh', '-c', 'echo hi'] },
};

function json(res: ServerResponse, status: number, body?: unknown) {
  if (body === undefined) return res.writeHead(status).end();
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}
const notFound = (res: ServerResponse, message: string) => json(res, 404, { error: { code: 'NotFound', message } });
const sse = (res: ServerResponse, data: unknown) => res.write(`data: ${JSON.stringify(data)}\n\n`);
const nd = (res: ServerResponse, data: unknown) => res.write(`${JSON.stringify(data)}\n`);

function openStream(res: ServerResponse, kind: 'sse' | 'ndjson') {
  res.writeHead(200, { 'content-type': kind === 'sse' ? 'text/event-stream' : 'application/x-ndjson' });
  res.flushHeaders();
}

/** The container runs: output, then exit (and removal), as the daemon would publish them. */
function runContainer() {
  const time = new Date().toISOString();
  for (const l of logStreams) {
    nd(l, { time, stream: 'stdout', line: 'hello' });
    nd(l, { time, stream: 'stderr', line: 'oops' });
    nd(l, { time, stream: 'stdout', line: 'par', partial: true });
    nd(l, { time, stream: 'stdout', line: 'tial' });
  }
  setTimeout(() => {
    for (const e of eventStreams) sse(e, { seq: 9, time, type: 'container', action: 'die', id: CONTAINER.id, attributes: { exitCode: scenario.exitCode, oomKilled: false } });
    for (const l of logStreams) l.end();
    for (const w of waiters) {
      if (scenario.waitLosesRace) notFound(w, `no such container: ${CONTAINER.id}`);
      else json(w, 200, { exitCode: scenario.exitCode, oomKilled: false });
    }
  }, 30);
}

async function handle(req: IncomingMessage, res: ServerResponse, body: string) {
  const url = new URL(req.url ?? '/', 'http://x');
  const route = `${req.method} ${url.pathname}`;
  log.push(`${route}${url.search}`);
  const cid = `/containers/${CONTAINER.id}`;
  switch (route) {
    case 'POST /containers': {
      const b = JSON.parse(body) as { image: string; autoRemove: boolean };
      if (!scenario.imagePresent) return notFound(res, `no such image: ${b.image}`);
      return json(res, 201, CONTAINER);
    }
    case 'POST /images/pull':
      setTimeout(() => {
        for (const e of eventStreams) {
          sse(e, { seq: 1, type: 'operation', action: 'progress', id: 'op-other', attributes: { progress: { phase: 'downloading', layers: [{ digest: 'sha256:ffffffffffffffff', status: 'downloading', bytesDone: 1, bytesTotal: 2 }] } } });
          sse(e, { seq: 2, type: 'operation', action: 'progress', id: 'op1', attributes: { progress: { phase: 'downloading', layers: [{ digest: 'sha256:1111111111111111', status: 'downloading', bytesDone: 50, bytesTotal: 100 }] } } });
          sse(e, { seq: 3, type: 'operation', action: 'progress', id: 'op1', attributes: { progress: { phase: 'done', layers: [{ digest: 'sha256:1111111111111111', status: 'done', bytesDone: 100, bytesTotal: 100 }] } } });
        }
      }, 5);
      return json(res, 202, { id: 'op1', kind: 'image.pull', status: 'running', error: null, result: null });
    case 'GET /operations/op1/wait':
      scenario.imagePresent = true;
      return setTimeout(() => json(res, 200, { id: 'op1', status: 'succeeded', error: null, result: { id: 'sha256:abc', digest: 'sha256:abc', reference: 'busybox:latest' } }), 30);
    case 'GET /events':
      openStream(res, 'sse');
      eventStreams.push(res);
      return;
    case `GET ${cid}/logs`:
      openStream(res, 'ndjson');
      logStreams.push(res);
      return;
    case `POST ${cid}/wait`:
      waiters.push(res);
      return;
    case `POST ${cid}/start`:
      if (scenario.startError) return json(res, 500, { error: { code: 'Internal', message: scenario.startError } });
      json(res, 200, { ...CONTAINER, status: 'running' });
      return runContainer();
    case `DELETE ${cid}`:
      return json(res, 204);
    case `POST ${cid}/exec`: {
      openStream(res, 'ndjson');
      const b = JSON.parse(body) as { args: string[] };
      nd(res, { stream: 'stdout', data: Buffer.from(`ran ${b.args.join(' ')}\n`).toString('base64') });
      nd(res, { stream: 'stderr', data: Buffer.from('warn\n').toString('base64') });
      nd(res, { exitCode: 5 });
      return res.end();
    }
    case 'GET /containers':
      return json(res, 200, [{ ...CONTAINER, status: 'running', createdAt: new Date(Date.now() - 5000).toISOString(), startedAt: new Date(Date.now() - 120_000).toISOString() }]);
    default:
      return notFound(res, url.pathname.startsWith('/containers/') ? `no such container: ${decodeURIComponent(url.pathname.split('/')[2] ?? '')}` : `no route ${route}`);
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nimbus-cli-'));
  socket = join(dir, 'nimbus.sock');
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => void handle(req, res, Buffer.concat(chunks).toString()));
  });
  await new Promise<void>((r) => server.listen(socket, r));
});

beforeEach(() => {
  log = [];
  logStreams = [];
  eventStreams = [];
  waiters = [];
  scenario = { imagePresent: true, exitCode: 0 };
});

after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...NODE_ARGS, ...args], {
      env: { ...process.env, NIMBUS_SOCKET: socket, NIMBUS_HOST: '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test('run pulls a missing image, streams stdout and stderr apart, and exits with the container\'s code', async () => {
  scenario = { imagePresent: false, exitCode: 3 };
  const r = await cli(['run', '--rm', 'busybox', 'sh', '-c', 'echo hi']);
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.stdout, 'hello\npartial\n', 'a partial record gets no newline');
  assert.match(r.stderr, /Unable to find image 'busybox' locally/);
  assert.match(r.stderr, /111111111111 downloading 50%/, 'progress of this pull (plain lines off a terminal)');
  assert.match(r.stderr, /111111111111 done/);
  assert.doesNotMatch(r.stderr, /ffffffffffff/, 'not the progress of another operation');
  assert.match(r.stderr, /^oops$/m);
  const start = log.findIndex((l) => l.endsWith('/start'));
  const before = log.slice(0, start);
  assert.ok(before.some((l) => l.startsWith(`GET /containers/${CONTAINER.id}/logs?follow=true`)), `logs opened before start: ${log.join(', ')}`);
  assert.ok(before.some((l) => l.startsWith(`GET /events?type=container&id=${CONTAINER.id}`)), 'events opened before start');
  assert.ok(log.includes(`POST /containers/${CONTAINER.id}/wait?condition=removed`), '--rm waits for the removal');
});

test('run --rm still gets the exit code when the wait loses the race with the removal', async () => {
  scenario = { imagePresent: true, exitCode: 42, waitLosesRace: true };
  const r = await cli(['run', '--rm', 'busybox']);
  assert.equal(r.code, 42, r.stderr);
  assert.equal(r.stdout, 'hello\npartial\n');
});

test('run: a command that cannot be found exits 127 and --rm removes the container', async () => {
  scenario = { imagePresent: true, exitCode: 0, startError: 'runc create failed: exec: "nope": executable file not found in $PATH' };
  const r = await cli(['run', '--rm', 'busybox', 'nope']);
  assert.equal(r.code, 127);
  assert.match(r.stderr, /^Error: Internal: runc create failed: .*executable file not found/m);
  assert.ok(log.includes(`DELETE /containers/${CONTAINER.id}?force=true`));
});

test('run -d prints the full id', async () => {
  const r = await cli(['run', '-d', '--name', 'x', 'busybox', 'sleep', '5']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${CONTAINER.id}\n`);
});

test('exec copies both streams and exits with the command\'s code', async () => {
  const r = await cli(['exec', CONTAINER.id, 'sh', '-c', 'exit 5']);
  assert.equal(r.code, 5, r.stderr);
  assert.equal(r.stdout, 'ran sh -c exit 5\n');
  assert.equal(r.stderr, 'warn\n');
});

test('ps renders a docker-like table, or JSON with -o json', async () => {
  let r = await cli(['ps']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^INSTANCE ID {3,}TYPE {3,}IMAGE {3,}COMMAND {3,}CREATED {3,}STATUS {3,}NAMES\n/);
  assert.match(r.stdout, /c0ffee123456 {3}container {3}busybox:latest {3}"sh -c echo hi" {3}5 seconds ago {3}Up 2 minutes {3}happy_turing\n$/);
  r = await cli(['ps', '--format', 'json']);
  assert.equal((JSON.parse(r.stdout) as { id: string }[])[0]?.id, CONTAINER.id);
  r = await cli(['-o', 'json', 'ps', '-q']);
  assert.equal((JSON.parse(r.stdout) as unknown[]).length, 1, 'a global -o applies too');
});

test('API errors: message on stderr, exit 1; other ids still processed', async () => {
  const r = await cli(['rm', 'nope', CONTAINER.id]);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, 'Error: NotFound: no such container: nope\n');
  assert.equal(r.stdout, `${CONTAINER.id}\n`);
});

test('usage errors exit 2 with the command usage; help exits 0', async () => {
  let r = await cli(['ps', '--bogus']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown option --bogus\nUsage: nimbus ps \[OPTIONS\]/);
  r = await cli(['frobnicate']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown command "frobnicate"/);
  r = await cli(['run', '--memory', 'lots', 'busybox']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /invalid size "lots"/);
  r = await cli(['--help']);
  assert.equal(r.code, 0);
  for (const c of ['image pull', 'run', 'exec', 'operation wait']) assert.match(r.stdout, new RegExp(`^  ${c} `, 'm'));
  r = await cli(['run', '--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--pids-limit N/);
  r = await cli(['image']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /image pull/);
});

test('an unreachable daemon is reported clearly, exit 1', async () => {
  const r = await cli(['--socket', join(dir, 'absent.sock'), 'ps']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^Error: cannot reach nimbusd at .*absent\.sock \(ENOENT\): is it running\? \(npm start\)\n$/);
});
