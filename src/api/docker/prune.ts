/**
 * `docker container prune`, `docker image prune [-a]` and `docker network prune` in the
 * request's project (volume prune is with the volumes). Filters `until` (what was made before a
 * time) and `label` / `label!` (containers and networks), as dockerd takes them; any other
 * filter is a 400 rather than a prune of more than was asked.
 */
import { InvalidArgument, NimbusError } from '../../core/errors.js';
import type { DockerRoute } from './server.js';
import { familiarName, parseFilters } from './mapping.js';
import { eventTime } from './observe.js';
import { IMAGE_PRUNE_FILTERS, checkImageFilters, danglingWanted, imageCreated } from './image-filters.js';

/** Those `until` and `label` filters as a test of (createdAt, labels); other keys refused. */
export function pruneFilter(raw: string | null, allowed: readonly string[]): (createdAt: string, labels: Record<string, string>) => boolean {
  const filters = parseFilters(raw ?? undefined);
  for (const k of filters.keys()) if (!allowed.includes(k)) throw new InvalidArgument(`invalid filter '${k}'`);
  const until = (filters.get('until') ?? []).map((u) => (/^\d+(\.\d+)?[smh]$/.test(u) ? Date.now() - duration(u) : eventTime(u, 'until')!));
  const labelTest = (negate: boolean) => (labels: Record<string, string>) => (l: string) => {
    const [k, v] = l.split('=', 2) as [string, string | undefined];
    const has = v === undefined ? k in labels : labels[k] === v;
    return negate ? !has : has;
  };
  return (createdAt, labels) => {
    const made = Date.parse(createdAt);
    if (until.some((u) => made >= u)) return false;
    if (!(filters.get('label') ?? []).every(labelTest(false)(labels))) return false;
    return (filters.get('label!') ?? []).every(labelTest(true)(labels));
  };
}

/** "10m", "1.5h", "30s" (the CLI sends Go durations for until). */
function duration(d: string): number {
  const n = Number(d.slice(0, -1));
  return n * ({ s: 1_000, m: 60_000, h: 3_600_000 } as const)[d.slice(-1) as 's' | 'm' | 'h'];
}

export const pruneRoutes: DockerRoute[] = [
  {
    method: 'POST', pattern: /^\/containers\/prune$/, name: 'container prune', access: 'member',
    handler: async ({ services, project, query }) => {
      const pass = pruneFilter(query.get('filters'), ['until', 'label', 'label!']);
      const deleted: string[] = [];
      for (const c of await services.containers.list({ all: true, projectId: project })) {
        if (c.status !== 'exited' && c.status !== 'created') continue;
        if (!pass(c.createdAt, c.config.labels ?? {})) continue;
        // one that started (or went) meanwhile is left as it is
        try {
          await services.containers.remove(c.id, false);
          deleted.push(c.id);
        } catch (e) {
          if (!(e instanceof NimbusError) || (e.code !== 'Conflict' && e.code !== 'NotFound')) throw e;
        }
      }
      return { json: { ContainersDeleted: deleted, SpaceReclaimed: 0 } };
    },
  },
  {
    method: 'POST', pattern: /^\/images\/prune$/, name: 'image prune', access: 'member',
    handler: async ({ services, project, query }) => {
      const filters = parseFilters(query.get('filters') ?? undefined);
      checkImageFilters(filters, IMAGE_PRUNE_FILTERS);
      // until, label and label! over the image's creation time and its config's labels
      const pass = pruneFilter(query.get('filters'), IMAGE_PRUNE_FILTERS);
      // dangling=false is -a: every image no container uses, tagged or not
      const all = danglingWanted(filters) === false;
      const tagsOf = new Map((await services.images.list(project)).map((i) => [i.digest, i.tags] as const));
      const { deleted, bytesFreed } = await services.images.prune(all, project, (img) => pass(new Date(imageCreated(img)).toISOString(), img.config.config?.Labels ?? {}));
      // as dockerd: each tag untagged, then the image deleted (its content may stay for other projects: SpaceReclaimed says)
      const ImagesDeleted = deleted.flatMap((d) => [...(tagsOf.get(d) ?? []).map((t) => ({ Untagged: familiarName(t) })), { Deleted: d }]);
      return { json: { ImagesDeleted, SpaceReclaimed: bytesFreed } };
    },
  },
  {
    method: 'POST', pattern: /^\/networks\/prune$/, name: 'network prune', access: 'member',
    handler: async ({ services, project, query }) => {
      const pass = pruneFilter(query.get('filters'), ['until', 'label', 'label!']);
      const deleted: string[] = [];
      for (const n of await services.networks.list(project)) {
        // the project's own bridge is made again on first use: dockerd never prunes its predefined networks either
        if (n.builtin || !pass(n.createdAt, n.labels)) continue;
        const view = await services.networks.view(n);
        if (view.containers.length > 0) continue;
        try {
          await services.networks.remove(n.id, { projectId: project });
          deleted.push(n.name);
        } catch (e) {
          if (!(e instanceof NimbusError) || (e.code !== 'Conflict' && e.code !== 'NotFound')) throw e;
        }
      }
      return { json: { NetworksDeleted: deleted } };
    },
  },
];
