/**
 * Projects as a tree of any depth (names unique among siblings), the role
 * grants on them, and the quota ledger kept in step: a project exists in the
 * ledger from its creation (a child starts with hard limits of 0, so a parent's
 * capacity is handed down only explicitly — OpenStack's nested-quota default).
 */
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import type { Store } from '../../store/store.js';
import type { ProjectRecord, Role } from '../../store/records.js';
import type { QuotaService } from '../quota/quota-service.js';

export interface ProjectView {
  id: string;
  name: string;
  /** Names from the root, joined by "/": unique, and usable wherever a project is named. */
  path: string;
  parentId: string | null;
  createdAt: string;
}

export interface GrantView {
  user: string;
  project: string;
  role: Role;
  createdAt: string;
}

export class ProjectService {
  constructor(private readonly store: Store, private readonly quota: QuotaService, private readonly protectedId: string) {}

  path(id: string): string {
    const names: string[] = [];
    let p = this.store.projects.get(id);
    while (p && names.length < 1000) {
      names.unshift(p.name);
      p = p.parentId ? this.store.projects.get(p.parentId) : undefined;
    }
    return names.join('/');
  }

  view(p: ProjectRecord): ProjectView {
    return { id: p.id, name: p.name, path: this.path(p.id), parentId: p.parentId, createdAt: p.createdAt };
  }

  /**
   * A project by id, by path ("org/team") or by bare name. Only projects `visible`
   * accepts are considered, so a name never reveals a project the caller cannot read.
   */
  resolve(ref: string, visible: (id: string) => boolean = () => true): ProjectRecord {
    const missing = () => new NotFound(`no such project: ${ref}`);
    const byId = this.store.projects.get(ref);
    if (byId) {
      if (!visible(byId.id)) throw missing();
      return byId;
    }
    if (ref.includes('/')) {
      let cur: ProjectRecord | undefined;
      for (const name of ref.split('/').filter(Boolean)) {
        cur = this.store.projects.child(cur ? cur.id : null, name);
        if (!cur) throw missing();
      }
      if (!cur || !visible(cur.id)) throw missing();
      return cur;
    }
    const matches = this.store.projects.list().filter((p) => p.name === ref && visible(p.id));
    if (matches.length > 1) {
      throw new InvalidArgument(`project name "${ref}" is ambiguous: use its path (${matches.map((p) => this.path(p.id)).join(', ')})`);
    }
    if (!matches[0]) throw missing();
    return matches[0];
  }

  create(name: string, parentId: string | null): ProjectView {
    if (!isValidName(name)) throw new InvalidArgument(`invalid project name "${name}": use letters, digits, '_', '.', '-'`);
    const rec: ProjectRecord = { id: newId().slice(0, 32), name, parentId, createdAt: new Date().toISOString() };
    this.store.transaction(() => {
      this.store.projects.insert(rec);
      this.quota.ensureProject(rec.id, parentId);
    });
    return this.view(rec);
  }

  list(visible: (id: string) => boolean): ProjectView[] {
    return this.store.projects.list().filter((p) => visible(p.id)).map((p) => this.view(p)).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** Refused while the project has children or resources: nothing is ever removed implicitly. */
  remove(id: string): void {
    this.assertRemovable(id);
    this.store.transaction(() => {
      if (this.quota.ledger.hasProject(id)) this.quota.ledger.deleteProject(id, Date.now());
      this.store.projects.delete(id); // role grants go with it (ON DELETE CASCADE)
    });
  }

  /**
   * Throws unless remove() would succeed, but for the project's default network (made on first
   * use, not a resource its users made): the caller removes that first, through the network service.
   */
  assertRemovable(id: string): void {
    const p = this.store.projects.get(id);
    if (!p) throw new NotFound(`no such project: ${id}`);
    const path = this.path(id);
    if (id === this.protectedId) throw new Conflict(`project "${path}" is the default project and cannot be removed`);
    const children = this.store.projects.children(id);
    if (children.length) throw new Conflict(`project "${path}" has ${children.length} child project(s) (${children.map((c) => c.name).join(', ')}); remove them first`);
    const containers = this.store.containers.list({ projectId: id }).length;
    const images = this.store.images.list(id).length;
    if (containers || images) throw new Conflict(`project "${path}" still has ${containers} container(s) and ${images} image(s); remove them first`);
    const networks = this.store.networks.list({ projectId: id }).filter((n) => !n.builtin).length;
    if (networks) throw new Conflict(`project "${path}" still has ${networks} network(s); remove them first`);
  }

  grant(userName: string, projectId: string, role: Role): GrantView {
    const u = this.store.users.byName(userName);
    if (!u) throw new NotFound(`no such user: ${userName}`);
    const rec = { userId: u.id, projectId, role, createdAt: new Date().toISOString() };
    this.store.transaction(() => {
      this.store.roles.grant(rec);
      // A user's first project becomes their default, so --project can be left out.
      if (u.defaultProjectId === null) this.store.users.update(u.id, { defaultProjectId: projectId });
    });
    return { user: u.name, project: this.path(projectId), role, createdAt: rec.createdAt };
  }

  revoke(userName: string, projectId: string): void {
    const u = this.store.users.byName(userName);
    if (!u || !this.store.roles.revoke(u.id, projectId)) throw new NotFound(`user "${userName}" has no role on project "${this.path(projectId)}"`);
  }

  /** Grants on the project itself and on its ancestors (which the project inherits). */
  grants(projectId: string): (GrantView & { inheritedFrom: string | null })[] {
    const out: (GrantView & { inheritedFrom: string | null })[] = [];
    let id: string | null = projectId;
    const users = new Map(this.store.users.list().map((u) => [u.id, u.name]));
    while (id !== null) {
      const from: string = id;
      for (const g of this.store.roles.list({ projectId: from })) {
        out.push({ user: users.get(g.userId) ?? g.userId, project: this.path(from), role: g.role, createdAt: g.createdAt, inheritedFrom: from === projectId ? null : this.path(from) });
      }
      id = this.store.projects.get(from)?.parentId ?? null;
    }
    return out;
  }
}
