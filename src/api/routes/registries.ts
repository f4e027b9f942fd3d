/**
 * Registry credentials per project (docs/registries.md): log in (checked against the registry,
 * then kept with the password sealed), list (server and user name only), log out.
 */
import { Type } from '@sinclair/typebox';
import { Unavailable } from '../../core/errors.js';
import { route } from '../route.js';
import { Empty } from '../schemas.js';
import type { Services } from '../../control/services.js';

const RegistryLogin = Type.Object({
  server: Type.String(), username: Type.String(), createdAt: Type.String(), updatedAt: Type.String(),
  updatedBy: Type.String({ description: 'who stored them last' }),
}, { $id: 'RegistryLogin', description: 'A project\'s credentials for a registry, without the password' });

const Server = Type.String({ minLength: 1, maxLength: 300, description: 'HOST[:PORT] (a URL\'s scheme and path are dropped; Docker Hub is docker.io)' });

function registries(s: Services) {
  if (!s.registries) throw new Unavailable('registry credentials are not served by this process');
  return s.registries;
}

export const registryRoutes = [
  route({
    method: 'GET', path: '/registries', operationId: 'listRegistryLogins', tag: 'registries', access: 'read',
    auth: { role: 'reader', project: 'query' },
    summary: 'The registries the project holds credentials for (server and user name; never the password)',
    response: Type.Array(RegistryLogin),
    handler: ({ services, auth }) => registries(services).list(auth.project()),
  }),
  route({
    method: 'POST', path: '/registries', operationId: 'loginRegistry', tag: 'registries', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Check credentials against a registry (GET /v2/ with its Basic or Bearer challenge answered) and keep them for the project\'s pulls from it (401 when the registry refuses them)',
    body: Type.Object({
      server: Server,
      username: Type.String({ minLength: 1, maxLength: 256 }),
      // registry tokens (ECR's, say) run to several KiB
      password: Type.String({ minLength: 1, maxLength: 16 * 1024 }),
    }, { additionalProperties: false }),
    response: RegistryLogin,
    handler: ({ body, services, auth }) => registries(services).login(auth.project(), body, auth.principal?.name ?? 'local-admin'),
  }),
  route({
    method: 'DELETE', path: '/registries/{server}', operationId: 'logoutRegistry', tag: 'registries', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Forget the project\'s credentials for a registry (404 when it holds none)',
    params: Type.Object({ server: Server }), response: Empty, status: 204,
    handler: async ({ params, services, auth }) => {
      await registries(services).logout(auth.project(), params.server, auth.principal?.name ?? 'local-admin');
      return { status: 204 };
    },
  }),
];
