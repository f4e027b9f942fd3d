import { Type } from '@sinclair/typebox';
import { route, stream } from '../route.js';
import type { Services } from '../../control/services.js';
import { Empty, IdParam, LogLine, Operation } from '../schemas.js';

const VmCreate = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'vCPUs (default 1)' })),
    maxCpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'vCPUs it may grow to while running (hot-plug with resize); default: its cpus, no hot-plug' })),
    memoryMiB: Type.Optional(Type.Integer({ minimum: 16, description: 'Guest memory in MiB (default 256)' })),
    kernel: Type.Optional(Type.String({ minLength: 1, description: 'Direct kernel boot: kernel image on the host' })),
    initrd: Type.Optional(Type.String({ minLength: 1 })),
    append: Type.Optional(Type.String({ description: 'Kernel command line' })),
    disk: Type.Optional(Type.String({ minLength: 1, description: 'Base disk image (raw or qcow2); the VM gets a copy-on-write overlay of it' })),
    pin: Type.Optional(Type.Array(Type.Integer({ minimum: 0 }), { description: 'Host CPUs: vCPU i runs on pin[i % length]' })),
    image: Type.Optional(Type.String({ minLength: 1, description: 'A disk image of the image service (nimbus image import-disk): the root disk is a qcow2 overlay backed by it' })),
    agent: Type.Optional(Type.String({ minLength: 1, description: 'The agent (host) to run it on (GET /agents); default the embedded one' })),
    networks: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 8, description: 'Networks of the VM\'s project ("bridge": its default) for virtio-net NICs eth0, eth1, ...; the addresses are leased and given to the guest as nimbus.net=IF,ADDR/PREFIX,GATEWAY on its kernel command line' })),
  },
  { $id: 'VmCreate', additionalProperties: false },
);

const Vm = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    projectId: Type.String(),
    type: Type.Literal('vm'),
    config: Type.Object({}, { additionalProperties: true, description: 'The create request as stored' }),
    status: Type.Union(['created', 'running', 'paused', 'saved', 'stopped', 'removing'].map((s) => Type.Literal(s))),
    pid: Type.Union([Type.Integer(), Type.Null()]),
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    createdAt: Type.String(),
    startedAt: Type.Union([Type.String(), Type.Null()]),
    finishedAt: Type.Union([Type.String(), Type.Null()]),
    savedAt: Type.Union([Type.String(), Type.Null()]),
    agent: Type.String({ description: 'The agent (host) it lives on' }),
    network: Type.Optional(Type.Object({ endpoints: Type.Array(Type.Object({ network: Type.String(), networkId: Type.String(), address: Type.String(), gateway: Type.String(), prefix: Type.Integer(), mac: Type.String(), ifName: Type.String() })) }, { description: 'NICs (inspect only)' })),
  },
  { $id: 'Vm' },
);

/** The project of the VM a path names: its owner decides who may act on it. */
const VM = { param: 'id', kind: 'vm', owner: (s: Services, id: string) => s.vms.get(id).projectId };

/** Records carry their instance type, so a client merging /containers and /vms can tell them apart. */
const typed = <T extends object>(v: T) => ({ ...v, type: 'vm' as const });

export const vmRoutes = [
  route({
    method: 'GET', path: '/vms', operationId: 'listVms', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List VMs (running and paused ones unless all=true)',
    query: Type.Object({ all: Type.Boolean({ default: false }) }),
    response: Type.Array(Vm),
    handler: ({ query, services, auth }) =>
      services.vms.list({ all: query.all }).filter((v) => (auth.projectId ? v.projectId === auth.projectId : auth.canRead(v.projectId))).map(typed),
  }),
  route({
    method: 'POST', path: '/vms', operationId: 'createVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Create a VM (kernel boot or disk image); it is created, not started', status: 201,
    body: VmCreate, response: Vm,
    handler: async ({ body, services, auth }) => typed(await services.vms.create(body, auth.project())),
  }),
  route({
    method: 'POST', path: '/vms/{id}/clone', operationId: 'createVmFromTemplate', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Create a VM from a saved one used as a template (same devices, disk backed by its); restore starts it', status: 201,
    params: IdParam, body: Type.Object({ name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }, { additionalProperties: false }),
    response: Vm,
    handler: async ({ params, body, services, auth }) => typed(await services.vms.createFromTemplate(params.id, body.name, auth.project())),
  }),
  route({
    method: 'GET', path: '/vms/{id}', operationId: 'inspectVm', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: VM },
    summary: 'Inspect a VM: its record and what its host knows (accelerator, QEMU argv, vCPU pinning, sockets)',
    params: IdParam, response: Type.Intersect([Vm, Type.Object({ host: Type.Unknown({ description: 'Host view; null when the host has no state for it or its agent does not answer' }), hostError: Type.Optional(Type.String({ description: 'Why the host view is missing (its agent is down)' })) })]),
    handler: async ({ params, services }) => {
      const v = await services.vms.inspect(params.id);
      return { ...typed(v), network: { endpoints: services.networks.endpointsOf(v.id) } };
    },
  }),
  route({
    method: 'DELETE', path: '/vms/{id}', operationId: 'removeVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Remove a VM, its overlay disk, saved state and sockets (force kills a live one)', params: IdParam,
    query: Type.Object({ force: Type.Boolean({ default: false }) }), response: Empty,
    handler: async ({ params, query, services }) => {
      await services.vms.remove(params.id, query.force);
      return { status: 204 };
    },
  }),
  route({
    method: 'POST', path: '/vms/{id}/start', operationId: 'startVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Boot a created or stopped VM', params: IdParam, response: Vm,
    handler: async ({ params, services }) => typed(await services.vms.start(params.id)),
  }),
  route({
    method: 'POST', path: '/vms/{id}/stop', operationId: 'stopVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Stop a VM: ACPI power button, then SIGKILL after the timeout (default 30 s)', params: IdParam,
    body: Type.Object({ timeout: Type.Optional(Type.Integer({ minimum: 0, description: 'Seconds before SIGKILL' })) }),
    response: Vm,
    handler: async ({ params, body, services }) => typed(await services.vms.stop(params.id, body.timeout)),
  }),
  route({
    method: 'POST', path: '/vms/{id}/kill', operationId: 'killVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Send a signal to QEMU (SIGKILL: hard power-off; SIGTERM: QEMU quits)', params: IdParam,
    body: Type.Object({ signal: Type.String({ default: 'SIGKILL' }) }), response: Vm,
    handler: async ({ params, body, services }) => typed(await services.vms.kill(params.id, body.signal)),
  }),
  route({
    method: 'POST', path: '/vms/{id}/pause', operationId: 'pauseVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Stop the vCPUs', params: IdParam, response: Vm,
    handler: async ({ params, services }) => typed(await services.vms.pause(params.id)),
  }),
  route({
    method: 'POST', path: '/vms/{id}/unpause', operationId: 'unpauseVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Resume the vCPUs', params: IdParam, response: Vm,
    handler: async ({ params, services }) => typed(await services.vms.unpause(params.id)),
  }),
  route({
    method: 'POST', path: '/vms/{id}/resize', operationId: 'resizeVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Resize a VM where QEMU allows it: while it runs, memory through the balloon (below its boot size and back up) and vCPUs added by hot-plug up to its maxCpus; anything while it is stopped',
    params: IdParam,
    body: Type.Object({ cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })), memoryMiB: Type.Optional(Type.Integer({ minimum: 16 })) }, { additionalProperties: false }),
    response: Type.Intersect([Vm, Type.Object({ balloonMiB: Type.Optional(Type.Integer({ description: 'Memory the running guest has now (balloon target)' })) })]),
    handler: async ({ params, body, services }) => typed(await services.vms.resize(params.id, body)),
  }),
  route({
    method: 'POST', path: '/vms/{id}/save', operationId: 'saveVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Save the whole VM state to disk (QEMU then ends; the VM is saved); returns an Operation (202)', status: 202,
    params: IdParam, response: Operation,
    handler: ({ params, services }) => ({ status: 202, body: services.vms.startSave(params.id) }),
  }),
  route({
    method: 'POST', path: '/vms/{id}/restore', operationId: 'restoreVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Bring a saved VM back, the guest continuing where it was; returns an Operation (202)', status: 202,
    params: IdParam, response: Operation,
    handler: ({ params, services }) => ({ status: 202, body: services.vms.startRestore(params.id) }),
  }),
  route({
    method: 'POST', path: '/vms/{id}/migrate', operationId: 'migrateVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Live-migrate a running VM to another agent: RAM pre-copied while the guest runs, then a short pause; '
      + 'returns an Operation (202) whose result reports the measured downtime, total time, bytes and RAM passes',
    status: 202, params: IdParam,
    body: Type.Object({
      to: Type.String({ minLength: 1, description: 'The destination agent' }),
      maxDowntimeMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 60000, description: 'Longest pause QEMU may plan for the last pass (default 300, as QEMU)' })),
    }, { additionalProperties: false }),
    response: Operation,
    handler: ({ params, body, services }) => ({ status: 202, body: services.vms.startMigrate(params.id, body.to, body.maxDowntimeMs !== undefined ? { maxDowntimeMs: body.maxDowntimeMs } : {}) }),
  }),
  route({
    method: 'POST', path: '/vms/{id}/console', operationId: 'vmConsole', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'The serial console both ways over one request: the request body (streamed) goes to the guest, '
      + 'its output streams back as NDJSON frames of base64 bytes until QEMU ends or the client goes. One client at a time.',
    params: IdParam, rawBody: 'application/octet-stream', streams: 'ndjson',
    response: Type.Object({ data: Type.String({ description: 'base64 bytes from the serial line' }) }),
    handler: async ({ params, services, req, signal }) => stream('ndjson', await services.vms.console(params.id, req, signal)),
  }),
  route({
    method: 'GET', path: '/vms/{id}/logs', operationId: 'vmLogs', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: VM },
    summary: 'The serial console output as newline-delimited JSON records; follow=true streams until QEMU ends', params: IdParam,
    query: Type.Object({ follow: Type.Boolean({ default: false }), tail: Type.Optional(Type.Integer({ minimum: 0 })) }),
    response: LogLine, streams: 'ndjson',
    handler: ({ params, query, services, signal }) =>
      stream('ndjson', services.vms.logs(params.id, { follow: query.follow, ...(query.tail !== undefined ? { tail: query.tail } : {}), signal })),
  }),
];
