/**
 * Server groups (Nova's): a named policy per project that the scheduler applies to the
 * instances placed "in" the group (`run --group web`). The members are the claims naming the
 * group, so membership starts with the claim and ends with its release.
 */
import { InvalidArgument, NotFound } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import { SERVER_GROUP_POLICIES, type ServerGroupPolicy, type ServerGroupRecord } from '../../store/repos/placement.js';
import type { Store } from '../../store/store.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';

export interface ServerGroupView extends ServerGroupRecord {
  /** The members' instance ids. */
  members: string[];
}

const EVERYWHERE: ProjectScope = { canRead: () => true };

export class ServerGroupService {
  constructor(private readonly store: Store, private readonly now: () => Date = () => new Date()) {}

  async create(projectId: string, input: { name: string; policy: ServerGroupPolicy }): Promise<ServerGroupRecord> {
    if (!isValidName(input.name)) throw new InvalidArgument(`invalid server group name "${input.name}"`);
    if (!SERVER_GROUP_POLICIES.includes(input.policy)) throw new InvalidArgument(`unknown policy "${input.policy}" (${SERVER_GROUP_POLICIES.join(', ')})`);
    const g: ServerGroupRecord = { id: newId(), projectId, name: input.name, policy: input.policy, createdAt: this.now().toISOString() };
    await this.store.placement.insertGroup(g);
    return g;
  }

  /** By id or name, in scope. */
  async get(ref: string, scope: ProjectScope = EVERYWHERE): Promise<ServerGroupRecord> {
    if (!ref) throw new InvalidArgument('a server group id or name is required');
    const exact = await this.store.placement.group(ref);
    if (exact && inScope(scope, exact.projectId)) return exact;
    const named = 'projectId' in scope ? await this.store.placement.groups({ projectId: scope.projectId, name: ref }) : await this.store.placement.groups({ name: ref });
    if (named.length === 0) throw new NotFound(`no such server group: ${ref}`);
    return pickInScope(named, scope, (g) => g.id, 'server group', ref);
  }

  list(projectId?: string): Promise<ServerGroupRecord[]> {
    return this.store.placement.groups(projectId === undefined ? {} : { projectId });
  }

  async view(g: ServerGroupRecord): Promise<ServerGroupView> {
    return { ...g, members: (await this.store.placement.allocations({ groupId: g.id })).map((a) => a.consumerId) };
  }

  /** Conflict while the group has members. */
  async remove(id: string): Promise<void> {
    if (!(await this.store.placement.deleteGroup(id))) throw new NotFound(`no such server group: ${id}`);
  }
}
