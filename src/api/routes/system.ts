import { Type } from '@sinclair/typebox';
import { route, stream, type RequestAuth } from '../route.js';
import { Event, Operation } from '../schemas.js';
import { buildOpenApi } from '../openapi.js';
import { allRoutes } from './index.js';
import { NotFound } from '../../core/errors.js';
import type { Services } from '../../control/services.js';

/** Operation routes act on the operation's project. */
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
        agent,
        containers: {
          total: all.length,
          running: all.filter((c) => c.status === 'running').length,
          paused: all.filter((c) => c.status === 'paused').length,
          exited: all.filter((c) => c.status === 'exited').length,
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
    auth: { authenticated: true },
    summary: 'Server-sent events of every state change', streams: 'sse',
    query: Type.Object({
      type: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
      id: Type.Optional(Type.String()),
      since: Type.Optional(Type.Integer({ minimum: 0, description: 'Replay buffered events after this sequence number' })),
    }),
    response: Event,
    handler: ({ query, services, signal, auth }) =>
      stream('sse', readable(auth, services.events.subscribe({
        ...(query.type ? { types: Array.isArray(query.type) ? query.type : [query.type] } : {}),
        ...(query.id ? { id: query.id } : {}),
        ...(query.since !== undefined ? { since: query.since } : {}),
      }, signal))),
  }),
  route({
    method: 'GET', path: '/operations', operationId: 'listOperations', tag: 'operations', access: 'read',
    auth: { authenticated: true },
    summary: 'Recent operations', response: Type.Array(Operation),
    handler: async ({ services, auth }) => (await services.operations.list()).filter((o) => auth.canRead(o.projectId)),
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

/** Only events of projects the caller can read (events without a project: system administrators only). */
async function* readable(auth: RequestAuth, source: AsyncIterable<{ projectId?: string }>): AsyncIterable<unknown> {
  for await (const e of source) if (auth.canRead(e.projectId)) yield e;
}
