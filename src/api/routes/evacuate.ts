/** POST /hosts/{name}/evacuate: every instance off a host (control/compute/host-evacuate.ts), as an Operation. */
import { Type } from '@sinclair/typebox';
import { route } from '../route.js';
import { Operation } from '../schemas.js';
import { startEvacuate } from '../../control/compute/host-evacuate.js';

const NameParam = Type.Object({ name: Type.String({ minLength: 1, maxLength: 128 }) });

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
];
