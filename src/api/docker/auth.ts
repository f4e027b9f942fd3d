/**
 * `docker login` (POST /auth): the credentials checked against the registry as dockerd checks
 * them, then kept for the request's project (docs/registries.md), so the project's pulls from
 * that registry use them without X-Registry-Auth. `docker logout` is the CLI's alone (it never
 * calls the daemon): `nimbus registry logout` forgets the project's copy.
 */
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import type { DockerRoute } from './server.js';

// the CLI's AuthConfig (types.AuthConfig): fields it sends empty are let through, the others refused below
const DockerAuthConfig = Type.Object({
  username: Type.Optional(Type.String({ maxLength: 256 })),
  password: Type.Optional(Type.String({ maxLength: 16 * 1024 })),
  serveraddress: Type.Optional(Type.String({ maxLength: 300 })),
  email: Type.Optional(Type.String({ maxLength: 256 })),
  auth: Type.Optional(Type.String({ maxLength: 32 * 1024 })),
  identitytoken: Type.Optional(Type.String({ maxLength: 16 * 1024 })),
  registrytoken: Type.Optional(Type.String({ maxLength: 16 * 1024 })),
}, { additionalProperties: true });
const checkAuthConfig = TypeCompiler.Compile(DockerAuthConfig);

/** The body as the schema says, or a 400 naming the first field that is wrong (never echoing a value). */
export function authConfig(raw: unknown): { server: string; username: string; password: string } {
  if (!checkAuthConfig.Check(raw)) {
    const first = [...checkAuthConfig.Errors(raw)][0];
    throw new InvalidArgument(`invalid request body: ${first ? `${first.path || '/'} ${first.message}` : 'not an object'}`);
  }
  const body = raw as Static<typeof DockerAuthConfig>;
  if (body.identitytoken || body.registrytoken) throw new InvalidArgument('registry identity tokens are not supported yet: log in with a user name and password');
  if (!body.username || !body.password) throw new InvalidArgument('a user name and a password are required');
  return { server: body.serveraddress || 'https://index.docker.io/v1/', username: body.username, password: body.password };
}

export const authRoutes: DockerRoute[] = [
  {
    method: 'POST', pattern: /^\/auth$/, name: 'registry login', access: 'member',
    handler: async ({ services, project, auth, body }) => {
      if (!services.registries) throw new Unavailable('registry credentials are not served by this process');
      await services.registries.login(project, authConfig(await body()), auth.principal?.name ?? 'local-admin');
      // no identity token: the CLI keeps the password it sent, as with a registry that issues none
      return { json: { Status: 'Login Succeeded', IdentityToken: '' } };
    },
  },
];
