import { Type } from '@sinclair/typebox';
import { route } from '../route.js';

const Vector = Type.Object(
  {
    instances: Type.Optional(Type.Integer({ minimum: 0 })),
    cpus: Type.Optional(Type.Integer({ minimum: 0 })),
    memory: Type.Optional(Type.Integer({ minimum: 0, description: 'MiB' })),
    networks: Type.Optional(Type.Integer({ minimum: 0 })),
    volumes: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
const ProjectParam = Type.Object({ project: Type.String({ minLength: 1, description: 'Project name or id' }) });
const Figures = Type.Record(Type.String(), Type.Unknown());

/** The project named in the path (id, path or name), resolved and checked by the edge. */
const PROJECT = { param: 'project', kind: 'project' };

export const quotaRoutes = [
  route({
    method: 'GET', path: '/quota/{project}', operationId: 'showQuota', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'Per resource: hard, used, reserved, allocated, free, lent, borrowed, pool', params: ProjectParam, response: Figures,
    handler: ({ services, auth }) => services.quota.show(auth.project()) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'PUT', path: '/quota/{project}', operationId: 'setQuota', tag: 'quota', access: 'write',
    // A project's limits are its parent's to set (a root's: the system's), never its own admins'.
    auth: { role: 'admin', project: PROJECT, on: 'parent' },
    summary: "Change a project's limits (a child's hard limit only within its parent's free)", params: ProjectParam,
    body: Type.Object(
      {
        hard: Type.Optional(Vector),
        reserved: Type.Optional(Vector),
        lendingLimit: Type.Optional(Vector),
        borrowingLimit: Type.Optional(Vector),
        gracePeriodMs: Type.Optional(Type.Integer({ minimum: 0 })),
      },
      { additionalProperties: false },
    ),
    response: Figures,
    handler: ({ body, services, auth }) => services.quota.setLimits(auth.project(), body) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'POST', path: '/quota/{project}/explain', operationId: 'explainQuota', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'Would this request be admitted? Which ledger line decides, which loans and reclaims it needs. Changes nothing.',
    params: ProjectParam, body: Vector, response: Figures,
    handler: ({ body, services, auth }) => services.quota.explain(auth.project(), body) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'GET', path: '/quota-audit', operationId: 'quotaAudit', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: 'query-or-all' },
    summary: 'Every admit, reject, loan, return and reclaim with its reason',
    query: Type.Object({ project: Type.Optional(Type.String()), since: Type.Optional(Type.Integer({ minimum: 0 })) }),
    response: Type.Array(Figures),
    handler: ({ query, services, auth }) =>
      services.quota
        .audit({ ...(auth.projectId ? { project: auth.projectId } : {}), ...(query.since !== undefined ? { sinceSeq: query.since } : {}) })
        .filter((e) => auth.canRead(e.project)) as unknown as Record<string, unknown>[],
  }),
];
