/**
 * GET /usage: metered usage per project (rolled up the project tree) and per instance
 * (docs/metering.md). Readers of a project see it and its descendants; without ?project= the
 * caller gets every project it can read; system administrators, every project.
 */
import { Type } from '@sinclair/typebox';
import { InvalidArgument } from '../../core/errors.js';
import { subtree, usageReport } from '../../control/metering/usage-report.js';
import { route } from '../route.js';
import { ProjectRef } from '../schemas.js';

const UNITS_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A point in time: ISO 8601, epoch seconds (Docker's --since), or a duration before now ("90m", "24h", "7d"). */
export function parseInstant(value: string, name: string, now = Date.now()): number {
  const relative = /^(\d+(?:\.\d+)?)([smhd])$/.exec(value);
  if (relative) return now - Number(relative[1]) * UNITS_MS[relative[2]!]!;
  if (/^\d+(\.\d+)?$/.test(value)) return Math.round(Number(value) * 1000);
  const at = Date.parse(value);
  if (Number.isNaN(at)) throw new InvalidArgument(`${name} must be an ISO 8601 time, epoch seconds or a duration ago such as 24h, got "${value.slice(0, 64)}"`);
  return at;
}

const Nullable = (t: ReturnType<typeof Type.Number>) => Type.Union([t, Type.Null()]);
const Totals = {
  instanceSeconds: Type.Number(),
  cpuSeconds: Nullable(Type.Number({ description: 'null: nothing in scope had a CPU counter (VMs have none yet)' })),
  memoryGiBHours: Type.Number({ description: 'The memory limit held (or, without a limit, the memory used when sampled) times the time active' }),
  diskGiBHours: Nullable(Type.Number({ description: 'null: no disk size known' })),
  networkRxBytes: Nullable(Type.Number({ description: 'null: not measured (no host reports per-instance network counters yet)' })),
  networkTxBytes: Nullable(Type.Number()),
};
const SizeUsage = Type.Object({ kind: Type.String(), cpus: Type.Number(), memoryBytes: Type.Number(), instanceSeconds: Type.Number() });

export const UsageReportSchema = Type.Object({
  since: Type.Union([Type.String(), Type.Null()], { description: 'The bound applied, rounded down to the hour (records are kept per hour)' }),
  until: Type.Union([Type.String(), Type.Null()]),
  periodSeconds: Type.Integer(),
  projects: Type.Array(Type.Object({
    id: Type.String(), name: Type.String(), parentId: Type.Union([Type.String(), Type.Null()]),
    own: Type.Object(Totals), total: Type.Object(Totals, { description: 'Its own and its descendants\'' }), bySize: Type.Array(SizeUsage),
  })),
  instances: Type.Array(Type.Object({ id: Type.String(), name: Type.String(), projectId: Type.String(), kind: Type.String(), ...Totals, bySize: Type.Array(SizeUsage) })),
  series: Type.Optional(Type.Array(Type.Object({ start: Type.String(), projectId: Type.String(), ...Totals }))),
});

export const usageRoutes = [
  route({
    method: 'GET', path: '/usage', operationId: 'usage', tag: 'usage', access: 'read',
    auth: { role: 'reader', project: 'query-or-all' },
    summary: 'Metered usage: instance-seconds by kind and size, CPU-seconds, memory and disk GiB-hours, per project (rolled up its subtree) and per instance',
    query: Type.Object({
      project: Type.Optional(ProjectRef()),
      since: Type.Optional(Type.String({ description: 'ISO 8601, epoch seconds, or a duration ago (24h)' })),
      until: Type.Optional(Type.String({ description: 'ISO 8601, epoch seconds, or a duration ago' })),
      series: Type.Optional(Type.Boolean({ description: 'Add each project\'s usage per hour' })),
    }),
    response: UsageReportSchema,
    handler: async ({ query, services, auth }) => {
      const now = Date.now();
      const since = query.since === undefined ? undefined : parseInstant(query.since, 'since', now);
      const until = query.until === undefined ? undefined : parseInstant(query.until, 'until', now);
      if (since !== undefined && until !== undefined && until < since) throw new InvalidArgument('until is before since');
      const all = await services.store.projects.list();
      // the named project, else the top-most projects the caller can read (their subtrees are readable too)
      const readable = new Set(all.filter((p) => auth.canRead(p.id)).map((p) => p.id));
      const roots = auth.projectId ? [auth.projectId] : all.filter((p) => readable.has(p.id) && (p.parentId === null || !readable.has(p.parentId))).map((p) => p.id);
      return usageReport(services.store, subtree(all, roots), {
        ...(since !== undefined ? { since } : {}), ...(until !== undefined ? { until } : {}), ...(query.series ? { series: true } : {}),
      });
    },
  }),
];
