/**
 * Containers through the container service, in the request's project: create, list, inspect,
 * start/stop/restart/kill/pause/unpause, remove, wait, logs (multiplexed framing) and attach
 * (a hijacked connection carrying the output of the run it was attached before).
 */
import type { Duplex, Writable } from 'node:stream';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { Conflict, InvalidArgument, toNimbusError } from '../../core/errors.js';
import { canonicalSignal } from '../../core/signals.js';
import { MAX_ARGV_ENV_TOTAL } from '../../core/limits.js';
import type { Services } from '../../control/services.js';
import type { CreateContainerInput } from '../../control/compute/container-service.js';
import type { ContainerRecord } from '../../store/records.js';
import type { LogRecord } from '../../agent/drivers/instance-driver.js';
import { ContainerCreate } from '../schemas.js';
import { checkOrThrow, checkTotalLength } from '../validate.js';
import { STOP_WRITING, writeBatched } from '../../core/streams.js';
import { checkBody } from './schemas.js';
import { anonymousMounts, containerInspect, containerSummary, frame, layerSizes, matchesContainerFilters, parseFilters, toContainerInput } from './mapping.js';
import { parseVolumesFrom } from '../../core/volumes-from.js';
import { volumesFromMounts } from '../../control/volumes/volumes-from.js';
import { inDockerWords, noSuchContainer, noSuchImage } from './errors.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';
import { attachesToProcess, attachToProcess } from './attach.js';
import { badTerminalSize } from '../../agent/drivers/instance-driver.js';

/** The Nimbus API's own create schema: the mapped input passes the same wire checks as `POST /containers`. */
const nimbusCreate = TypeCompiler.Compile(ContainerCreate);

const ID = '([^/]+)';
/** How long a SIGKILL's answer waits for the exit to be recorded (a host that does not answer is not waited for longer). */
const KILL_WAIT_MS = 10_000;
const flag = (q: URLSearchParams, name: string) => q.get(name) === '1' || q.get(name) === 'true';

/** The project's container named in the path (id, unique id prefix or name; a leading "/" as Docker allows). */
async function container(ctx: DockerContext): Promise<ContainerRecord> {
  const ref = ctx.params[0]!.replace(/^\//, '');
  return inDockerWords(ctx.services.containers.get(ref, { projectId: ctx.project }), () => noSuchContainer(ref));
}

/** `?t=` of stop and restart: seconds, -1 or absent for the container's own timeout. */
function timeout(q: URLSearchParams): number | undefined {
  const t = q.get('t');
  if (t === null || t === '' || t === '-1') return undefined;
  if (!/^\d{1,6}$/.test(t)) throw new InvalidArgument(`invalid t: ${t}`);
  return Number(t);
}

async function create(ctx: DockerContext) {
  const { services, project, query } = ctx;
  const body = checkBody('container', await ctx.body());
  const name = query.get('name') || undefined;
  if (query.get('platform')) throw new InvalidArgument('--platform is not supported yet');
  const mapped = toContainerInput(body, name);
  const input = checkOrThrow(nimbusCreate, mapped, 'request body') as CreateContainerInput & { start?: boolean };
  checkTotalLength({ entrypoint: input.entrypoint, cmd: input.cmd, env: input.env }, MAX_ARGV_ENV_TOTAL);
  if (input.stopSignal !== undefined) input.stopSignal = canonicalSignal(input.stopSignal);
  // a 404 in Docker's words is what makes the CLI pull the image and create again
  const image = await inDockerWords(services.images.resolve(input.image, { projectId: project }), () => noSuchImage(body.Image));
  const { start: _start, ...config } = input;
  // --volumes-from: the other containers' mounts (after the request's own), then the image's VOLUMEs none covers, as dockerd
  const lookup = (ref: string) => inDockerWords(services.containers.get(ref, { projectId: project }), () => noSuchContainer(ref));
  const from = await volumesFromMounts(lookup, parseVolumesFrom(body.HostConfig?.VolumesFrom), config.mounts ?? []);
  const mounts = [...(config.mounts ?? []), ...from.mounts];
  mounts.push(...anonymousMounts(Object.keys(image.config.config?.Volumes ?? {}), mounts));
  if (mounts.length) config.mounts = mounts;
  // host paths (-v /host:/p, --mount type=bind) and the host's network are for system administrators only
  const r = await services.containers.requestCreate(config, project, { projectId: project }, {
    mayBindHostPaths: ctx.auth.principal?.systemAdmin === true,
    mayUseHostNetwork: ctx.auth.principal?.systemAdmin === true,
    ...(from.host ? { placement: { host: from.host } } : {}),
  });
  // Docker's create has no 202: a create waiting for a reclaim is waited for
  const c = 'container' in r ? r.container : await r.finished;
  return { status: 201, json: { Id: c.id, Warnings: c.warnings } };
}

async function list(ctx: DockerContext) {
  const { services, project, query } = ctx;
  const filters = parseFilters(query.get('filters') ?? undefined);
  const all = flag(query, 'all') || filters.has('status');
  const now = Date.now();
  let rows = (await services.containers.list({ all, projectId: project })).map((c) => services.containers.view(c)).filter((c) => matchesContainerFilters(c, filters));
  rows.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const limit = Number(query.get('limit') ?? -1);
  if (limit > 0) rows = rows.slice(0, limit);
  if (!flag(query, 'size')) return { json: rows.map((c) => containerSummary(c, now)) };
  // ps -s: each writable layer measured on its host, and with its image's size (SizeRootFs)
  const [usage, images] = await Promise.all([services.containers.layerUsage(rows), services.images.list(project)]);
  const imageSize = new Map(images.map((i) => [i.digest, i.size]));
  return { json: rows.map((c) => ({ ...containerSummary(c, now), ...layerSizes(c, usage, imageSize) })) };
}

/** 304 as dockerd answers a start of a running container or a stop of a stopped one. */
async function lifecycle(ctx: DockerContext, act: (s: Services, id: string) => Promise<unknown>, already: (c: ContainerRecord) => boolean) {
  const c = await container(ctx);
  if (already(c)) return { status: 304 };
  await act(ctx.services, c.id);
  return { status: 204 };
}

async function remove(ctx: DockerContext) {
  if (flag(ctx.query, 'link')) throw new InvalidArgument('--link (remove a link) is not supported');
  const c = await container(ctx);
  const force = flag(ctx.query, 'force');
  if (!force && (c.status === 'running' || c.status === 'paused' || c.status === 'restarting')) {
    throw new Conflict(`You cannot remove a running container ${c.id}. Stop the container before attempting removal or force remove`);
  }
  // -v: its anonymous volumes too (never named ones; one another container uses stays)
  await ctx.services.containers.remove(c.id, force, { volumes: flag(ctx.query, 'v') });
  return { status: 204 };
}

async function kill(ctx: DockerContext) {
  const c = await container(ctx);
  let signal: string;
  try {
    signal = canonicalSignal(ctx.query.get('signal') || 'SIGKILL');
  } catch {
    throw new InvalidArgument(`invalid signal: ${ctx.query.get('signal')}`);
  }
  if (c.status !== 'running' && c.status !== 'paused') throw new Conflict(`Container ${c.id} is not running`);
  await ctx.services.containers.kill(c.id, signal);
  // dockerd's kill with SIGKILL returns once the container is down, so a `docker rm` right after works
  if (signal === 'SIGKILL') {
    await ctx.services.containers.wait(c.id, 'not-running', AbortSignal.any([ctx.signal, AbortSignal.timeout(KILL_WAIT_MS)])).catch(() => undefined);
  }
  return { status: 204 };
}

/**
 * POST /wait: the headers go out as soon as the wait is registered — the CLI starts the container
 * only once they arrive (run and run --rm), so an exit between the two cannot be missed.
 */
async function wait(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, res, query, signal } = ctx;
  const condition = query.get('condition') || 'not-running';
  if (condition !== 'not-running' && condition !== 'next-exit' && condition !== 'removed') throw new InvalidArgument(`invalid condition: "${condition}"`);
  const c = await container(ctx);
  let lastExit = { exitCode: c.exitCode ?? 0, oomKilled: c.oomKilled };
  let finish!: (r: { exitCode: number; oomKilled: boolean }) => void;
  const done = new Promise<{ exitCode: number; oomKilled: boolean }>((resolve) => (finish = resolve));
  const off = services.events.on((e) => {
    if (e.type !== 'container' || e.id !== c.id) return;
    const a = e.attributes ?? {};
    if (e.action === 'die') {
      lastExit = { exitCode: typeof a.exitCode === 'number' ? a.exitCode : -1, oomKilled: a.oomKilled === true };
      if (condition !== 'removed') finish(lastExit);
    } else if (e.action === 'destroy') finish(lastExit);
  });
  signal.addEventListener('abort', off);
  try {
    if (condition === 'not-running' && c.status !== 'running' && c.status !== 'paused' && c.status !== 'restarting') finish(lastExit);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.flushHeaders();
    const r = await Promise.race([done, new Promise<undefined>((resolve) => signal.addEventListener('abort', () => resolve(undefined)))]);
    if (r) res.end(JSON.stringify({ StatusCode: r.exitCode, Error: null }) + '\n');
  } finally {
    off();
  }
  return HANDLED;
}

/** Docker's `since`/`until`: Unix seconds, with a fraction. */
function unixSeconds(v: string | null, what: string): number | undefined {
  if (v === null || v === '' || v === '0') return undefined;
  if (!/^\d{1,12}(\.\d{1,9})?$/.test(v)) throw new InvalidArgument(`invalid ${what}: ${v} (Unix seconds)`);
  return Number(v) * 1000;
}

/**
 * Log records as Docker's frames, or raw for a container with a terminal (the CLI reads
 * Config.Tty to know which, as from dockerd); many to a write, as the API's NDJSON streams.
 */
async function writeFrames(out: Duplex | DockerContext['res'], records: AsyncIterable<LogRecord>, opts: { stdout: boolean; stderr: boolean; timestamps: boolean; since?: number; until?: number; raw?: boolean }, signal: AbortSignal): Promise<void> {
  await writeBatched(
    out as Writable,
    records[Symbol.asyncIterator](),
    (r) => {
      if (r.stream === 'stdout' ? !opts.stdout : !opts.stderr) return undefined;
      if (opts.since !== undefined || opts.until !== undefined) {
        const t = Date.parse(r.time);
        if (opts.since !== undefined && t < opts.since) return undefined;
        if (opts.until !== undefined && t > opts.until) return STOP_WRITING;
      }
      // Docker's RFC 3339 with nanoseconds ends in Z; the log's own time says +00:00
      const text = (opts.timestamps ? `${r.time.replace(/\+00:00$/, 'Z')} ` : '') + r.line + (r.partial ? '' : '\n');
      return opts.raw ? text : frame(r.stream, Buffer.from(text));
    },
    { signal },
  );
}

async function logs(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, query, res, signal } = ctx;
  const c = await container(ctx);
  const stdout = flag(query, 'stdout');
  const stderr = flag(query, 'stderr');
  if (!stdout && !stderr) throw new InvalidArgument('Bad parameters: you must choose at least one stream');
  const tailRaw = query.get('tail');
  if (tailRaw && tailRaw !== 'all' && !/^\d{1,9}$/.test(tailRaw)) throw new InvalidArgument(`invalid tail: ${tailRaw}`);
  const tail = tailRaw && tailRaw !== 'all' ? Number(tailRaw) : undefined;
  const since = unixSeconds(query.get('since'), 'since');
  const until = unixSeconds(query.get('until'), 'until');
  const records = await services.containers.logs(c.id, { follow: flag(query, 'follow'), ...(tail !== undefined ? { tail } : {}), signal });
  res.writeHead(200, { 'content-type': 'application/vnd.docker.raw-stream' });
  res.flushHeaders();
  await writeFrames(res, records, { stdout, stderr, timestamps: flag(query, 'timestamps'), raw: c.config.tty === true, ...(since !== undefined ? { since } : {}), ...(until !== undefined ? { until } : {}) }, signal);
  res.end();
  return HANDLED;
}

/** Until an exited container is started again (`docker start -a` attaches first), or the client leaves. */
function restartedOrGone(services: Services, c: ContainerRecord, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const off = services.events.on((e) => {
      if (e.type === 'container' && e.id === c.id && (e.action === 'start' || e.action === 'destroy')) {
        off();
        resolve();
      }
    });
    signal.addEventListener('abort', () => {
      off();
      resolve();
    });
  });
}

/**
 * POST /attach (hijacked). A container with a terminal, or stdin asked of one with an open stdin,
 * is attached to its process (attach.ts). Otherwise: output only, from now on, from its log —
 * what `docker run` shows (a --rm container that exits at once may be gone before a socket
 * could be reached; its log is followed from before the start).
 */
async function attach(ctx: DockerContext, socket: Duplex): Promise<void> {
  const { services, query, signal } = ctx;
  const from = Date.now();
  const c = await container(ctx);
  if (query.get('logs') === '1' || query.get('logs') === 'true') throw new InvalidArgument('attach with logs is not supported yet: use docker logs');
  const wantOut = flag(query, 'stdout');
  const wantErr = flag(query, 'stderr');
  if (attachesToProcess(c, flag(query, 'stdin'))) {
    const opts = { stdin: flag(query, 'stdin'), stdout: wantOut, stderr: wantErr };
    // `docker start -ai` attaches to an exited container before starting it: the process it will have
    if (c.status === 'exited' || c.status === 'dead') {
      const exited = c;
      return attachToProcess(ctx, socket, c, opts, async () => {
        await restartedOrGone(services, exited, signal);
        return signal.aborted ? undefined : services.store.containers.get(exited.id);
      });
    }
    return attachToProcess(ctx, socket, c, opts);
  }
  socket.write('HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n');
  try {
    // A created container's log is followed at once, before the start: a --rm container that
    // prints and exits at once may be removed before a later read could open its log.
    if (c.status === 'exited' || c.status === 'dead') {
      await restartedOrGone(services, c, signal);
      if (signal.aborted || !(await services.store.containers.get(c.id))) return;
    }
    const records = await services.containers.logs(c.id, { follow: true, signal });
    // a log line carries the conmon's clock to the ms; lines of this run are not older than the attach
    await writeFrames(socket, records, { stdout: wantOut, stderr: wantErr, timestamps: false, since: from - 1 }, signal);
  } catch (e) {
    if (toNimbusError(e).code !== 'NotFound') throw e; // removed meanwhile (--rm): the stream just ends
  } finally {
    if (!socket.destroyed) socket.end();
  }
}

/** POST /containers/{id}/resize?h=&w=: the main process's terminal (docker run -it, attach, and on SIGWINCH). */
async function resize(ctx: DockerContext) {
  const c = await container(ctx);
  const rows = Number(ctx.query.get('h'));
  const cols = Number(ctx.query.get('w'));
  const bad = badTerminalSize(rows, cols);
  if (bad) throw new InvalidArgument(`h and w: ${bad}`);
  await ctx.services.containers.resize(c.id, rows, cols);
  return { status: 200, json: '' };
}

export const containerRoutes: DockerRoute[] = [
  { method: 'POST', pattern: new RegExp(`^/containers/${ID}/resize$`), name: 'container resize', access: 'member', handler: resize },
  { method: 'POST', pattern: /^\/containers\/create$/, name: 'container create', access: 'member', handler: create },
  { method: 'GET', pattern: /^\/containers\/json$/, name: 'container list', access: 'reader', handler: list },
  {
    method: 'GET', pattern: new RegExp(`^/containers/${ID}/json$`), name: 'container inspect', access: 'reader',
    handler: async (ctx) => {
      const c = ctx.services.containers.view(await container(ctx));
      return { json: containerInspect(c, await ctx.services.networks.endpointsOf(c.id)) };
    },
  },
  {
    method: 'POST', pattern: new RegExp(`^/containers/${ID}/start$`), name: 'container start', access: 'member',
    handler: (ctx) => lifecycle(ctx, (s, id) => s.containers.start(id), (c) => c.status === 'running'),
  },
  {
    method: 'POST', pattern: new RegExp(`^/containers/${ID}/stop$`), name: 'container stop', access: 'member',
    handler: (ctx) => lifecycle(ctx, (s, id) => s.containers.stop(id, timeout(ctx.query)), (c) => c.status === 'exited' || c.status === 'created'),
  },
  {
    method: 'POST', pattern: new RegExp(`^/containers/${ID}/restart$`), name: 'container restart', access: 'member',
    handler: (ctx) => lifecycle(ctx, (s, id) => s.containers.restart(id, timeout(ctx.query)), () => false),
  },
  { method: 'POST', pattern: new RegExp(`^/containers/${ID}/kill$`), name: 'container kill', access: 'member', handler: kill },
  {
    method: 'POST', pattern: new RegExp(`^/containers/${ID}/pause$`), name: 'container pause', access: 'member',
    handler: (ctx) => lifecycle(ctx, (s, id) => s.containers.pause(id), () => false),
  },
  {
    method: 'POST', pattern: new RegExp(`^/containers/${ID}/unpause$`), name: 'container unpause', access: 'member',
    handler: (ctx) => lifecycle(ctx, (s, id) => s.containers.unpause(id), () => false),
  },
  { method: 'DELETE', pattern: new RegExp(`^/containers/${ID}$`), name: 'container remove', access: 'member', handler: remove },
  { method: 'POST', pattern: new RegExp(`^/containers/${ID}/wait$`), name: 'container wait', access: 'reader', handler: wait },
  { method: 'GET', pattern: new RegExp(`^/containers/${ID}/logs$`), name: 'container logs', access: 'reader', handler: logs },
  {
    method: 'POST', pattern: new RegExp(`^/containers/${ID}/attach$`), name: 'container attach', access: 'member',
    handler: () => {
      throw new InvalidArgument('attach needs a connection upgrade (Connection: Upgrade, Upgrade: tcp)');
    },
    upgrade: attach,
  },
];
