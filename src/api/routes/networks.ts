import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Alias, Empty, IdParam, Network, NetworkCreate, Ref } from '../schemas.js';
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';

/** Network routes act on the project of the network named in the path, looked up in the caller's scope. */
const NETWORK = {
  param: 'id', kind: 'network',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const n = await s.networks.get(ref, scope);
    return { projectId: n.projectId, id: n.id };
  },
};

const ConnectBody = Type.Object(
  {
    container: Ref('Container name, id or id prefix (of the network\'s project)'),
    ip: Type.Optional(Type.String({ format: 'ipv4', maxLength: 15 })),
    aliases: Type.Optional(Type.Array(Alias, { maxItems: 64 })),
  },
  { additionalProperties: false },
);

export const networkRoutes = [
  route({
    method: 'GET', path: '/networks', operationId: 'listNetworks', tag: 'networks', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List networks (each project has its own "bridge", made on first use)',
    response: Type.Array(Network),
    handler: async ({ services, auth }) => (await services.networks.list(auth.projectId ?? undefined)).filter((n) => auth.canRead(n.projectId)),
  }),
  route({
    method: 'POST', path: '/networks', operationId: 'createNetwork', tag: 'networks', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Create a network: a bridge (NAT out unless internal) or a routed network (no NAT, a host route per container)',
    status: 201, body: NetworkCreate, response: Network,
    handler: async ({ body, services, auth }) => ({ status: 201, body: await services.networks.create(body, auth.project()) }),
  }),
  route({
    method: 'GET', path: '/networks/{id}', operationId: 'inspectNetwork', tag: 'networks', access: 'read',
    auth: { role: 'reader', project: NETWORK },
    summary: 'Inspect a network and the containers on it', params: IdParam, response: Network,
    handler: async ({ params, services, auth }) => {
      const n = await services.networks.view(await services.networks.get(params.id));
      // the hosts it is laid out on (each a segment of its own until overlays) are the operator's to know
      return auth.principal?.systemAdmin === true ? { ...n, hosts: await services.store.networks.hosts(n.id) } : n;
    },
  }),
  route({
    method: 'POST', path: '/networks/{id}/connect', operationId: 'connectNetwork', tag: 'networks', access: 'write',
    auth: { role: 'member', project: NETWORK },
    summary: 'Connect a container of the network\'s project (running or not) to the network: a new interface with a leased address',
    params: IdParam, body: ConnectBody, response: Network,
    handler: async ({ params, body, services }) => {
      const n = await services.networks.get(params.id);
      const c = await services.containers.get(body.container, { projectId: n.projectId });
      return services.networks.connect(n.id, c, { ...(body.ip ? { ip: body.ip } : {}), ...(body.aliases ? { aliases: body.aliases } : {}) });
    },
  }),
  route({
    method: 'POST', path: '/networks/{id}/disconnect', operationId: 'disconnectNetwork', tag: 'networks', access: 'write',
    auth: { role: 'member', project: NETWORK },
    summary: 'Disconnect a container from the network (its interface and lease go; ports published on it too)',
    params: IdParam, body: Type.Object({ container: Ref('Container name, id or id prefix') }, { additionalProperties: false }), response: Network,
    handler: async ({ params, body, services }) => {
      const n = await services.networks.get(params.id);
      return services.networks.disconnect(n.id, await services.containers.get(body.container, { projectId: n.projectId }));
    },
  }),
  route({
    method: 'DELETE', path: '/networks/{id}', operationId: 'removeNetwork', tag: 'networks', access: 'write',
    auth: { role: 'member', project: NETWORK },
    summary: 'Remove a network (refused while containers use it)', params: IdParam, response: Empty,
    handler: async ({ params, services }) => {
      await services.networks.remove(params.id, { canRead: () => true });
      return { status: 204 };
    },
  }),
];
