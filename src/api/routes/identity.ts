import { Type } from '@sinclair/typebox';
import { callerAddress } from '../caller-address.js';
import { route } from '../route.js';
import { Empty, Name as NameField, ProjectRef } from '../schemas.js';
import { MAX_TTL_SECONDS } from '../../control/identity/identity-service.js';

const User = Type.Object({
  id: Type.String(), name: Type.String(), systemAdmin: Type.Boolean(),
  defaultProject: Type.Union([Type.String(), Type.Null()]), createdAt: Type.String(),
}, { $id: 'User' });
const ApiKey = Type.Object({ name: Type.String(), createdAt: Type.String(), expiresAt: Type.Union([Type.String(), Type.Null()]) });
const Name = Type.Object({ name: NameField() });
/** Ten years: an expiry further out is "never" (omit it); Dates past year 275760 would not even exist. */
const MAX_API_KEY_SECONDS = 10 * 366 * 24 * 3600;
const Password = (minLength: number) => Type.String({ minLength, maxLength: 1024 });

export const identityRoutes = [
  route({
    method: 'POST', path: '/auth/login', operationId: 'login', tag: 'identity', access: 'public', auth: { public: true },
    summary: 'Exchange a user name and password for an expiring session token (shown once)', status: 201,
    body: Type.Object({
      user: NameField(),
      password: Password(0),
      ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TTL_SECONDS, description: 'Default 12 hours' })),
    }, { additionalProperties: false }),
    response: Type.Object({ token: Type.String(), expiresAt: Type.String(), user: User }),
    handler: async ({ body, services, req }) => ({ status: 201, body: await services.identity.login(body.user, body.password, body.ttlSeconds, callerAddress(req, services.options?.trustedProxies ?? [])) }),
  }),
  route({
    method: 'POST', path: '/auth/logout', operationId: 'logout', tag: 'identity', access: 'write', auth: { authenticated: true },
    summary: 'Revoke the session token this request carries', response: Empty,
    handler: async ({ services, auth }) => {
      await services.identity.logout(auth.principal!);
      return { status: 204 };
    },
  }),
  route({
    method: 'GET', path: '/auth/whoami', operationId: 'whoami', tag: 'identity', access: 'read', auth: { authenticated: true },
    summary: 'The caller: user, how it authenticated, default project and direct role grants',
    response: Type.Object({
      user: Type.String(), systemAdmin: Type.Boolean(), via: Type.String(), defaultProject: Type.Union([Type.String(), Type.Null()]),
      roles: Type.Array(Type.Object({ project: Type.String(), role: Type.String() })),
    }),
    handler: async ({ services, auth }) => {
      const p = auth.principal!;
      const grants = p.userId ? await services.store.roles.list({ userId: p.userId }) : [];
      return {
        user: p.name, systemAdmin: p.systemAdmin, via: p.via,
        defaultProject: p.defaultProjectId ? await services.projects.path(p.defaultProjectId) : null,
        roles: await Promise.all(grants.map(async (g) => ({ project: await services.projects.path(g.projectId), role: g.role }))),
      };
    },
  }),
  route({
    method: 'POST', path: '/users', operationId: 'createUser', tag: 'identity', access: 'write', auth: { global: 'admin' },
    summary: 'Create a user', status: 201,
    body: Type.Object({
      name: NameField(), password: Password(8),
      systemAdmin: Type.Boolean({ default: false }), defaultProject: Type.Optional(ProjectRef()),
    }, { additionalProperties: false }),
    response: User,
    handler: async ({ body, services }) => ({
      status: 201,
      body: await services.identity.createUser(body.name, body.password, {
        systemAdmin: body.systemAdmin,
        ...(body.defaultProject ? { defaultProjectId: (await services.projects.resolve(body.defaultProject)).id } : {}),
      }),
    }),
  }),
  route({
    method: 'GET', path: '/users', operationId: 'listUsers', tag: 'identity', access: 'read', auth: { global: 'admin' },
    summary: 'List users', response: Type.Array(User),
    handler: ({ services }) => services.identity.listUsers(),
  }),
  route({
    method: 'DELETE', path: '/users/{name}', operationId: 'removeUser', tag: 'identity', access: 'write', auth: { global: 'admin' },
    summary: 'Remove a user with its sessions, API keys and role grants', params: Name, response: Empty,
    handler: async ({ params, services }) => {
      await services.identity.removeUser(params.name);
      return { status: 204 };
    },
  }),
  route({
    method: 'POST', path: '/apikeys', operationId: 'createApiKey', tag: 'identity', access: 'write', auth: { authenticated: true },
    summary: "Create an API key for the caller (the key is shown only in this response)", status: 201,
    body: Type.Object({ name: NameField(), expiresInSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_API_KEY_SECONDS })) }, { additionalProperties: false }),
    response: Type.Object({ name: Type.String(), key: Type.String(), createdAt: Type.String(), expiresAt: Type.Union([Type.String(), Type.Null()]) }),
    handler: async ({ body, services, auth }) => ({ status: 201, body: await services.identity.createApiKey(auth.principal!, body.name, body.expiresInSeconds) }),
  }),
  route({
    method: 'GET', path: '/apikeys', operationId: 'listApiKeys', tag: 'identity', access: 'read', auth: { authenticated: true },
    summary: "The caller's API keys (names and dates, never the keys)", response: Type.Array(ApiKey),
    handler: ({ services, auth }) => services.identity.listApiKeys(auth.principal!),
  }),
  route({
    method: 'DELETE', path: '/apikeys/{name}', operationId: 'removeApiKey', tag: 'identity', access: 'write', auth: { authenticated: true },
    summary: 'Revoke one of the caller\'s API keys', params: Name, response: Empty,
    handler: async ({ params, services, auth }) => {
      await services.identity.removeApiKey(auth.principal!, params.name);
      return { status: 204 };
    },
  }),
];
