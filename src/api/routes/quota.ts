import { Type } from '@sinclair/typebox';
import { NotFound } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
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

function projectId(services: Services, nameOrId: string): string {
  const p = services.store.projects.get(nameOrId) ?? services.store.projects.byName(nameOrId);
  if (!p) throw new NotFound(`no such project: ${nameOrId}`);
  return p.id;
}

export const quotaRoutes = [
  route({
    method: 'GET', path: '/quota/{project}', operationId: 'showQuota', tag: 'quota', access: 'read',
    summary: 'Per resource: hard, used, reserved, allocated, free, lent, borrowed, pool', params: ProjectParam, response: Figures,
    handler: ({ params, services }) => services.quota.show(projectId(services, params.project)) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'PUT', path: '/quota/{project}', operationId: 'setQuota', tag: 'quota', access: 'write',
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
    handler: ({ params, body, services }) => services.quota.setLimits(projectId(services, params.project), body) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'POST', path: '/quota/{project}/explain', operationId: 'explainQuota', tag: 'quota', access: 'read',
    summary: 'Would this request be admitted? Which ledger line decides, which loans and reclaims it needs. Changes nothing.',
    params: ProjectParam, body: Vector, response: Figures,
    handler: ({ params, body, services }) => services.quota.explain(projectId(services, params.project), body) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'GET', path: '/quota-audit', operationId: 'quotaAudit', tag: 'quota', access: 'read',
    summary: 'Every admit, reject, loan, return and reclaim with its reason',
    query: Type.Object({ project: Type.Optional(Type.String()), since: Type.Optional(Type.Integer({ minimum: 0 })) }),
    response: Type.Array(Figures),
    handler: ({ query, services }) =>
      services.quota.audit({
        ...(query.project ? { project: projectId(services, query.project) } : {}),
        ...(query.since !== undefined ? { sinceSeq: query.since } : {}),
      }) as unknown as Record<string, unknown>[],
  }),
];
