/**
 * Hosts: every agent (the embedded one and the registered ones) with its state, capacity and
 * an administrator's settings. One resource with /agents (registration and join tokens stay
 * there; GET /agents lists the same hosts). Mutations are for system administrators; any
 * authenticated user lists, counting only the instances of projects it can read.
 */
import { Type } from '@sinclair/typebox';
import { route, type RequestAuth } from '../route.js';
import { Empty } from '../schemas.js';
import type { Services } from '../../control/services.js';
import type { HostCounts, HostViewer } from '../../control/agents/host-summary.js';
import { MAX_ALLOCATION_RATIO } from '../../control/agents/host-settings.js';
import { allocatedOn } from '../../control/scheduler/allocated.js';
import { forgetHost } from '../../control/compute/host-fence.js';

const Ratios = Type.Object({ cpu: Type.Number(), memory: Type.Number(), disk: Type.Number() });
const Allocation = Type.Object({
  vcpus: Type.Number(), memoryBytes: Type.Integer(), diskBytes: Type.Integer(), instances: Type.Integer(),
}, { description: 'Resources claimed by placements on the host (absent until the scheduler reports claims)' });

export const Host = Type.Object(
  {
    name: Type.String(),
    local: Type.Boolean({ description: 'The embedded agent, in the control plane\'s process' }),
    url: Type.Optional(Type.String({ description: 'How the control plane reaches it (registered agents; system administrators only: an internal address)' })),
    registeredAt: Type.Optional(Type.String()),
    state: Type.Union([Type.Literal('up'), Type.Literal('down'), Type.Literal('unknown')], {
      description: 'Reachability: up (answered), down (does not answer: reason), unknown (not heard from since this control plane started and no recent facts)',
    }),
    reason: Type.Optional(Type.String({ description: 'Why it is down or unknown (the transport\'s own words, which name its address, for system administrators only)' })),
    zone: Type.String({ description: 'Availability zone' }),
    labels: Type.Record(Type.String(), Type.String()),
    disabled: Type.Boolean({ description: 'No new placements (an administrator\'s flag, beside the state)' }),
    disabledReason: Type.Optional(Type.String()),
    disabledAt: Type.Optional(Type.String()),
    disabledBy: Type.Optional(Type.String()),
    allocationRatios: Ratios,
    hostname: Type.Optional(Type.String()),
    kernel: Type.Optional(Type.String()),
    architecture: Type.Optional(Type.String()),
    cpus: Type.Optional(Type.Integer()),
    memoryBytes: Type.Optional(Type.Integer()),
    diskBytes: Type.Optional(Type.Integer({ description: 'Size of the filesystem holding the agent\'s data' })),
    accelerator: Type.Optional(Type.String({ description: 'What its VMs run under (kvm, tcg, undecided)' })),
    runtimes: Type.Optional(Type.Array(Type.String(), { description: 'Usable OCI runtimes' })),
    liveMove: Type.Optional(Type.Object({
      usable: Type.Boolean(),
      reason: Type.Optional(Type.String({ description: 'Why not: each CRIU candidate\'s `criu check` failure' })),
      version: Type.Optional(Type.String({ description: 'The CRIU it uses' })),
    }, { description: 'Whether containers move live (--live, CRIU) to or from it' })),
    lastSeenAt: Type.Optional(Type.String({ description: 'When the facts above were reported' })),
    vms: Type.Integer({ description: 'VMs recorded on it (for a non-administrator: those of the projects it can read)' }),
    containers: Type.Optional(Type.Integer({ description: 'Containers recorded on it (for a non-administrator: those of the projects it can read)' })),
    allocated: Type.Optional(Allocation),
  },
  { $id: 'Host' },
);

const NameParam = Type.Object({ name: Type.String({ minLength: 1, maxLength: 128 }) });
const Ratio = Type.Union([Type.Number({ exclusiveMinimum: 0, maximum: MAX_ALLOCATION_RATIO }), Type.Null()], { description: 'Over-commit factor; null: back to the default' });
const Label = Type.String({ maxLength: 63 });

/**
 * The counts a listing shows: a system administrator sees every instance on each host, anyone
 * else only those of the projects it can read (never a host-wide figure).
 */
export async function hostCounts(services: Services, auth: RequestAuth): Promise<HostCounts> {
  const all = !!auth.principal?.systemAdmin;
  const vms = (await services.store.vms.list()).filter((v) => all || auth.canRead(v.projectId));
  const containers = (await services.store.containers.list()).filter((c) => all || auth.canRead(c.projectId));
  const count = <T>(list: T[], host: (i: T) => string) => {
    const m = new Map<string, number>();
    for (const i of list) m.set(host(i), (m.get(host(i)) ?? 0) + 1);
    return (name: string) => m.get(name) ?? 0;
  };
  return {
    vmsOn: count(vms, (v) => v.agent), containersOn: count(containers, (c) => c.host),
    // the claims are host-wide figures: administrators only
    ...(all ? { allocatedOn: (host: string) => allocatedOn(services.store, host) } : {}),
  };
}

/** Who a listing is for: how the hosts are reached (their URLs) is a system administrator's to see. */
export const hostViewer = (auth: RequestAuth): HostViewer => ({ admin: auth.principal?.systemAdmin === true });

export const hostRoutes = [
  route({
    method: 'GET', path: '/hosts', operationId: 'listHosts', tag: 'hosts', access: 'read', auth: { authenticated: true },
    summary: 'The hosts (agents) with their state now, zone, labels, capacity, accelerator and runtimes',
    response: Type.Array(Host),
    handler: async ({ services, auth }) => services.agents.list(await hostCounts(services, auth), hostViewer(auth)),
  }),
  route({
    method: 'GET', path: '/hosts/{name}', operationId: 'getHost', tag: 'hosts', access: 'read', auth: { authenticated: true },
    summary: 'One host, asked now', params: NameParam, response: Host,
    handler: async ({ params, services, auth }) => services.agents.show(params.name, await hostCounts(services, auth), hostViewer(auth)),
  }),
  route({
    method: 'POST', path: '/hosts/{name}/disable', operationId: 'disableHost', tag: 'hosts', access: 'write', auth: { global: 'admin' },
    summary: 'No new placements on the host (its instances stay and keep running); again: the reason is replaced',
    params: NameParam,
    body: Type.Object({ reason: Type.Optional(Type.String({ maxLength: 255, description: 'Why (shown in nimbus host ls / show)' })) }, { additionalProperties: false }),
    response: Host,
    handler: async ({ params, body, services, auth }) =>
      services.agents.disable(params.name, { ...(body.reason !== undefined ? { reason: body.reason } : {}), by: auth.principal?.name ?? 'unknown' }),
  }),
  route({
    method: 'POST', path: '/hosts/{name}/enable', operationId: 'enableHost', tag: 'hosts', access: 'write', auth: { global: 'admin' },
    summary: 'Placements on the host again', params: NameParam,
    body: Type.Object({}, { additionalProperties: false }), response: Host,
    handler: async ({ params, services }) => services.agents.enable(params.name),
  }),
  route({
    method: 'PUT', path: '/hosts/{name}', operationId: 'updateHost', tag: 'hosts', access: 'write', auth: { global: 'admin' },
    // PUT with absent fields kept, as Nova's PUT /os-services/{id} and /os-aggregates/{id}
    summary: 'Change a host\'s zone, labels (set and unset) and allocation ratios; fields absent are kept',
    params: NameParam,
    body: Type.Object({
      zone: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'Availability zone' })),
      labels: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 317 }), Label, { description: 'Labels set (added or replaced)' })),
      unsetLabels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 317 }), { maxItems: 64, description: 'Labels removed' })),
      allocationRatios: Type.Optional(Type.Object({ cpu: Type.Optional(Ratio), memory: Type.Optional(Ratio), disk: Type.Optional(Ratio) }, { additionalProperties: false })),
    }, { additionalProperties: false }),
    response: Host,
    handler: async ({ params, body, services }) => services.agents.updateSettings(params.name, body),
  }),
  route({
    method: 'DELETE', path: '/hosts/{name}', operationId: 'removeHost', tag: 'hosts', access: 'write', auth: { global: 'admin' },
    summary: 'Forget a registered host and its settings (refused while containers or VMs are recorded on it; copies of instances recorded elsewhere are removed from it first; the embedded host cannot be removed)',
    params: NameParam, response: Empty,
    handler: async ({ params, services }) => {
      await forgetHost(services, params.name);
      return { status: 204 };
    },
  }),
];
