/**
 * `docker exec`: POST /containers/{id}/exec makes an exec instance (kept here, in memory: Docker's
 * are not persistent either), POST /exec/{id}/start runs it through the container service's exec —
 * hijacked or detached — and GET /exec/{id}/json tells its exit code, which the CLI reads once the
 * stream ends. Without Tty the hijacked stream is framed (stdout and stderr multiplexed); with Tty
 * it is the terminal's raw bytes both ways, and POST /exec/{id}/resize?h=&w= resizes it (a resize
 * before the start sets the size it starts with). AttachStdin carries the client's input: without
 * a TTY its end is the command's end-of-file; on a terminal there is no end-of-file (^D is one).
 */
import type { Duplex } from 'node:stream';
import { Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import { MAX_ARGV_ENV_TOTAL } from '../../core/limits.js';
import { badTerminalSize, type ExecSession } from '../../agent/drivers/instance-driver.js';
import { Argv, ContainerPath, EnvList, UserSpec } from '../schemas.js';
import { checkOrThrow, checkTotalLength } from '../validate.js';
import { drainedOrClosed } from '../../core/streams.js';
import { frame } from './mapping.js';
import { inDockerWords, noSuchContainer } from './errors.js';
import type { DockerContext, DockerRoute } from './server.js';

/** What the Nimbus exec route accepts: the mapped request passes the same checks. */
const nimbusExec = TypeCompiler.Compile(Type.Object({
  args: Argv(undefined, 1),
  env: Type.Optional(EnvList()),
  workdir: Type.Optional(ContainerPath),
  user: Type.Optional(UserSpec),
}, { additionalProperties: false }));

interface ExecInstance {
  id: string;
  projectId: string;
  containerId: string;
  request: { args: string[]; env?: string[]; workdir?: string; user?: string };
  /** Tty: the size it starts with (ConsoleSize, a resize before the start, or 24x80). */
  tty?: { rows: number; cols: number };
  stdin: boolean;
  /** While it runs: resizes go to it. */
  session?: ExecSession;
  running: boolean;
  started: boolean;
  exitCode: number | null;
  createdAt: number;
}

/** Docker's default when the client says no size (API 1.41 has no ConsoleSize in the create). */
const DEFAULT_TTY = { rows: 24, cols: 80 };

/** ConsoleSize [height, width] as API 1.42 sends it; anything else is no size. */
function consoleSize(v: unknown): { rows: number; cols: number } | undefined {
  if (!Array.isArray(v) || v.length !== 2) return undefined;
  const [rows, cols] = v as unknown[];
  if (rows === 0 && cols === 0) return undefined;
  const bad = badTerminalSize(rows, cols);
  if (bad) throw new InvalidArgument(`ConsoleSize: ${bad}`);
  return { rows: rows as number, cols: cols as number };
}

/** Exec instances not started or long finished are forgotten after this; at most MAX_EXECS are kept. */
const EXEC_TTL_MS = 10 * 60_000;
const MAX_EXECS = 4096;
const execs = new Map<string, ExecInstance>();

function forgetOld(now: number): void {
  for (const [id, e] of execs) if (!e.running && now - e.createdAt > EXEC_TTL_MS) execs.delete(id);
  if (execs.size >= MAX_EXECS) throw new Conflict(`too many exec instances (${MAX_EXECS}); start or wait for the ones made`);
}

/** The exec instance named in the path, if it is of the request's project (others' do not exist for it). */
function instance(ctx: DockerContext): ExecInstance {
  const e = execs.get(ctx.params[0]!);
  if (!e || e.projectId !== ctx.project) throw new NotFound(`No such exec instance: ${ctx.params[0]!}`);
  return e;
}

const set = (v: unknown) => v !== undefined && v !== null && v !== false && v !== '' && !(Array.isArray(v) && v.length === 0);

async function create(ctx: DockerContext) {
  const raw = (await ctx.body()) as Record<string, unknown> | undefined;
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new InvalidArgument('invalid request body: must be a JSON object');
  if (set(raw.Privileged)) throw new InvalidArgument('docker exec --privileged is not supported (Privileged)');
  const request = checkOrThrow(nimbusExec, {
    args: raw.Cmd,
    ...(set(raw.Env) ? { env: raw.Env } : {}),
    ...(set(raw.WorkingDir) ? { workdir: raw.WorkingDir } : {}),
    ...(set(raw.User) ? { user: raw.User } : {}),
  }, 'request body') as ExecInstance['request'];
  checkTotalLength({ args: request.args, env: request.env }, MAX_ARGV_ENV_TOTAL);
  const ref = ctx.params[0]!.replace(/^\//, '');
  const c = await inDockerWords(ctx.services.containers.get(ref, { projectId: ctx.project }), () => noSuchContainer(ref));
  if (c.status !== 'running') throw new Conflict(`Container ${c.id} is not running`);
  const now = Date.now();
  forgetOld(now);
  const id = newId();
  const tty = raw.Tty === true ? (consoleSize(raw.ConsoleSize) ?? { ...DEFAULT_TTY }) : undefined;
  execs.set(id, { id, projectId: ctx.project, containerId: c.id, request, ...(tty ? { tty } : {}), stdin: raw.AttachStdin === true, running: false, started: false, exitCode: null, createdAt: now });
  return { status: 201, json: { Id: id } };
}

/** Runs it through the container service (its checks and events), once. */
async function run(ctx: DockerContext, e: ExecInstance, attachStdin: boolean): Promise<ExecSession> {
  if (e.started) throw new Conflict(`exec ${e.id} has already been started`);
  e.started = true;
  const { args, env, workdir, user } = e.request;
  const session = await ctx.services.containers.exec(e.containerId, {
    args, ...(env ? { env } : {}), ...(workdir ? { cwd: workdir } : {}), ...(user ? { user } : {}), ...(e.tty ? { tty: e.tty } : {}),
  });
  if (!attachStdin) session.stdin?.end(); // no input: the process reads end-of-file (a terminal's none comes)
  e.running = true;
  e.session = session;
  void session.exit.then((code) => {
    e.exitCode = code;
  }, () => {
    e.exitCode = -1;
  }).finally(() => {
    e.running = false;
    delete e.session;
  });
  return session;
}

/** Both outputs as frames, until both end; the exit is recorded before the stream closes (the CLI inspects it next). */
export async function pump(out: Duplex, session: ExecSession): Promise<void> {
  const copy = async (stream: 'stdout' | 'stderr') => {
    for await (const chunk of session[stream]) {
      if (out.destroyed) return;
      if (!out.write(frame(stream, chunk as Buffer))) await drainedOrClosed(out as never);
    }
  };
  await Promise.all([copy('stdout'), copy('stderr')]);
  await session.exit.catch(() => undefined);
}

/** The terminal's raw bytes to the client until the command's output ends (with a TTY nothing is framed). */
export async function pumpRaw(out: Duplex, session: ExecSession): Promise<void> {
  session.stderr.resume(); // empty with a TTY
  for await (const chunk of session.stdout) {
    if (out.destroyed) return;
    if (!out.write(chunk as Buffer)) await drainedOrClosed(out as never);
  }
  await session.exit.catch(() => undefined);
}

/**
 * The start request's own body ({"Detach":false,"Tty":true}) comes first on the hijacked socket
 * (the HTTP parser leaves an upgrade's body alone): skipped, so only the client's input follows.
 */
export async function skipRequestBody(socket: Duplex, length: number): Promise<void> {
  let left = length;
  if (!Number.isSafeInteger(left) || left <= 0) return;
  await new Promise<void>((resolve) => {
    const finish = (rest?: Buffer) => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.pause();
      if (rest?.length) socket.unshift(rest);
      resolve();
    };
    const onData = (b: Buffer) => {
      if (b.length < left) {
        left -= b.length;
        return;
      }
      const rest = b.subarray(left);
      left = 0;
      finish(rest);
    };
    const onEnd = () => finish();
    socket.on('data', onData);
    socket.once('end', onEnd);
  });
}

/** The client's input to the command; without a TTY the client's half-close is the command's end-of-file. */
function feedStdin(socket: Duplex, session: ExecSession, tty: boolean): void {
  const stdin = session.stdin;
  if (!stdin) return;
  stdin.on('error', () => undefined); // EPIPE once the command has exited
  socket.on('data', (b: Buffer) => {
    if (!stdin.write(b)) {
      socket.pause();
      stdin.once('drain', () => socket.resume());
    }
  });
  socket.once('end', () => {
    if (!tty) stdin.end();
  });
  socket.resume();
}

async function startDetached(ctx: DockerContext) {
  const body = (await ctx.body()) as { Detach?: unknown; Tty?: unknown } | undefined;
  if (body?.Detach !== true) throw new InvalidArgument('an attached exec start needs a connection upgrade (Connection: Upgrade, Upgrade: tcp)');
  const session = await run(ctx, instance(ctx), false);
  // detached: the output is dropped, as dockerd does (-d)
  session.stdout.resume();
  session.stderr.resume();
  return { status: 200, json: '' };
}

async function startAttached(ctx: DockerContext, socket: Duplex): Promise<void> {
  const e = instance(ctx);
  const session = await run(ctx, e, e.stdin);
  socket.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n');
  if (e.stdin) {
    await skipRequestBody(socket, Number(ctx.req.headers['content-length'] ?? 0));
    feedStdin(socket, session, e.tty !== undefined);
  }
  // the client gone before the end: hang up on the command (on a terminal: SIGHUP)
  socket.once('close', () => {
    if (e.running) session.stdout.destroy();
  });
  try {
    await (e.tty ? pumpRaw(socket, session) : pump(socket, session));
    // the exit code is read right after: let the bookkeeping above run first
    await new Promise<void>((resolve) => setImmediate(resolve));
  } finally {
    if (!socket.destroyed) socket.end();
  }
}

const ID = '([^/]+)';

export const execRoutes: DockerRoute[] = [
  { method: 'POST', pattern: new RegExp(`^/containers/${ID}/exec$`), name: 'exec create', access: 'member', handler: create },
  { method: 'POST', pattern: new RegExp(`^/exec/${ID}/start$`), name: 'exec start', access: 'member', handler: startDetached, upgrade: startAttached },
  {
    method: 'GET', pattern: new RegExp(`^/exec/${ID}/json$`), name: 'exec inspect', access: 'reader',
    handler: (ctx) => {
      const e = instance(ctx);
      return {
        json: {
          ID: e.id, ContainerID: e.containerId, Running: e.running, ExitCode: e.exitCode, Pid: 0, OpenStdin: e.stdin, OpenStdout: true, OpenStderr: true,
          ProcessConfig: { tty: e.tty !== undefined, entrypoint: e.request.args[0], arguments: e.request.args.slice(1), privileged: false, user: e.request.user ?? '' },
        },
      };
    },
  },
  {
    method: 'POST', pattern: new RegExp(`^/exec/${ID}/resize$`), name: 'exec resize', access: 'member',
    handler: (ctx) => {
      const e = instance(ctx);
      if (!e.tty) throw new Conflict(`exec ${e.id} has no TTY to resize (it was created without Tty)`);
      const rows = Number(ctx.query.get('h'));
      const cols = Number(ctx.query.get('w'));
      const bad = badTerminalSize(rows, cols);
      if (bad) throw new InvalidArgument(`h and w: ${bad}`);
      // before the start: the size it starts with
      if (e.session?.resize) e.session.resize(rows, cols);
      else if (!e.started) e.tty = { rows, cols };
      return { status: 200, json: '' };
    },
  },
];
