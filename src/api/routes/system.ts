import { Type } from '@sinclair/typebox';
import { route, stream, type RequestAuth } from '../route.js';
import { paged, PageQuery } from '../paging.js';
import { Event, Operation, ProjectRef } from '../schemas.js';
import { buildOpenApi } from '../openapi.js';
import { allRoutes } from './index.js';
import { InvalidArgument, NotFound } from '../../core/errors.js';
import { subtree } from '../../control/metering/usage-report.js';
import type { Services } from '../../control/services.js';

/** Operation routes act on the operation's project. */
/** The newest 1,000 operations the caller may read (of one kind): for a member, the newest of its projects', not everyone's filtered. */
function operationsReadable(services: Services, auth: RequestAuth, kind: string | undefined) {
  const projectIds = auth.readableProjects();
  return services.operations.list({ limit: 1000, ...(kind !== undefined ? { kind } : {}), ...(projectIds !== undefined ? { projectIds } : {}) });
}

const OPERATION = {
  param: 'id', kind: 'operation',
  owner: async (s: Services, id: string) => {
    const op = await s.store.operations.get(id);
    if (!op) throw new NotFound(`no such operation: ${id}`);
    return op.projectId;
  },
};


export const systemRoutes = [
  route({
    method: 'GET', path: '/_ping', operationId: 'ping', tag: 'system', access: 'public',
    auth: { public: true },
    summary: 'Liveness check', response: Type.Object({ ok: Type.Boolean() }),
    handler: () => ({ ok: true }),
  }),
  route({
    method: 'GET', path: '/version', operationId: 'version', tag: 'system', access: 'public',
    auth: { public: true },
    summary: 'Daemon version', response: Type.Object({ version: Type.String(), apiVersion: Type.String(), node: Type.String() }),
    handler: ({ services }) => ({ version: services.version, apiVersion: '1', node: process.version }),
  }),
  route({
    method: 'GET', path: '/replicas', operationId: 'listReplicas', tag: 'system', access: 'read',
    auth: { global: 'admin' },
    summary: 'The control-plane processes sharing this store, live or recently gone, and which one leads (docs/replicas.md)',
    response: Type.Object({
      self: Type.String({ description: 'The replica that answered' }),
      leader: Type.Union([Type.String(), Type.Null()], { description: 'The leading replica (null while none holds the lock)' }),
      replicas: Type.Array(Type.Object({
        id: Type.String(), hostname: Type.String(), pid: Type.Integer(), startedAt: Type.Number({ description: 'Epoch ms' }), lastSeen: Type.Number({ description: 'Epoch ms of its last heartbeat' }),
        apiUrl: Type.Union([Type.String(), Type.Null()]), live: Type.Boolean(), leader: Type.Boolean(),
      }, { additionalProperties: true })),
    }),
    handler: async ({ services }) => {
      const l = await services.replica.list();
      return { self: l.self, leader: l.leader ?? null, replicas: l.replicas };
    },
  }),
  route({
    method: 'GET', path: '/info', operationId: 'info', tag: 'system', access: 'read',
    auth: { authenticated: true },
    summary: 'Daemon facts and counts of what the caller can read; host facts (home, host name, kernel, cgroups, pools) for system administrators only',
    response: Type.Record(Type.String(), Type.Unknown()),
    handler: async ({ services, auth }) => {
      // Counts cover the projects the caller can read; host facts are the same for everyone.
      const all = (await services.containers.list({ all: true })).filter((c) => auth.canRead(c.projectId));
      const vms = (await services.vms.list({ all: true })).filter((v) => auth.canRead(v.projectId));
      // with --no-agent there is no embedded agent to describe (the hosts are GET /agents)
      const full = services.hosts.localName === undefined ? undefined : await services.agent.info();
      // host facts (home, host name, kernel, pools, memory) are the operator's; a tenant learns what its requests can use
      const admin = auth.principal?.systemAdmin === true;
      const agent = !full ? null : admin ? full : {
        name: full.name,
        runtimes: full.runtimes.map((r) => ({ name: r.name, usable: r.usable, ...(r.default ? { default: true } : {}) })),
        ...(full.vm ? { vm: { accelerator: full.vm.accelerator } } : {}),
      };
      return {
        version: services.version,
        startedAt: services.startedAt,
        ...(admin ? { home: services.options.home } : {}),
        // where the docker CLI reaches this daemon: the socket's path is the host's (administrators), TCP anyone's
        dockerApi: { ...(admin ? { socket: services.options.dockerSocket } : {}), ...(services.dockerTcpUrl ? { tcp: services.dockerTcpUrl, ...(services.dockerTcpTls ? { tls: true } : {}) } : {}) },
        agent,
        containers: {
          total: all.length,
          running: all.filter((c) => c.status === 'running').length,
          paused: all.filter((c) => c.status === 'paused').length,
          exited: all.filter((c) => c.status === 'exited').length,
          // what one created without a memory size is given where its project's memory is limited (0: nothing)
          memoryDefaultBytes: services.options.containerMemoryDefaultBytes,
          // what the writable layer of one created without a storage size may hold where its project's disk is limited (0: unbounded)
          storageDefaultBytes: services.options.containerStorageDefaultBytes,
        },
        vms: {
          total: vms.length,
          running: vms.filter((v) => v.status === 'running').length,
          paused: vms.filter((v) => v.status === 'paused').length,
          saved: vms.filter((v) => v.status === 'saved').length,
          stopped: vms.filter((v) => v.status === 'stopped').length,
          // the accelerator new VMs get, and why (KVM only when a probe boot succeeded)
          ...(full?.vm ? { accelerator: full.vm.accelerator, ...(admin ? { acceleratorReason: full.vm.reason } : {}) } : {}),
        },
        images: (await services.images.list()).filter((i) => auth.canRead(i.projectId)).length,
      };
    },
  }),
  route({
    method: 'GET', path: '/openapi.json', operationId: 'openapi', tag: 'system', access: 'public',
    auth: { public: true },
    summary: 'This API as an OpenAPI 3 document, generated from the route table', response: Type.Record(Type.String(), Type.Unknown()),
    handler: ({ services }) => buildOpenApi(allRoutes(), services.version),
  }),
  route({
    method: 'GET', path: '/events', operationId: 'events', tag: 'system', access: 'read',
    // with ?project= the stream is of that project: held to reading it while it lasts (open-streams.ts)
    auth: { role: 'reader', project: 'query-or-all' },
    summary: 'Server-sent events of every state change, each with its project and actor; filtered by project (and its descendants), kind and instance', streams: 'sse',
    query: Type.Object({
      type: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
      kind: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())], { description: 'The same as type: container, vm, network, image, operation, quota, …' })),
      project: Type.Optional(ProjectRef('Only events of this project (id, path or name) and its descendants')),
      id: Type.Optional(Type.String()),
      instance: Type.Optional(Type.String({ description: 'An instance (or any resource) by id, or an instance by name' })),
      since: Type.Optional(Type.Integer({ minimum: 0, description: 'Replay buffered events after this sequence number' })),
    }),
    response: Type.Composite([Event, Type.Object({ actor: Type.Optional(Type.String({ description: 'Who caused it: a user, local-admin, or system' })) })]),
    handler: async ({ query, services, signal, auth }) => {
      const list = (v: string | string[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
      const types = [...list(query.type), ...list(query.kind)];
      const projectIds = auth.projectId ? await projectSubtree(services, auth.projectId) : undefined;
      const instance = query.instance === undefined ? undefined : await instanceId(services, query.instance, (id) => auth.canRead(id) && (!projectIds || projectIds.has(id)));
      return stream('sse', readable(auth, services.events.subscribe({
        ...(types.length ? { types } : {}),
        ...(query.id ? { id: query.id } : {}),
        ...(instance ? { instance } : {}),
        ...(projectIds ? { projectIds } : {}),
        ...(query.since !== undefined ? { since: query.since } : {}),
      }, signal)));
    },
  }),
  route({
    method: 'GET', path: '/operations', operationId: 'listOperations', tag: 'operations', access: 'read',
    auth: { authenticated: true },
    summary: 'Recent operations, newest first (the newest 1,000 the caller may read; of one kind with kind=, e.g. vm.migrate for the migration history with its reports); ' +
      'paged with limit and after, the next page in the Link header',
    response: Type.Array(Operation),
    query: Type.Object({ kind: Type.Optional(Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z][a-z0-9-]*(\\.[a-z][a-z0-9-]*)*$' })), ...PageQuery }),
    handler: async ({ services, auth, query, req }) => paged(
      (await operationsReadable(services, auth, query.kind)).filter((o) => auth.canRead(o.projectId)),
      (o) => [o.createdAt, o.id], query, req, (o) => o, 'descending',
    ),
  }),
  route({
    method: 'GET', path: '/operations/{id}', operationId: 'getOperation', tag: 'operations', access: 'read',
    auth: { role: 'reader', project: OPERATION },
    summary: 'An operation and its progress', params: Type.Object({ id: Type.String() }), response: Operation,
    handler: ({ params, services }) => services.operations.get(params.id),
  }),
  route({
    method: 'GET', path: '/operations/{id}/wait', operationId: 'waitOperation', tag: 'operations', access: 'read',
    auth: { role: 'reader', project: OPERATION },
    summary: 'Block until the operation ends or the timeout (seconds) passes',
    params: Type.Object({ id: Type.String() }),
    query: Type.Object({ timeout: Type.Number({ default: 60, minimum: 0, maximum: 3600 }) }),
    response: Operation,
    handler: ({ params, query, services, signal }) => services.operations.wait(params.id, query.timeout * 1000, signal),
  }),
];

/** The project (resolved and checked by the edge) and its descendants. */
async function projectSubtree(services: Services, projectId: string): Promise<ReadonlySet<string>> {
  return new Set(subtree(await services.store.projects.list(), [projectId]).map((p) => p.id));
}

/** The id of the one readable instance (container or VM) of that name, else the reference as given (an id, or a name not in use yet). */
async function instanceId(services: Services, ref: string, canRead: (id: string) => boolean): Promise<string> {
  const named = [...await services.store.containers.named(ref), ...await services.store.vms.named(ref)].filter((i) => canRead(i.projectId));
  if (named.length > 1) throw new InvalidArgument(`several instances are named ${ref}: filter by id, or by project as well`);
  return named[0]?.id ?? ref;
}

/** Only events of projects the caller can read (events without a project: system administrators only). */
async function* readable(auth: RequestAuth, source: AsyncIterable<{ projectId?: string }>): AsyncIterable<unknown> {
  for await (const e of source) if (auth.canRead(e.projectId)) yield e;
}
