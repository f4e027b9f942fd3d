/**
 * Who is calling and what they may do. A principal's role on a project is the
 * highest role granted on that project or any ancestor (roles are inherited
 * downwards); a system administrator holds admin everywhere.
 */
import type { Store } from '../../store/store.js';
import type { Role } from '../../store/records.js';
import { higher } from './roles.js';

export interface Principal {
  /** null only for a socket caller when no admin user exists. */
  userId: string | null;
  name: string;
  systemAdmin: boolean;
  defaultProjectId: string | null;
  /** How the caller proved who it is. */
  via: 'socket' | 'session' | 'apikey';
  /** The session or API key used (logout revokes a session by it). */
  tokenId: string | null;
}

export class AccessControl {
  constructor(private readonly store: Store) {}

  /** Ancestors first-to-last: the project itself, its parent, ... the root. */
  lineage(projectId: string): string[] {
    const out: string[] = [];
    let id: string | null = projectId;
    while (id !== null && !out.includes(id)) {
      out.push(id);
      id = this.store.projects.get(id)?.parentId ?? null;
    }
    return out;
  }

  /** A view of one principal's grants, for the many checks of one request. */
  forPrincipal(p: Principal): PrincipalAccess {
    return new PrincipalAccess(this, this.store, p);
  }
}

export class PrincipalAccess {
  private grants: Map<string, Role> | undefined;
  constructor(private readonly ac: AccessControl, private readonly store: Store, readonly principal: Principal) {}

  private direct(): Map<string, Role> {
    if (this.grants) return this.grants;
    this.grants = new Map();
    if (this.principal.userId) for (const g of this.store.roles.list({ userId: this.principal.userId })) this.grants.set(g.projectId, g.role);
    return this.grants;
  }

  /** The effective role on a project (undefined: none — the project is invisible to the caller). */
  roleOn(projectId: string): Role | undefined {
    if (this.principal.systemAdmin) return 'admin';
    const grants = this.direct();
    if (grants.size === 0) return undefined;
    let role: Role | undefined;
    for (const id of this.ac.lineage(projectId)) role = higher(role, grants.get(id));
    return role;
  }

  canRead(projectId: string | null | undefined): boolean {
    if (this.principal.systemAdmin) return true;
    return projectId !== null && projectId !== undefined && this.roleOn(projectId) !== undefined;
  }
}
