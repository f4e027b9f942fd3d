/** Roles on a project, inherited by its descendants: reader < member < admin. */
import type { Role } from '../../store/records.js';

export type { Role };
export const ROLES: readonly Role[] = ['reader', 'member', 'admin'];
const RANK: Record<Role, number> = { reader: 1, member: 2, admin: 3 };

export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s);
}

/** True when `have` includes everything `need` allows. */
export function atLeast(have: Role | undefined, need: Role): boolean {
  return have !== undefined && RANK[have] >= RANK[need];
}

export function higher(a: Role | undefined, b: Role | undefined): Role | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return RANK[a] >= RANK[b] ? a : b;
}
