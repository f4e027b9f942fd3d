import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Conflict } from '../../core/errors.js';
import { Empty } from '../schemas.js';

const Agent = Type.Object(
  {
    name: Type.String(),
    local: Type.Boolean({ description: 'The embedded agent, in the control plane\'s process' }),
    url: Type.Optional(Type.String({ description: 'How the control plane reaches it (registered agents)' })),
    registeredAt: Type.Optional(Type.String()),
    state: Type.Union([Type.Literal('up'), Type.Literal('down')]),
    reason: Type.Optional(Type.String({ description: 'Why it is down' })),
    hostname: Type.Optional(Type.String()),
    cpus: Type.Optional(Type.Integer()),
    memoryBytes: Type.Optional(Type.Integer()),
    accelerator: Type.Optional(Type.String({ description: 'What its VMs run under (once decided)' })),
    vms: Type.Integer({ description: 'VMs recorded on it (for a non-administrator: those of the projects it can read)' }),
  },
  { $id: 'Agent' },
);

export const agentRoutes = [
  route({
    method: 'GET', path: '/agents', operationId: 'listAgents', tag: 'agents', access: 'read', auth: { authenticated: true },
    summary: 'The agents (hosts) of this control plane: the embedded one and the registered ones, with their state now',
    response: Type.Array(Agent),
    // a tenant sees its own VMs on each host, never the host-wide count
    handler: ({ services, auth }) =>
      services.agents.list((name) => (auth.principal?.systemAdmin ? services.vms.countOn(name) : services.vms.list({ all: true }).filter((v) => v.agent === name && auth.canRead(v.projectId)).length)),
  }),
  route({
    method: 'POST', path: '/agents', operationId: 'registerAgent', tag: 'agents', access: 'write', auth: { global: 'admin' },
    summary: 'Register an agent (nimbusd agent does this on every start); it must answer at the URL under its name and token first',
    status: 201,
    body: Type.Object({
      name: Type.String({ minLength: 1, maxLength: 128 }),
      url: Type.String({ minLength: 1, description: 'http://HOST:PORT or unix:/PATH' }),
      token: Type.String({ minLength: 16, description: 'The agent\'s protocol secret (stored; never served back)' }),
    }, { additionalProperties: false }),
    response: Type.Object({ name: Type.String(), url: Type.String(), registeredAt: Type.String() }),
    handler: async ({ body, services }) => {
      const rec = await services.agents.register(body);
      return { status: 201, body: { name: rec.name, url: rec.url, registeredAt: rec.registeredAt } };
    },
  }),
  route({
    method: 'DELETE', path: '/agents/{name}', operationId: 'removeAgent', tag: 'agents', access: 'write', auth: { global: 'admin' },
    summary: 'Forget a registered agent (refused while VMs are recorded on it)',
    params: Type.Object({ name: Type.String() }), response: Empty,
    handler: async ({ params, services }) => {
      const n = services.vms.countOn(params.name);
      if (n) throw new Conflict(`agent ${params.name} has ${n} VM(s); migrate or remove them first`);
      await services.agents.remove(params.name);
      return { status: 204 };
    },
  }),
];
