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

/** Names from the root, joined by "/", of a project among `byId` (a walk bounded against a corrupt cycle). */
function pathIn(byId: ReadonlyMap<string, ProjectRecord>, id: string): string {
  const names: string[] = [];
  let p = byId.get(id);
  while (p && names.length < 1000) {
    names.unshift(p.name);
    p = p.parentId ? byId.get(p.parentId) : undefined;
  }
  return names.join('/');
}

export class ProjectService {
  constructor(
    private readonly store: Store,
    private readonly quota: QuotaService,
    private readonly protectedId: string,
    /** Told when a project is made or removed here (the access checks keep the tree a moment). */
    private readonly treeChanged: () => void = () => undefined,
  ) {}

  async path(id: string): Promise<string> {
    const names: string[] = [];
    let p = await this.store.projects.get(id);
    while (p && names.length < 1000) {
      names.unshift(p.name);
      p = p.parentId ? await this.store.projects.get(p.parentId) : undefined;
    }
    return names.join('/');
  }

  async view(p: ProjectRecord): Promise<ProjectView> {
    return { id: p.id, name: p.name, path: await this.path(p.id), parentId: p.parentId, createdAt: p.createdAt };
  }

  /**
   * A project by id, by path ("org/team") or by bare name. Only projects `visible`
   * accepts are considered, so a name never reveals a project the caller cannot read.
   */
  async resolve(ref: string, visible: (id: string) => boolean = () => true): Promise<ProjectRecord> {
    const missing = () => new NotFound(`no such project: ${ref}`);
    const byId = await this.store.projects.get(ref);
    if (byId) {
      if (!visible(byId.id)) throw missing();
      return byId;
    }
    if (ref.includes('/')) {
      let cur: ProjectRecord | undefined;
      for (const name of ref.split('/').filter(Boolean)) {
        cur = await this.store.projects.child(cur ? cur.id : null, name);
        if (!cur) throw missing();
      }
      if (!cur || !visible(cur.id)) throw missing();
      return cur;
    }
    // the projects of that name only (every project listed was 3.3 ms a request with 1,000 of them)
    const matches = (await this.store.projects.named(ref)).filter((p) => visible(p.id));
    if (matches.length > 1) {
      // a root project's path is its bare name: that path names it, as "org/team" names a nested
      // one (before, a root "web" beside an "org/web" could not be named at all: its own path,
      // which the listing shows, was refused as ambiguous)
      const root = matches.find((p) => p.parentId === null);
      if (root) return root;
      const paths = await Promise.all(matches.map((p) => this.path(p.id)));
      throw new InvalidArgument(`project name "${ref}" is ambiguous: use its path (${paths.join(', ')})`);
    }
    if (!matches[0]) throw missing();
    return matches[0];
  }

  /** The project row and its ledger entry commit together (a sibling of that name: AlreadyExists, neither). */
  async create(name: string, parentId: string | null): Promise<ProjectView> {
    if (!isValidName(name)) throw new InvalidArgument(`invalid project name "${name}": use letters, digits, '_', '.', '-'`);
    const rec: ProjectRecord = { id: newId().slice(0, 32), name, parentId, createdAt: new Date().toISOString() };
    try {
      await this.quota.ensureProject(rec.id, parentId, () => this.store.projects.insert(rec));
    } finally {
      this.treeChanged();
    }
    return this.view(rec);
  }

  /** Every project `visible` accepts, by path (one listing: the paths are made from it). */
  async list(visible: (id: string) => boolean): Promise<ProjectView[]> {
    const all = await this.store.projects.list();
    const byId = new Map(all.map((p) => [p.id, p]));
    return all
      .filter((p) => visible(p.id))
      .map((p) => ({ id: p.id, name: p.name, path: pathIn(byId, p.id), parentId: p.parentId, createdAt: p.createdAt }))
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  }

  /** Refused while the project has children or resources: nothing is ever removed implicitly. */
  async remove(id: string): Promise<void> {
    await this.assertRemovable(id);
    // the ledger entry and the row go together (role grants go with the row: ON DELETE CASCADE)
    try {
      await this.quota.deleteProject(id, () => this.store.projects.delete(id));
    } finally {
      this.treeChanged();
    }
  }

  /**
   * Throws unless remove() would succeed, but for the project's default network (made on first
   * use, not a resource its users made): the caller removes that first, through the network service.
   */
  async assertRemovable(id: string): Promise<void> {
    const p = await this.store.projects.get(id);
    if (!p) throw new NotFound(`no such project: ${id}`);
    const path = await this.path(id);
    if (id === this.protectedId) throw new Conflict(`project "${path}" is the default project and cannot be removed`);
    const children = await this.store.projects.children(id);
    if (children.length) throw new Conflict(`project "${path}" has ${children.length} child project(s) (${children.map((c) => c.name).join(', ')}); remove them first`);
    const containers = (await this.store.containers.list({ projectId: id })).length;
    const images = (await this.store.images.list(id)).length;
    if (containers || images) throw new Conflict(`project "${path}" still has ${containers} container(s) and ${images} image(s); remove them first`);
    const networks = (await this.store.networks.list({ projectId: id })).filter((n) => !n.builtin).length;
    if (networks) throw new Conflict(`project "${path}" still has ${networks} network(s); remove them first`);
    // the rest of what the store keeps by project (its rows would refuse the removal: a 500, the API fuzz found)
    const vms = (await this.store.vms.list({ projectId: id })).length;
    const volumes = (await this.store.volumes.list({ projectId: id })).length;
    const disks = (await this.store.disks.list(id)).length;
    if (vms || volumes || disks) throw new Conflict(`project "${path}" still has ${vms} VM(s), ${volumes} volume(s) and ${disks} disk image(s); remove them first`);
  }

  async grant(userName: string, projectId: string, role: Role): Promise<GrantView> {
    const u = await this.store.users.byName(userName);
    if (!u) throw new NotFound(`no such user: ${userName}`);
    const rec = { userId: u.id, projectId, role, createdAt: new Date().toISOString() };
    await this.store.transaction(async () => {
      await this.store.roles.grant(rec);
      // A user's first project becomes their default, so --project can be left out.
      if (u.defaultProjectId === null) await this.store.users.update(u.id, { defaultProjectId: projectId });
    });
    return { user: u.name, project: await this.path(projectId), role, createdAt: rec.createdAt };
  }

  async revoke(userName: string, projectId: string): Promise<void> {
    const u = await this.store.users.byName(userName);
    if (!u || !(await this.store.roles.revoke(u.id, projectId))) throw new NotFound(`user "${userName}" has no role on project "${await this.path(projectId)}"`);
  }

  /** Grants on the project itself and on its ancestors (which the project inherits). */
  async grants(projectId: string): Promise<(GrantView & { inheritedFrom: string | null })[]> {
    const out: (GrantView & { inheritedFrom: string | null })[] = [];
    let id: string | null = projectId;
    const users = new Map((await this.store.users.list()).map((u) => [u.id, u.name]));
    while (id !== null) {
      const from: string = id;
      const granted = await this.store.roles.list({ projectId: from });
      const path = granted.length ? await this.path(from) : '';
      for (const g of granted) {
        out.push({ user: users.get(g.userId) ?? g.userId, project: path, role: g.role, createdAt: g.createdAt, inheritedFrom: from === projectId ? null : path });
      }
      id = (await this.store.projects.get(from))?.parentId ?? null;
    }
    return out;
  }
}
