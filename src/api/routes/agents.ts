import { Type } from '@sinclair/typebox';
import { callerAddress } from '../caller-address.js';
import { route } from '../route.js';
import { Unauthenticated } from '../../core/errors.js';
import { Empty } from '../schemas.js';
import { MAX_JOIN_TOKEN_TTL_MS } from '../../control/agents/join-tokens.js';
import { Host, hostCounts, hostViewer } from './hosts.js';
import { forgetHost } from '../../control/compute/host-fence.js';

const Protocol = Type.Object(
  { min: Type.Integer({ minimum: 1, maximum: 1_000_000 }), max: Type.Integer({ minimum: 1, maximum: 1_000_000 }) },
  { description: 'The agent protocol versions the agent speaks (both ends included); absent: protocol 1, which is refused' },
);
const Registration = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 128 }),
  url: Type.String({ minLength: 1, description: 'https://HOST:PORT (TCP agents, mutual TLS) or unix:/PATH' }),
  token: Type.String({ minLength: 16, description: 'The agent\'s protocol secret (stored; never served back)' }),
  protocol: Type.Optional(Protocol),
}, { additionalProperties: false });
const Registered = Type.Object({ name: Type.String(), url: Type.String(), registeredAt: Type.String() });
const Pem = (description: string) => Type.String({ minLength: 1, maxLength: 16_384, 'x-text': 'multiline', description });

export const agentRoutes = [
  route({
    method: 'GET', path: '/agents', operationId: 'listAgents', tag: 'agents', access: 'read', auth: { authenticated: true },
    summary: 'The agents (hosts) of this control plane: the embedded one and the registered ones, with their state now (the same list as GET /hosts)',
    response: Type.Array(Host),
    // a tenant sees its own instances on each host, never the host-wide count
    handler: async ({ services, auth }) => services.agents.list(await hostCounts(services, auth), hostViewer(auth)),
  }),
  route({
    method: 'POST', path: '/agents', operationId: 'registerAgent', tag: 'agents', access: 'write', auth: { global: 'admin' },
    summary: 'Register an agent (nimbusd agent does this on every start); it must answer at the URL under its name and token first',
    status: 201,
    body: Registration,
    response: Registered,
    handler: async ({ body, services }) => {
      const rec = await services.agents.register(body);
      return { status: 201, body: { name: rec.name, url: rec.url, registeredAt: rec.registeredAt } };
    },
  }),
  route({
    method: 'POST', path: '/agents/join-tokens', operationId: 'createAgentJoinToken', tag: 'agents', access: 'write', auth: { global: 'admin' },
    summary: 'A one-time, short-lived token a new TCP agent joins with (nimbusd agent --join-token): shown once, only its hash is kept',
    status: 201,
    body: Type.Object({
      ttlSeconds: Type.Optional(Type.Integer({ minimum: 10, maximum: MAX_JOIN_TOKEN_TTL_MS / 1000, description: 'How long it can be redeemed (default 600)' })),
    }, { additionalProperties: false }),
    response: Type.Object({ token: Type.String(), id: Type.String(), expiresAt: Type.String() }),
    handler: async ({ body, services }) => ({
      status: 201,
      body: await services.agents.issueJoinToken(body.ttlSeconds !== undefined ? { ttlMs: body.ttlSeconds * 1000 } : {}),
    }),
  }),
  route({
    method: 'POST', path: '/agents/join', operationId: 'joinAgent', tag: 'agents', access: 'write', auth: { public: true },
    summary: 'An agent redeems a join token (its only credential): its CSR is signed by the agent CA for its name; the token is burned',
    body: Type.Object({
      joinToken: Type.String({ minLength: 1, maxLength: 256 }),
      name: Type.String({ minLength: 1, maxLength: 64 }),
      csr: Pem('PEM certificate signing request for the agent\'s own key (its subject is ignored)'),
      protocol: Type.Optional(Protocol),
    }, { additionalProperties: false }),
    response: Type.Object({ certificate: Type.String({ description: 'PEM, the agent\'s server certificate' }), caCertificate: Type.String({ description: 'PEM, the agent CA' }) }),
    handler: async ({ body, services }) => services.agents.join(body),
  }),
  route({
    method: 'POST', path: '/agents/tls', operationId: 'registerTlsAgent', tag: 'agents', access: 'write', auth: { public: true },
    summary: 'Register (again) an agent holding a certificate from the agent CA: no credential, the control plane reaches it over mutual TLS and its certificate must name it',
    status: 201,
    body: Registration,
    response: Registered,
    handler: async ({ body, services, req }) => {
      // the proof is the handshake: only the holder of the named agent's key can answer at the URL
      if (!body.url.startsWith('https://')) throw new Unauthenticated('only https:// agents register without a credential (use POST /agents)');
      const rec = await services.agents.registerOverTls(body, callerAddress(req, services.options?.trustedProxies ?? []));
      return { status: 201, body: { name: rec.name, url: rec.url, registeredAt: rec.registeredAt } };
    },
  }),
  route({
    method: 'DELETE', path: '/agents/{name}', operationId: 'removeAgent', tag: 'agents', access: 'write', auth: { global: 'admin' },
    summary: 'Forget a registered agent (refused while containers or VMs are recorded on it; copies of instances recorded elsewhere are removed from it first; as DELETE /hosts/{name})',
    params: Type.Object({ name: Type.String() }), response: Empty,
    handler: async ({ params, services }) => {
      await forgetHost(services, params.name);
      return { status: 204 };
    },
  }),
];
