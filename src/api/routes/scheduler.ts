/**
 * Server groups (project resources, like networks) and scheduler explain. Hosts are operator
 * information: an explanation names hosts, verdicts and weights to system administrators only;
 * a project member learns whether the request fits and how many hosts each filter rejected.
 */
import { Type, type Static } from '@sinclair/typebox';
import { route, type RequestAuth } from '../route.js';
import { Empty, IdParam, Labels, Ref } from '../schemas.js';
import { PermissionDenied } from '../../core/errors.js';
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';
import { ServerGroupService } from '../../control/scheduler/groups.js';
import { summarise } from '../../control/scheduler/explain.js';
import type { PlacementRequest } from '../../control/scheduler/types.js';

/** The service is a thin layer over the store: one per request costs nothing and needs no wiring. */
const groupsOf = (s: Services) => new ServerGroupService(s.store);

const GROUP = {
  param: 'id', kind: 'server group',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const g = await groupsOf(s).get(ref, scope);
    return { projectId: g.projectId, id: g.id };
  },
};

const Policy = Type.Union(
  [Type.Literal('affinity'), Type.Literal('anti-affinity'), Type.Literal('soft-affinity'), Type.Literal('soft-anti-affinity')],
  { description: 'Nova\'s policies: hard ones refuse hosts (anti-affinity: one member per host; affinity: all on one), soft ones only weigh them' },
);

const ServerGroup = Type.Object({
  id: Type.String(), projectId: Type.String(), name: Type.String(), policy: Policy, createdAt: Type.String(),
  members: Type.Optional(Type.Array(Type.String(), { description: 'Instance ids placed in the group' })),
});

const GroupCreate = Type.Object({ name: Ref('Name, unique in the project', 128), policy: Policy }, { additionalProperties: false });

const Bytes = (description: string) => Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description });

const ExplainBody = Type.Object(
  {
    kind: Type.Union([Type.Literal('container'), Type.Literal('vm'), Type.Literal('secure-container')], { default: 'container' }),
    vcpus: Type.Number({ minimum: 0, maximum: 1_000_000, default: 0 }),
    memoryBytes: Bytes('Memory to claim'),
    diskBytes: Type.Optional(Bytes('Disk to claim')),
    host: Type.Optional(Ref('Pin to this host (system administrators only)', 253)),
    zone: Type.Optional(Ref('Availability zone', 253)),
    constraints: Type.Optional(Labels),
    runtime: Type.Optional(Ref('OCI runtime the host must offer', 64)),
    accelerator: Type.Optional(Ref('Hypervisor accelerator (kvm, tcg)', 32)),
    architecture: Type.Optional(Ref('CPU architecture in OCI spelling (amd64, arm64)', 32)),
    imageChainId: Type.Optional(Ref('Image chain id, for image locality', 128)),
    group: Type.Optional(Ref('Server group name or id (of the project)')),
  },
  { additionalProperties: false },
);

const Verdict = Type.Object({
  host: Type.String(),
  rejectedBy: Type.Optional(Type.Object({ filter: Type.String(), reason: Type.String() })),
  weight: Type.Optional(Type.Number()),
  weighers: Type.Optional(Type.Record(Type.String(), Type.Number())),
});

const ExplainResult = Type.Object({
  fits: Type.Boolean(),
  /** "3 hosts: 1 can take it, 2 rejected by memory" */
  message: Type.String(),
  hosts: Type.Integer(),
  rejected: Type.Record(Type.String(), Type.Integer(), { description: 'Hosts rejected, by filter' }),
  chosen: Type.Optional(Type.String({ description: 'System administrators only' })),
  verdicts: Type.Optional(Type.Array(Verdict, { description: 'Each host\'s verdict and weight (system administrators only)' })),
});

const isSystemAdmin = (auth: RequestAuth) => auth.principal?.systemAdmin === true;

async function explain(services: Services, auth: RequestAuth, body: Static<typeof ExplainBody>): Promise<Static<typeof ExplainResult>> {
  const admin = isSystemAdmin(auth);
  if (body.host !== undefined && !admin) throw new PermissionDenied('only system administrators may pin a placement to a host');
  const projectId = auth.project();
  const { group, ...rest } = body;
  const req: PlacementRequest = {
    ...rest, consumerId: 'explain', projectId, diskBytes: body.diskBytes ?? 0,
    ...(group !== undefined ? { group: (await groupsOf(services).get(group, { projectId })).id } : {}),
  };
  const e = await services.scheduler.explain(req);
  const summary = summarise(e);
  return {
    fits: summary.fits, message: summary.message, hosts: summary.hosts, rejected: summary.rejected,
    ...(admin ? { ...(e.chosen !== undefined ? { chosen: e.chosen } : {}), verdicts: e.hosts } : {}),
  };
}

export const schedulerRoutes = [
  route({
    method: 'GET', path: '/groups', operationId: 'listServerGroups', tag: 'scheduler', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List server groups',
    response: Type.Array(ServerGroup),
    handler: async ({ services, auth }) => (await groupsOf(services).list(auth.projectId ?? undefined)).filter((g) => auth.canRead(g.projectId)),
  }),
  route({
    method: 'POST', path: '/groups', operationId: 'createServerGroup', tag: 'scheduler', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Create a server group: instances placed in it (run --group) follow its policy',
    status: 201, body: GroupCreate, response: ServerGroup,
    handler: async ({ body, services, auth }) => ({ status: 201, body: await groupsOf(services).create(auth.project(), body) }),
  }),
  route({
    method: 'GET', path: '/groups/{id}', operationId: 'inspectServerGroup', tag: 'scheduler', access: 'read',
    auth: { role: 'reader', project: GROUP },
    summary: 'Inspect a server group and its members', params: IdParam, response: ServerGroup,
    handler: async ({ params, services }) => {
      const groups = groupsOf(services);
      return groups.view(await groups.get(params.id));
    },
  }),
  route({
    method: 'DELETE', path: '/groups/{id}', operationId: 'removeServerGroup', tag: 'scheduler', access: 'write',
    auth: { role: 'member', project: GROUP },
    summary: 'Remove a server group (refused while it has members)', params: IdParam, response: Empty,
    handler: async ({ params, services }) => {
      await groupsOf(services).remove(params.id);
      return { status: 204 };
    },
  }),
  route({
    method: 'POST', path: '/scheduler/explain', operationId: 'explainPlacement', tag: 'scheduler', access: 'read',
    auth: { role: 'member', project: 'query' },
    summary: 'What the scheduler would decide for a request, without placing anything: administrators see every host\'s verdict and weight, members how many hosts each filter rejected',
    body: ExplainBody, response: ExplainResult,
    handler: async ({ body, services, auth }) => explain(services, auth, body),
  }),
];
