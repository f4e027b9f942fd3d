/**
 * Who is calling and what they may do. A principal's role on a project is the
 * highest role granted on that project or any ancestor (roles are inherited
 * downwards); a system administrator holds admin everywhere.
 */
import type { Store } from '../../store/store.js';
import type { Role } from '../../store/records.js';
import { higher } from './roles.js';
import { ProjectTree } from './project-tree.js';

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

/**
 * How long the project tree is kept: another control-plane process's new project is seen within
 * it (this process's at once: forgetTree). Ancestors never change (projects are not moved and
 * ids are not reused), so a kept tree can only miss a new project (refused meanwhile) or keep a
 * removed one (which holds nothing): it never gives a role through a wrong parent.
 */
const TREE_TTL_MS = 2_000;

export class AccessControl {
  /** The project tree every member's request needs: a listing of every project was 3.3 ms a request with 1,000 projects here, 24 ms with 10,000. */
  private kept: { at: number; tree: Promise<ProjectTree> } | undefined;

  constructor(private readonly store: Store) {}

  /** Ancestors first-to-last: the project itself, its parent, ... the root. */
  async lineage(projectId: string): Promise<string[]> {
    const out: string[] = [];
    let id: string | null = projectId;
    while (id !== null && !out.includes(id)) {
      out.push(id);
      id = (await this.store.projects.get(id))?.parentId ?? null;
    }
    return out;
  }

  /**
   * One principal's access, loaded once for the many checks of one request, which are then
   * synchronous (filters and scopes call them per item). Queries: none for a system
   * administrator; the user's grants; and, only when there are grants, the project tree
   * (one listing, or `tree` when the caller holds one) to know what inherits them. The view is a
   * snapshot: a long-lived caller (an event stream) takes a new one to see grants or projects made since.
   */
  async forPrincipal(p: Principal, tree?: ProjectTree): Promise<PrincipalAccess> {
    if (p.systemAdmin || !p.userId) return new PrincipalAccess(p, new Map(), ProjectTree.empty);
    const grants = new Map<string, Role>();
    for (const g of await this.store.roles.list({ userId: p.userId })) grants.set(g.projectId, g.role);
    return new PrincipalAccess(p, grants, grants.size > 0 ? tree ?? (await this.tree()) : ProjectTree.empty);
  }

  /** The project tree, from one listing kept for TREE_TTL_MS: what every member's request shares. */
  tree(): Promise<ProjectTree> {
    const now = Date.now();
    if (this.kept === undefined || now - this.kept.at > TREE_TTL_MS) {
      const tree = this.store.projects.list().then((all) => new ProjectTree(new Map(all.map((rec) => [rec.id, rec.parentId]))));
      const kept = { at: now, tree };
      this.kept = kept;
      tree.catch(() => {
        if (this.kept === kept) this.kept = undefined; // a failed listing is not kept
      });
    }
    return this.kept.tree;
  }

  /** A project was made or removed here: the next request lists them again. */
  forgetTree(): void {
    this.kept = undefined;
  }
}

export class PrincipalAccess {
  constructor(
    readonly principal: Principal,
    /** The principal's own grants by project. */
    private readonly grants: ReadonlyMap<string, Role>,
    /** The project tree, as far as the grants need it. */
    private readonly tree: ProjectTree,
  ) {}

  /** The effective role on a project (undefined: none — the project is invisible to the caller). */
  roleOn(projectId: string): Role | undefined {
    if (this.principal.systemAdmin) return 'admin';
    if (this.grants.size === 0) return undefined;
    let role: Role | undefined;
    const seen = new Set<string>();
    for (let id: string | null | undefined = projectId; id !== null && id !== undefined && !seen.has(id); id = this.tree.parents.get(id)) {
      seen.add(id);
      role = higher(role, this.grants.get(id));
    }
    return role;
  }

  canRead(projectId: string | null | undefined): boolean {
    if (this.principal.systemAdmin) return true;
    return projectId !== null && projectId !== undefined && this.roleOn(projectId) !== undefined;
  }

  /**
   * Every project the principal may read (those with a grant and all below them); undefined: all of
   * them (a system administrator). From the granted projects down, not every project's ancestors:
   * a member's `/operations` walked the whole tree per request.
   */
  readableProjects(): string[] | undefined {
    if (this.principal.systemAdmin) return undefined;
    return this.tree.subtrees(this.grants.keys());
  }
}
