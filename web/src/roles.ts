import type { Whoami } from './api.js';

const RANK: Record<string, number> = { reader: 1, member: 2, admin: 3 };

/**
 * The caller's role on a project: its own grant or the nearest ancestor's (roles are inherited
 * down the tree). Only used to hide buttons; the server decides every request.
 */
export function roleOn(me: Whoami, projectPath: string): string | undefined {
  if (me.systemAdmin) return 'admin';
  let best: string | undefined;
  for (const g of me.roles) {
    if (g.project === projectPath || projectPath.startsWith(`${g.project}/`)) {
      if (!best || (RANK[g.role] ?? 0) > (RANK[best] ?? 0)) best = g.role;
    }
  }
  return best;
}

export const canWrite = (role: string | undefined) => (RANK[role ?? ''] ?? 0) >= RANK.member!;
