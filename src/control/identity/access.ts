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

/**
 * How long the project tree is kept: another control-plane process's new project is seen within
 * it (this process's at once: forgetTree). Ancestors never change (projects are not moved and
 * ids are not reused), so a kept tree can only miss a new project (refused meanwhile) or keep a
 * removed one (which holds nothing): it never gives a role through a wrong parent.
 */
const TREE_TTL_MS = 2_000;

export class AccessControl {
  /** The project tree every member's request needs: a listing of every project was 3.3 ms a request with 1,000 projects here, 24 ms with 10,000. */
  private kept: { at: number; tree: Promise<ReadonlyMap<string, string | null>> } | undefined;

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
  async forPrincipal(p: Principal, tree?: ReadonlyMap<string, string | null>): Promise<PrincipalAccess> {
    if (p.systemAdmin || !p.userId) return new PrincipalAccess(p, new Map(), new Map());
    const grants = new Map<string, Role>();
    for (const g of await this.store.roles.list({ userId: p.userId })) grants.set(g.projectId, g.role);
    return new PrincipalAccess(p, grants, grants.size > 0 ? tree ?? (await this.tree()) : new Map());
  }

  /** Each project's parent (null: a root), from one listing kept for TREE_TTL_MS: what every member's request shares. */
  tree(): Promise<ReadonlyMap<string, string | null>> {
    const now = Date.now();
    if (this.kept === undefined || now - this.kept.at > TREE_TTL_MS) {
      const tree = this.store.projects.list().then((all) => new Map(all.map((rec) => [rec.id, rec.parentId])) as ReadonlyMap<string, string | null>);
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
    /** Each project's parent (null: a root), as far as the grants need it. */
    private readonly parents: ReadonlyMap<string, string | null>,
  ) {}

  /** The effective role on a project (undefined: none — the project is invisible to the caller). */
  roleOn(projectId: string): Role | undefined {
    if (this.principal.systemAdmin) return 'admin';
    if (this.grants.size === 0) return undefined;
    let role: Role | undefined;
    const seen = new Set<string>();
    for (let id: string | null | undefined = projectId; id !== null && id !== undefined && !seen.has(id); id = this.parents.get(id)) {
      seen.add(id);
      role = higher(role, this.grants.get(id));
    }
    return role;
  }

  canRead(projectId: string | null | undefined): boolean {
    if (this.principal.systemAdmin) return true;
    return projectId !== null && projectId !== undefined && this.roleOn(projectId) !== undefined;
  }

  /** Every project the principal may read; undefined: all of them (a system administrator). */
  readableProjects(): string[] | undefined {
    if (this.principal.systemAdmin) return undefined;
    return [...this.parents.keys()].filter((id) => this.roleOn(id) !== undefined);
  }
}
