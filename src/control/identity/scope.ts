/**
 * Where a name, tag or id prefix is looked up. Names are unique per project only, so
 * a lookup is always scoped: to one project, or to the projects a caller can read.
 * Things outside the scope do not exist for the lookup (they neither match nor make
 * a prefix ambiguous), so nothing of another tenant can be probed through names.
 */
import { InvalidArgument, NotFound } from '../../core/errors.js';

export type ProjectScope =
  /** Exactly this project (`?project=` was given, or the lookup is for a project's own resource). */
  | { projectId: string }
  /** Every project the caller can read; on a tie, `preferProjectId` (the caller's default project) wins. */
  | { canRead: (projectId: string) => boolean; preferProjectId?: string | null };

export function inScope(scope: ProjectScope, projectId: string): boolean {
  return 'projectId' in scope ? scope.projectId === projectId : scope.canRead(projectId);
}

/**
 * The one candidate a lookup in `scope` means. `key` says which candidates are the same
 * thing (a container's id; an image's project and digest). Several in different projects:
 * the preferred project's, else InvalidArgument asking for --project.
 */
export function pickInScope<T extends { projectId: string }>(
  candidates: readonly T[],
  scope: ProjectScope,
  key: (c: T) => string,
  what: string,
  ref: string,
): T {
  const seen = new Map<string, T>();
  for (const c of candidates) if (inScope(scope, c.projectId) && !seen.has(key(c))) seen.set(key(c), c);
  const found = [...seen.values()];
  if (found.length === 1) return found[0]!;
  if (found.length === 0) throw new NotFound(`no such ${what}: ${ref}`);
  const prefer = 'preferProjectId' in scope ? scope.preferProjectId : undefined;
  const preferred = prefer ? found.filter((c) => c.projectId === prefer) : [];
  if (preferred.length === 1) return preferred[0]!;
  const projects = new Set(found.map((c) => c.projectId));
  if (projects.size > 1 && preferred.length === 0) {
    throw new InvalidArgument(`"${ref}" names ${found.length} ${what}s in different projects you can read; name the project (--project P)`);
  }
  throw new InvalidArgument(`${what} "${ref}" is ambiguous`);
}
