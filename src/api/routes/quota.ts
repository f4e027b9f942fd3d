import { Type, type Static } from '@sinclair/typebox';
import { route, type RequestAuth } from '../route.js';
import { paged, PageQuery } from '../paging.js';
import { InvalidArgument } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
import { MAX_MEMORY_BYTES, MAX_QUOTA_VALUE, MAX_STORAGE_BYTES, MAX_TIMER_MS } from '../../core/limits.js';
import { Name, ProjectRef } from '../schemas.js';

const Amount = (description?: string) => Type.Integer({ minimum: 0, maximum: MAX_QUOTA_VALUE, ...(description ? { description } : {}) });

const Vector = Type.Object(
  {
    instances: Type.Optional(Amount()),
    cpus: Type.Optional(Amount()),
    memory: Type.Optional(Amount('MiB')),
    networks: Type.Optional(Amount()),
    volumes: Type.Optional(Amount()),
    disk: Type.Optional(Amount('MiB of named volumes')),
  },
  { additionalProperties: false },
);
const ProjectParam = Type.Object({ project: ProjectRef() });

/** The audit the caller asked for: of one project, or of every project it may read (the newest of those, not everyone's filtered). */
function auditScope(auth: RequestAuth): { project?: string; projects?: string[] } {
  if (auth.projectId) return { project: auth.projectId };
  const projects = auth.readableProjects();
  return projects === undefined ? {} : { projects };
}
const Figures = Type.Record(Type.String(), Type.Unknown());

/** The project named in the path (id, path or name), resolved and checked by the edge. */
const PROJECT = { param: 'project', kind: 'project' };

const PoolParams = Type.Object({ project: ProjectParam.properties.project, pool: Name({ description: 'Pool name (unique per owner project)' }) });
const Weights = Type.Record(Type.String({ pattern: '^[^\\x00-\\x1f\\x7f-\\x9f]{1,1024}$' }), Type.Number({ exclusiveMinimum: 0, maximum: 1_000_000 }), { maxProperties: 256, description: 'Direct child (id, path or name) → weight (more than 0, at most 1,000,000)' });

/** Pool members are named by the caller; only the owner's direct children can be members (the ledger checks). */
async function memberIds(services: Services, owner: string, weights: Record<string, number>): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const [ref, w] of Object.entries(weights)) {
    const child = (await services.store.projects.get(ref)) ?? (await services.store.projects.child(owner, ref.split('/').pop() ?? ref));
    if (!child || child.parentId !== owner) throw new InvalidArgument(`pool member ${ref} is not a direct child of ${await services.projects.path(owner)}`);
    out[child.id] = w;
  }
  return out;
}

/**
 * A project's ledger view, and what a container created without a memory size is given there now
 * (MiB; 0: none, best effort) and what its writable layer may hold (MiB; 0: unbounded).
 */
function quotaView(services: Services, projectId: string): Record<string, unknown> {
  const bytes = services.quota.unsizedContainerMemory(projectId, services.options?.containerMemoryDefaultBytes ?? 0) ?? 0;
  const layer = services.quota.unsizedContainerStorage(projectId, services.options?.containerStorageDefaultBytes ?? 0) ?? 0;
  return { ...services.quota.show(projectId), unsizedContainerMemory: bytes / 2 ** 20, unsizedContainerStorage: layer / 2 ** 20 };
}

export const quotaRoutes = [
  route({
    method: 'GET', path: '/quota/{project}', operationId: 'showQuota', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'Per resource: hard, used, reserved, allocated, free, lent, borrowed, pool', params: ProjectParam, response: Figures,
    handler: ({ services, auth }) => quotaView(services, auth.project()),
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
        gracePeriodMs: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_TIMER_MS, description: 'At most 2^31-1 ms (about 24.8 days)' })),
        containerMemoryDefault: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: MAX_MEMORY_BYTES / 2 ** 20 }), Type.Null()], {
          description: "MiB a container created without a memory size is given here while the project's memory is limited (0: none, it runs best effort; null: its parent's, up to the daemon's default)",
        })),
        containerStorageDefault: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: MAX_STORAGE_BYTES / 2 ** 20 }), Type.Null()], {
          description: "MiB the writable layer of a container created without a storage size may hold here while the project's disk is limited, charged to disk (0: none, unbounded; at least 16 otherwise; null: its parent's, up to the daemon's default)",
        })),
      },
      { additionalProperties: false },
    ),
    response: Figures,
    handler: async ({ body, services, auth }) => {
      await services.quota.setLimits(auth.project(), body);
      return quotaView(services, auth.project());
    },
  }),
  route({
    method: 'POST', path: '/quota/{project}/explain', operationId: 'explainQuota', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'Would this request be admitted? Which ledger line decides, which loans and reclaims it needs. Changes nothing.',
    params: ProjectParam, body: Vector, response: Figures,
    handler: ({ body, services, auth }) => explainWithPaths(services, auth, body),
  }),
  route({
    method: 'GET', path: '/quota-audit', operationId: 'quotaAudit', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: 'query-or-all' },
    summary: 'Every admit, reject, loan, return and reclaim with its reason; paged with limit and after (by seq), the next page in the Link header',
    query: Type.Object({ project: Type.Optional(ProjectRef()), since: Type.Optional(Type.Integer({ minimum: 0 })), ...PageQuery }),
    response: Type.Array(Figures),
    handler: async ({ query, services, auth, req }) => paged(
      (await services.quota.audit({ ...auditScope(auth), ...(query.since !== undefined ? { sinceSeq: query.since } : {}) })).filter((e) => auth.canRead(e.project)),
      (e) => [e.seq], query, req, (e) => e as unknown as Record<string, unknown>,
    ),
  }),
  route({
    method: 'POST', path: '/quota/{project}/pools', operationId: 'createQuotaPool', tag: 'quota', access: 'write',
    // Sharing a project's capacity among its children is that project's admins' business, like their hard limits.
    auth: { role: 'admin', project: PROJECT },
    summary: "Set part of a project's free capacity aside as a pool its chosen children share by weight", status: 201,
    params: ProjectParam,
    body: Type.Object({ name: Name(), capacity: Vector, weights: Weights }, { additionalProperties: false }),
    response: Figures,
    handler: async ({ body, services, auth }) => ({
      status: 201,
      body: (await services.quota.createPool(auth.project(), body.name, body.capacity, await memberIds(services, auth.project(), body.weights))) as unknown as Record<string, unknown>,
    }),
  }),
  route({
    method: 'PUT', path: '/quota/{project}/pools/{pool}', operationId: 'updateQuotaPool', tag: 'quota', access: 'write',
    auth: { role: 'admin', project: PROJECT },
    summary: "Change a pool's capacity or its members' weights", params: PoolParams,
    body: Type.Object({ capacity: Type.Optional(Vector), weights: Type.Optional(Weights) }, { additionalProperties: false }),
    response: Figures,
    handler: async ({ params, body, services, auth }) =>
      (await services.quota.updatePool(auth.project(), params.pool, {
        ...(body.capacity ? { capacity: body.capacity } : {}),
        ...(body.weights ? { weights: await memberIds(services, auth.project(), body.weights) } : {}),
      })) as unknown as Record<string, unknown>,
  }),
  route({
    method: 'GET', path: '/quota/{project}/loans', operationId: 'listQuotaLoans', tag: 'quota', access: 'read',
    auth: { role: 'reader', project: PROJECT },
    summary: 'Active loans the project made to or took from its siblings (lender, borrower, resource, amount, instance, time)',
    params: ProjectParam, response: Type.Array(Figures),
    handler: async ({ services, auth }) =>
      Promise.all(services.quota.loans(auth.project()).map(async (l) => ({ ...l, lenderPath: await services.projects.path(l.lender), borrowerPath: await services.projects.path(l.borrower) }))),
  }),
];

/**
 * The ledger's decision with project paths beside its ids (users think in paths), and the names of
 * victims the caller may read (others stay bare ids, as in the loans listing).
 */
async function explainWithPaths(services: Services, auth: RequestAuth, body: Static<typeof Vector>): Promise<Record<string, unknown>> {
  const d = services.quota.explain(auth.project(), body);
  // The ledger speaks in project ids; its reason reads better with paths.
  const ids = new Set([d.project, d.decidedBy.project, ...d.loans.flatMap((l) => [l.lender, l.borrower]), ...(d.reclaim?.victims.map((v) => v.project) ?? []),
    ...d.poolCharges.map((c) => c.pool.slice(0, Math.max(0, c.pool.indexOf('/'))))]);
  ids.delete('');
  const paths = new Map(await Promise.all([...ids].map(async (id) => [id, (await services.projects.path(id)) || id] as const)));
  const path = (id: string) => paths.get(id) ?? id;
  const pool = (id: string) => {
    const i = id.indexOf('/');
    return i < 0 ? id : `${path(id.slice(0, i))}:${id.slice(i + 1)}`;
  };
  const victimNames = new Map<string, string>();
  for (const v of d.reclaim?.victims ?? []) {
    const name = auth.canRead(v.project) ? (await services.store.containers.get(v.instance))?.name : undefined;
    if (name !== undefined) victimNames.set(v.instance, name);
  }
  let reason = d.reason;
  for (const id of ids) reason = reason.split(id).join(path(id));
  return {
    ...d,
    reason,
    decidedBy: { ...d.decidedBy, projectPath: path(d.decidedBy.project) },
    loans: d.loans.map((l) => ({ ...l, lenderPath: path(l.lender), borrowerPath: path(l.borrower) })),
    poolCharges: d.poolCharges.map((c) => ({ ...c, poolName: pool(c.pool) })),
    ...(d.reclaim
      ? {
          reclaim: {
            ...d.reclaim,
            victims: d.reclaim.victims.map((v) => {
              const name = victimNames.get(v.instance);
              return { ...v, projectPath: path(v.project), ...(name !== undefined ? { name } : {}) };
            }),
          },
        }
      : {}),
  };
}
