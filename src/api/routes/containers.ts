import { Type } from '@sinclair/typebox';
import { route, stream, type RequestAuth } from '../route.js';
import { Arg, Argv, Container, ContainerCreate, ContainerPath, Empty, EnvList, ExecFrame, IdParam, LogLine, Name, Ref, Operation, SignalSpec, Stats, StopTimeout, TerminalCells, TerminalSize, UserSpec } from '../schemas.js';
import { InvalidArgument } from '../../core/errors.js';
import { checkTotalLength } from '../validate.js';
import { canonicalSignal } from '../../core/signals.js';
import { MAX_ARGV_ENV_TOTAL } from '../../core/limits.js';
import type { CreateContainerInput } from '../../control/compute/container-service.js';
import type { ExecSession } from '../../agent/drivers/instance-driver.js';
import { AsyncQueue } from '../../core/async-queue.js';
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';
import { checkPinnedHost } from '../../control/compute/hosts.js';
import { volumesFromMounts } from '../../control/volumes/volumes-from.js';
import { paged, PageQuery } from '../paging.js';

/** Container routes act on the project of the container named in the path, looked up in the caller's scope; handlers get its full id. */
export const CONTAINER = {
  param: 'id', kind: 'container',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const c = await s.containers.get(ref, scope);
    return { projectId: c.projectId, id: c.id };
  },
};


/** Where an instance may run (the scheduler decides among the hosts that pass). */
export const PlacementFields = {
  host: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'System administrators: run it on this host (an agent\'s name, GET /agents); the host\'s filters still apply' })),
  zone: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Only hosts of this zone' })),
  constraints: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 128 }), Type.String({ maxLength: 256 }), { description: 'Host labels that must match (--constraint k=v)' })),
  group: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Server group (name or id) of the project: its policy (affinity, anti-affinity) applies' })),
};

/** --volumes-from: resolved into mounts (and the others' host) before the create. */
const VolumesFromField = {
  volumesFrom: Type.Optional(Type.Array(Type.Object({
    container: Ref('A container of the project (name or id)'),
    mode: Type.Optional(Type.Union([Type.Literal('ro'), Type.Literal('rw')], { description: 'Every mount read-only or read-write; absent: each as the other container has it' })),
  }, { additionalProperties: false }), { maxItems: 16, description: 'The volumes and binds of these containers at the same paths (--volumes-from; not their tmpfs; a path mounts names wins); the container runs on their host' })),
};

/** The create body: the container's settings and where it may run. */
const ContainerCreateOnHosts = Type.Object({ ...ContainerCreate.properties, ...PlacementFields, ...VolumesFromField }, { $id: 'ContainerCreate', additionalProperties: false });

const isSystemAdmin = (auth: RequestAuth) => auth.principal?.systemAdmin === true;

const Signal = Type.Object({ signal: SignalSpec({ default: 'SIGKILL' }) });
const Timeout = Type.Object({ timeout: Type.Optional(StopTimeout('Seconds before SIGKILL')) });

export const containerRoutes = [
  route({
    method: 'GET', path: '/containers', operationId: 'listContainers', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List containers (running ones unless all=true); paged with limit and after (oldest first), the next page in the Link header',
    query: Type.Object({
      all: Type.Boolean({ default: false }),
      size: Type.Optional(Type.Boolean({ description: "Measure each listed container's writable layer on its host (sizeRw), as docker ps -s does" })),
      ...PageQuery,
    }),
    response: Type.Array(Container),
    handler: async ({ query, services, auth, req }) => {
      const page = paged(
        (await services.containers.list({ all: query.all, ...(auth.projectId ? { projectId: auth.projectId } : {}) })).filter((c) => auth.canRead(c.projectId)),
        (c) => [c.createdAt, c.id], query, req, (c) => services.containers.view(c),
      );
      if (query.size !== true) return page;
      // the page's containers only, each host asked once
      const usage = await services.containers.layerUsage(page.body);
      return { ...page, body: page.body.map((c) => ({ ...c, ...(usage.has(c.id) ? { sizeRw: usage.get(c.id)!.bytes } : {}) })) };
    },
  }),
  route({
    method: 'POST', path: '/containers', operationId: 'createContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Create a container from a pulled image (and start it, with start: true): 201 with the container, or 202 with an Operation (container.create) ' +
      'when the project\'s lent capacity must first be reclaimed; it completes, with the container as its result, once the borrowers\' grace period is over',
    status: 201, body: ContainerCreateOnHosts, response: Type.Union([Container, Operation]),
    handler: async ({ body, services, auth }) => {
      // The image: the project's own first, else one in a project the caller can read (a parent's, say); others' do not exist for it.
      const { start, host, zone, constraints, group, volumesFrom, ...input } = body;
      const placement = { ...(host !== undefined ? { host } : {}), ...(zone !== undefined ? { zone } : {}), ...(constraints ? { constraints } : {}), ...(group !== undefined ? { group } : {}) };
      checkPinnedHost(placement, isSystemAdmin(auth));
      if (volumesFrom?.length) {
        const from = await volumesFromMounts((ref) => services.containers.get(ref, { projectId: auth.project() }), volumesFrom, input.mounts ?? []);
        if (from.host !== undefined && placement.host !== undefined && from.host !== placement.host) throw new InvalidArgument(`volumesFrom's containers run on host ${from.host}, not ${placement.host}`);
        input.mounts = [...(input.mounts ?? []), ...from.mounts] as typeof input.mounts;
        if (from.host !== undefined) Object.assign(placement, { host: from.host });
      }
      checkTotalLength({ entrypoint: input.entrypoint, cmd: input.cmd, env: input.env }, MAX_ARGV_ENV_TOTAL);
      // runc takes the 31 standard names and numbers only (SIGRTMIN+3 → "37")
      if (input.stopSignal !== undefined) input.stopSignal = canonicalSignal(input.stopSignal);
      const r = await services.containers.requestCreate({ ...input, restart: input.restart ?? { name: 'no' } } as CreateContainerInput, auth.project(),
        { canRead: auth.canRead, preferProjectId: auth.project() }, { start, placement, mayBindHostPaths: isSystemAdmin(auth), mayUseHostNetwork: isSystemAdmin(auth) });
      return 'container' in r ? { status: 201, body: r.container } : { status: 202, body: r.operation };
    },
  }),
  route({
    method: 'GET', path: '/containers/{id}', operationId: 'inspectContainer', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'Inspect a container (with its network settings)', params: IdParam, response: Container,
    handler: async ({ params, services }) => {
      const c = await services.containers.get(params.id);
      return { ...services.containers.view(c), network: await services.networks.settings(c) };
    },
  }),
  route({
    method: 'DELETE', path: '/containers/{id}', operationId: 'removeContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Remove a container (force kills a running one; volumes: its anonymous volumes too)', params: IdParam,
    query: Type.Object({
      force: Type.Boolean({ default: false }),
      volumes: Type.Boolean({ default: false, description: 'Its anonymous volumes too (docker rm -v): never named ones; one another container still mounts stays' }),
    }), response: Empty,
    handler: async ({ params, query, services }) => {
      await services.containers.remove(params.id, query.force, { volumes: query.volumes });
      return { status: 204 };
    },
  }),
  route({
    method: 'POST', path: '/containers/{id}/start', operationId: 'startContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Start a container', params: IdParam, response: Container,
    handler: ({ params, services }) => services.containers.start(params.id),
  }),
  route({
    method: 'POST', path: '/containers/{id}/stop', operationId: 'stopContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Stop a container: its stop signal, then SIGKILL after the timeout', params: IdParam, body: Timeout, response: Container,
    handler: ({ params, body, services }) => services.containers.stop(params.id, body.timeout),
  }),
  route({
    method: 'POST', path: '/containers/{id}/restart', operationId: 'restartContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Stop then start a container', params: IdParam, body: Timeout, response: Container,
    handler: ({ params, body, services }) => services.containers.restart(params.id, body.timeout),
  }),
  route({
    method: 'POST', path: '/containers/{id}/kill', operationId: 'killContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Send a signal to a container', params: IdParam, body: Signal, response: Container,
    handler: ({ params, body, services }) => services.containers.kill(params.id, canonicalSignal(body.signal)),
  }),
  route({
    method: 'POST', path: '/containers/{id}/move', operationId: 'moveContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Move a container to another host, cold: stopped, carried with its writable layer and named volumes, created there with the same id, name, '
      + 'address and aliases, started again if it ran; returns an Operation (container.move, 202). Live moves (CRIU) are refused on this kernel',
    status: 202, params: IdParam,
    body: Type.Object({
      to: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'System administrators: the destination host (as --host on a create); absent: the scheduler picks another host' })),
      live: Type.Optional(Type.Boolean({ description: 'Live: checkpointed with CRIU at the source and restored at the destination, its processes continuing (runc containers, running, without a terminal; docs/overlay.md)' })),
    }, { additionalProperties: false }),
    response: Operation,
    handler: async ({ params, body, services, auth }) => {
      checkPinnedHost({ ...(body.to !== undefined ? { host: body.to } : {}) }, isSystemAdmin(auth), 'to');
      return { status: 202, body: await services.containers.startMove(params.id, { ...(body.to !== undefined ? { to: body.to } : {}), ...(body.live ? { live: true } : {}) }) };
    },
  }),
  route({
    method: 'POST', path: '/containers/{id}/pause', operationId: 'pauseContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Freeze every process of a container (cgroup freezer)', params: IdParam, response: Container,
    handler: ({ params, services }) => services.containers.pause(params.id),
  }),
  route({
    method: 'POST', path: '/containers/{id}/rename', operationId: 'renameContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Give a container another name in its project (409 when an instance there has it); DNS answers the new name on every host',
    params: IdParam, body: Type.Object({ name: Name({ description: 'The new name' }) }, { additionalProperties: false }), response: Container,
    handler: async ({ params, body, services }) => services.containers.view(await services.containers.rename(params.id, body.name)),
  }),
  route({
    method: 'POST', path: '/containers/{id}/unpause', operationId: 'unpauseContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Thaw a paused container', params: IdParam, response: Container,
    handler: ({ params, services }) => services.containers.unpause(params.id),
  }),
  route({
    method: 'POST', path: '/containers/{id}/wait', operationId: 'waitContainer', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'Block until the container is not running (or removed); returns its exit code', params: IdParam,
    query: Type.Object({ condition: Type.Union([Type.Literal('not-running'), Type.Literal('removed')], { default: 'not-running' }) }),
    response: Type.Object({ exitCode: Type.Integer(), oomKilled: Type.Boolean() }),
    handler: ({ params, query, services, signal }) => services.containers.wait(params.id, query.condition, signal),
  }),
  route({
    method: 'GET', path: '/containers/{id}/logs', operationId: 'containerLogs', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'Container output as newline-delimited JSON records; follow=true streams until it exits', params: IdParam,
    query: Type.Object({ follow: Type.Boolean({ default: false }), tail: Type.Optional(Type.Integer({ minimum: 0 })) }),
    response: LogLine, streams: 'ndjson',
    handler: async ({ params, query, services, signal }) =>
      stream('ndjson', await services.containers.logs(params.id, { follow: query.follow, ...(query.tail !== undefined ? { tail: query.tail } : {}), signal })),
  }),
  route({
    method: 'POST', path: '/containers/{id}/exec', operationId: 'execInContainer', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'Run a command in a running container; streams output frames, the last one carries exitCode. '
      + 'With tty the command runs on a terminal without input; for one to type into, GET this path as a WebSocket', params: IdParam,
    body: Type.Object({
      args: Argv(undefined, 1),
      env: Type.Optional(EnvList()),
      workdir: Type.Optional(ContainerPath),
      user: Type.Optional(UserSpec),
      tty: Type.Optional(TerminalSize),
    }, { additionalProperties: false }),
    response: ExecFrame, streams: 'ndjson',
    handler: async ({ params, body, services }) => {
      checkTotalLength({ args: body.args, env: body.env }, MAX_ARGV_ENV_TOTAL);
      const session = await services.containers.exec(params.id, {
        args: body.args, ...(body.env ? { env: body.env } : {}), ...(body.workdir ? { cwd: body.workdir } : {}), ...(body.user ? { user: body.user } : {}),
        ...(body.tty ? { tty: body.tty } : {}),
      });
      return stream('ndjson', execFrames(session));
    },
  }),
  route({
    method: 'GET', path: '/containers/{id}/exec', operationId: 'execTerminal', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'A command on a terminal, interactively, as a WebSocket (Upgrade: websocket; src/api/dashboard/exec-ws.ts): offer the subprotocol '
      + '"nimbus-exec" (a browser adds "nimbus-token.<token>", having no Authorization header). Binary messages both ways are the terminal\'s bytes; '
      + 'a text message {"resize":{"rows":R,"cols":C}} resizes it. The server ends with a text message {"exitCode":N} (or {"error":{…}}) and closes. '
      + 'Without the upgrade this path answers 400',
    params: IdParam,
    query: Type.Object({
      cmd: Type.Array(Arg, { minItems: 1, maxItems: 4096, default: ['sh'], description: 'The command and its arguments, one parameter each (default sh)' }),
      rows: TerminalCells('The terminal\'s lines at the start', 24),
      cols: TerminalCells('The terminal\'s columns at the start', 80),
      env: Type.Optional(EnvList()),
      workdir: Type.Optional(ContainerPath),
      user: Type.Optional(UserSpec),
    }),
    response: ExecFrame,
    handler: () => {
      throw new InvalidArgument('GET /containers/{id}/exec is a WebSocket: send Connection: Upgrade and Upgrade: websocket (or POST for frames of output)');
    },
  }),
  route({
    method: 'GET', path: '/containers/{id}/attach', operationId: 'attachTerminal', tag: 'containers', access: 'write',
    auth: { role: 'member', project: CONTAINER },
    summary: 'The main process\'s terminal (a container made with tty), interactively, as a WebSocket (Upgrade: websocket; src/api/dashboard/exec-ws.ts): '
      + 'subprotocol "nimbus-exec", messages as GET /containers/{id}/exec\'s: binary both ways are the terminal\'s bytes (input only with stdin and a '
      + 'container made with openStdin), a text {"resize":{"rows":R,"cols":C}} resizes it; the last text message is {"exitCode":N} once the process has '
      + 'exited. Closing the socket detaches: the container keeps running. A container made without tty but with openStdin attaches with stdin (nimbus run -i): '
      + 'each binary message from the server starts with its stream\'s byte (1 stdout, 2 stderr), and a text {"closeStdin":true} from the client ends the process\'s input. '
      + 'Without the upgrade this path answers 400',
    params: IdParam,
    query: Type.Object({
      rows: TerminalCells('The terminal\'s lines from now on', 24),
      cols: TerminalCells('The terminal\'s columns from now on', 80),
      stdin: Type.Boolean({ default: true, description: 'Carry this client\'s input to the process (its stdin must be open: openStdin)' }),
    }),
    response: ExecFrame,
    handler: () => {
      throw new InvalidArgument('GET /containers/{id}/attach is a WebSocket: send Connection: Upgrade and Upgrade: websocket');
    },
  }),
  route({
    method: 'GET', path: '/containers/{id}/stats', operationId: 'containerStats', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'CPU, memory and pids from the container cgroup; network counters from its endpoints', params: IdParam, response: Stats,
    handler: ({ params, services }) => services.containers.stats(params.id),
  }),
  route({
    method: 'GET', path: '/containers/{id}/top', operationId: 'containerTop', tag: 'containers', access: 'read',
    auth: { role: 'reader', project: CONTAINER },
    summary: 'The container\'s processes as `ps -ef` shows them on its host (host pids): titles and one row per process', params: IdParam,
    response: Type.Object({ titles: Type.Array(Type.String()), processes: Type.Array(Type.Array(Type.String())) }),
    handler: ({ params, services }) => services.containers.top(params.id),
  }),
];

/** Interleave stdout/stderr chunks as frames, then a final exit frame. */
function execFrames(session: ExecSession): AsyncIterable<unknown> {
  const queue = new AsyncQueue<unknown>();
  let open = 2;
  const closed = () => {
    if (--open === 0) void session.exit.then((exitCode) => queue.push({ exitCode }), () => queue.push({ exitCode: -1 })).finally(() => queue.end());
  };
  for (const name of ['stdout', 'stderr'] as const) {
    const s = session[name];
    let finished = false;
    const finish = () => {
      if (!finished) {
        finished = true;
        closed();
      }
    };
    s.on('data', (b: Buffer) => queue.push({ stream: name, data: b.toString('base64') }));
    s.once('end', finish);
    s.once('error', finish);
  }
  return queue;
}
