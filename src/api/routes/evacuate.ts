/**
 * POST /hosts/{name}/evacuate: every instance off a host (control/compute/host-evacuate.ts), as an
 * Operation; GET /hosts/{name}/evacuation-plan: what it would do, changing nothing (--dry-run).
 */
import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Operation } from '../schemas.js';
import { evacuationPlan, startEvacuate } from '../../control/compute/host-evacuate.js';

const NameParam = Type.Object({ name: Type.String({ minLength: 1, maxLength: 128 }) });

const PlannedInstance = Type.Object({
  kind: Type.Union([Type.Literal('container'), Type.Literal('vm')]),
  id: Type.String(),
  name: Type.String(),
  state: Type.Union(['pending', 'moving', 'moved', 'skipped', 'failed'].map((x) => Type.Literal(x)), { description: 'In a plan: pending (it would move) or skipped (it would stay: reason)' }),
  to: Type.Optional(Type.String({ description: 'The host the scheduler would pick now' })),
  mode: Type.Optional(Type.Union([Type.Literal('live'), Type.Literal('cold')])),
  reason: Type.Optional(Type.String({ description: 'Why it would stay, or move cold rather than live' })),
});

export const evacuateRoutes = [
  route({
    method: 'POST', path: '/hosts/{name}/evacuate', operationId: 'evacuateHost', tag: 'hosts', access: 'write', auth: { global: 'admin' },
    summary: 'Disable the host, then live-migrate its running VMs and move its containers (cold) to other hosts, one at a time; returns an Operation '
      + '(host.evacuate, 202) whose progress lists each instance (pending, moving, moved, skipped or failed, and why)',
    status: 202, params: NameParam, body: Type.Object({}, { additionalProperties: false }), response: Operation,
    handler: async ({ params, services, auth }) => ({
      status: 202,
      body: await startEvacuate({
        store: services.store, hosts: services.hosts, scheduler: services.scheduler, operations: services.operations,
        containers: services.containers, vms: services.vms, projectId: services.defaultProjectId,
        disable: (host, o) => services.agents.disable(host, o),
      }, params.name, auth.principal?.name ?? 'unknown'),
    }),
  }),
  route({
    method: 'GET', path: '/hosts/{name}/evacuation-plan', operationId: 'evacuationPlan', tag: 'hosts', access: 'read', auth: { global: 'admin' },
    summary: 'What an evacuation would do now, changing nothing (nimbus host evacuate --dry-run): each instance with the host the scheduler would pick '
      + 'and how it would move (VMs live; containers live with CRIU where they can, cold otherwise, and why), or why it would stay',
    params: NameParam,
    response: Type.Object({ host: Type.String(), instances: Type.Array(PlannedInstance) }),
    handler: async ({ params, services }) => evacuationPlan({ store: services.store, hosts: services.hosts, scheduler: services.scheduler, containers: services.containers }, params.name),
  }),
];
