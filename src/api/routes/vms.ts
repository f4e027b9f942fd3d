import { Type } from '@sinclair/typebox';
import { route, stream, type RequestAuth } from '../route.js';
import { paged, PageQuery } from '../paging.js';
import type { VmRecord, VmStatus } from '../../store/records.js';
import type { VmInspect } from '../../agent/drivers/vm/vm-driver.js';
import { HOST_PATH } from '../host-paths.js';
import { MAX_STOP_TIMEOUT_SEC } from '../../core/limits.js';
import { messageFor, PermissionDenied } from '../../core/errors.js';

/** A guest's memory: 1 TiB at most (a larger figure is a typo, and it is charged to the quota). */
const MAX_VM_MEMORY_MIB = 1024 * 1024;
import type { Services } from '../../control/services.js';
import type { ProjectScope } from '../../control/identity/scope.js';
import { Empty, IdParam, LogLine, Operation, SignalSpec, Stats } from '../schemas.js';
import { PlacementFields } from './containers.js';
import { checkPinnedHost } from '../../control/compute/hosts.js';

const VmCreate = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
    cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'vCPUs (default 1)' })),
    maxCpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'vCPUs it may grow to while running (hot-plug with resize); default: its cpus, no hot-plug' })),
    memoryMiB: Type.Optional(Type.Integer({ minimum: 16, maximum: MAX_VM_MEMORY_MIB, description: `Guest memory in MiB (default 256; 16 to ${MAX_VM_MEMORY_MIB})` })),
    kernel: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, [HOST_PATH]: true, description: 'Direct kernel boot: a kernel image of the image service (POST /disk-images?type=kernel) by name; system administrators may give a host path in a directory the operator allowed (nimbusd --vm-host-dir)' })),
    initrd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, [HOST_PATH]: true, description: 'An initrd image (?type=initrd) by name, or, as for kernel, an allowed host path' })),
    append: Type.Optional(Type.String({ maxLength: 4096, description: 'Kernel command line' })),
    disk: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, [HOST_PATH]: true, description: 'System administrators only: a base disk file (raw or qcow2) in a directory the operator allowed; the VM gets a copy-on-write overlay of it. Everyone else names a disk image in image' })),
    pin: Type.Optional(Type.Array(Type.Integer({ minimum: 0, maximum: 4095 }), { maxItems: 64, description: 'System administrators only (a member gets a 403): host CPUs, vCPU i running on pin[i % length]. The host\'s CPUs are shared by every tenant and the host\'s own services, so which ones a VM takes is the operator\'s choice; without it the host\'s scheduler spreads the vCPUs' })),
    image: Type.Optional(Type.String({ minLength: 1, description: 'A disk image of the image service (nimbus image import-disk): the root disk is a qcow2 overlay backed by it' })),
    bootVolume: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'A block volume of the project (name or id) to boot from: attached read-write as the boot disk; the VM runs on its host; removing the VM keeps the volume' })),
    ha: Type.Optional(Type.Boolean({ description: 'High availability: when its host dies while it runs, the VM is rebuilt on another host from its images (a fresh disk over its disk image: what the dead host held is not reachable) with the same addresses. Refused for a VM booting from host files or with block volumes' })),
    agent: Type.Optional(Type.String({ minLength: 1, description: 'The older name of host' })),
    ...PlacementFields,
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

/** VM routes act on the project of the VM named in the path, looked up in the caller's scope; handlers get its full id. */
const VM = {
  param: 'id', kind: 'vm',
  owner: async (s: Services, ref: string, scope: ProjectScope) => {
    const v = await s.vms.get(ref, scope);
    return { projectId: v.projectId, id: v.id };
  },
};

const isSystemAdmin = (auth: RequestAuth) => auth.principal?.systemAdmin === true;

/**
 * Pinning vCPUs to host CPUs is an operator's act (OpenStack keeps it in administrators'
 * flavors, hw:cpu_policy): the host's CPUs are every tenant's and its own services', and a
 * member choosing them would put its vCPUs on the ones others were given or the host needs.
 */
function checkCpuPin(pin: number[] | undefined, isAdmin: boolean): void {
  if (pin !== undefined && !isAdmin) {
    throw new PermissionDenied('only a system administrator may pin a VM\'s vCPUs to host CPUs (pin): leave it out and the host\'s scheduler places them');
  }
}

/** A VM record as the service shows it (its status "unknown" while its host is down), with the host's view when inspected. */
type ShownVm = Omit<VmRecord, 'status'> & { status: VmStatus | 'unknown'; host?: VmInspect | null };

/**
 * What a VM's record says of its host, for those who may know it: system administrators see
 * everything; others see images by name (not the content store's paths) and no host view
 * beyond the accelerator, sizes, state and pinning (no QEMU argv, sockets, pid or files).
 */
function forViewer<T extends ShownVm>(v: T, auth: RequestAuth): T {
  if (isSystemAdmin(auth)) return v;
  const { kernel, initrd, disk, kernelImage, initrdImage, diskImage, ...config } = v.config;
  const named = {
    ...(kernelImage ? { kernel: kernelImage.name, kernelImage } : kernel ? { kernel: '(host file)' } : {}),
    ...(initrdImage ? { initrd: initrdImage.name, initrdImage } : initrd ? { initrd: '(host file)' } : {}),
    ...(diskImage ? { diskImage } : disk ? { disk: '(host file)' } : {}),
  };
  const out = { ...v, config: { ...config, ...named } };
  if (v.host) {
    const { qemuPid: _p, qmpSocket: _q, consoleSocket: _c, consoleLog: _l, rootDisk: _r, savedState: _s, argv: _a, ...shown } = v.host;
    out.host = shown as VmInspect;
  }
  return out;
}

/** Records carry their instance type, so a client merging /containers and /vms can tell them apart. */
const typed = <T extends object>(v: T) => ({ ...v, type: 'vm' as const });
/** A VM as this caller may see it (forViewer), typed. */
const shown = <T extends ShownVm>(v: T, auth: RequestAuth) => typed(forViewer(v, auth));

export const vmRoutes = [
  route({
    method: 'GET', path: '/vms', operationId: 'listVms', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: 'query-list' },
    summary: 'List VMs (running and paused ones unless all=true); paged with limit and after (oldest first), the next page in the Link header',
    query: Type.Object({ all: Type.Boolean({ default: false }), ...PageQuery }),
    response: Type.Array(Vm),
    handler: async ({ query, services, auth, req }) => paged(
      (await services.vms.list({ all: query.all })).filter((v) => (auth.projectId ? v.projectId === auth.projectId : auth.canRead(v.projectId))),
      (v) => [v.createdAt, v.id], query, req, (v) => shown(services.vms.view(v), auth),
    ),
  }),
  route({
    method: 'POST', path: '/vms', operationId: 'createVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Create a VM (kernel boot or disk image); it is created, not started', status: 201,
    body: VmCreate, response: Vm,
    handler: async ({ body, services, auth }) => {
      checkPinnedHost({ ...(body.host !== undefined ? { host: body.host } : {}) }, isSystemAdmin(auth));
      checkPinnedHost({ ...(body.agent !== undefined ? { host: body.agent } : {}) }, isSystemAdmin(auth), 'agent');
      checkCpuPin(body.pin, isSystemAdmin(auth));
      return shown(await services.vms.create(body, auth.project(), { hostPaths: isSystemAdmin(auth) }), auth);
    },
  }),
  route({
    method: 'POST', path: '/vms/{id}/clone', operationId: 'createVmFromTemplate', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Create a VM from a saved one used as a template (same devices, disk backed by its); restore starts it', status: 201,
    params: IdParam, body: Type.Object({ name: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }, { additionalProperties: false }),
    response: Vm,
    handler: async ({ params, body, services, auth }) => shown(await services.vms.createFromTemplate(params.id, body.name, auth.project()), auth),
  }),
  route({
    method: 'GET', path: '/vms/{id}', operationId: 'inspectVm', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: VM },
    summary: 'Inspect a VM: its record and what its host knows (accelerator, QEMU argv, vCPU pinning, sockets)',
    params: IdParam, response: Type.Intersect([Vm, Type.Object({ host: Type.Unknown({ description: 'Host view; null when the host has no state for it or its agent does not answer' }), hostError: Type.Optional(Type.String({ description: 'Why the host view is missing (its agent is down); the agent\'s address for system administrators only' })) })]),
    handler: async ({ params, services, auth }) => {
      const { hostError, ...v } = await services.vms.inspect(params.id);
      return {
        ...shown(services.vms.view(v), auth),
        ...(hostError ? { hostError: messageFor(hostError, isSystemAdmin(auth)) } : {}),
        network: { endpoints: await services.networks.endpointsOf(v.id) },
      };
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
    handler: async ({ params, services, auth }) => shown(await services.vms.start(params.id), auth),
  }),
  route({
    method: 'POST', path: '/vms/{id}/stop', operationId: 'stopVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Stop a VM: ACPI power button, then SIGKILL after the timeout (default 30 s)', params: IdParam,
    body: Type.Object({ timeout: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_STOP_TIMEOUT_SEC, description: `Seconds before SIGKILL (0 to ${MAX_STOP_TIMEOUT_SEC}); a kill or a forced removal cuts the wait short` })) }, { additionalProperties: false }),
    response: Vm,
    handler: async ({ params, body, services, auth }) => shown(await services.vms.stop(params.id, body.timeout), auth),
  }),
  route({
    method: 'POST', path: '/vms/{id}/kill', operationId: 'killVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Send a signal to QEMU (SIGKILL: hard power-off; SIGTERM: QEMU quits)', params: IdParam,
    body: Type.Object({ signal: SignalSpec({ default: 'SIGKILL', description: 'SIGKILL cuts a graceful stop in progress short' }) }, { additionalProperties: false }), response: Vm,
    handler: async ({ params, body, services, auth }) => shown(await services.vms.kill(params.id, body.signal), auth),
  }),
  route({
    method: 'POST', path: '/vms/{id}/pause', operationId: 'pauseVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Stop the vCPUs', params: IdParam, response: Vm,
    handler: async ({ params, services, auth }) => shown(await services.vms.pause(params.id), auth),
  }),
  route({
    method: 'POST', path: '/vms/{id}/unpause', operationId: 'unpauseVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Resume the vCPUs', params: IdParam, response: Vm,
    handler: async ({ params, services, auth }) => shown(await services.vms.unpause(params.id), auth),
  }),
  route({
    method: 'POST', path: '/vms/{id}/resize', operationId: 'resizeVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Resize a VM where QEMU allows it: while it runs, memory through the balloon (below its boot size and back up) and vCPUs added by hot-plug up to its maxCpus; anything while it is stopped',
    params: IdParam,
    body: Type.Object({ cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })), memoryMiB: Type.Optional(Type.Integer({ minimum: 16, maximum: MAX_VM_MEMORY_MIB })) }, { additionalProperties: false }),
    response: Type.Intersect([Vm, Type.Object({ balloonMiB: Type.Optional(Type.Integer({ description: 'Memory the running guest has now (balloon target)' })) })]),
    handler: async ({ params, body, services, auth }) => shown(await services.vms.resize(params.id, body), auth),
  }),
  route({
    method: 'POST', path: '/vms/{id}/save', operationId: 'saveVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Save the whole VM state to disk (QEMU then ends; the VM is saved); returns an Operation (202)', status: 202,
    params: IdParam, response: Operation,
    handler: async ({ params, services }) => ({ status: 202, body: await services.vms.startSave(params.id) }),
  }),
  route({
    method: 'POST', path: '/vms/{id}/restore', operationId: 'restoreVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Bring a saved VM back, the guest continuing where it was; returns an Operation (202)', status: 202,
    params: IdParam, response: Operation,
    handler: async ({ params, services }) => ({ status: 202, body: await services.vms.startRestore(params.id) }),
  }),
  route({
    method: 'POST', path: '/vms/{id}/migrate', operationId: 'migrateVm', tag: 'vms', access: 'write',
    auth: { role: 'member', project: VM },
    summary: 'Live-migrate a running VM to another agent: RAM pre-copied while the guest runs, then a short pause; '
      + 'returns an Operation (202) whose result reports the measured downtime, total time, bytes and RAM passes',
    status: 202, params: IdParam,
    body: Type.Object({
      to: Type.String({ minLength: 1, description: 'System administrators only: the destination agent (choosing a host is pinning, as --host on a create)' }),
      maxDowntimeMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 60000, description: 'Longest pause QEMU may plan for the last pass (default 300, as QEMU)' })),
    }, { additionalProperties: false }),
    response: Operation,
    handler: async ({ params, body, services, auth }) => {
      // a named host skips the scheduler's filters (disabled, zone, constraints, groups), and its answers would tell host names
      checkPinnedHost({ host: body.to }, isSystemAdmin(auth), 'to');
      return { status: 202, body: await services.vms.startMigrate(params.id, body.to, body.maxDowntimeMs !== undefined ? { maxDowntimeMs: body.maxDowntimeMs } : {}) };
    },
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
    method: 'GET', path: '/vms/{id}/stats', operationId: 'vmStats', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: VM },
    summary: 'CPU seconds of its QEMU, memory, and network counters from its NICs, while it runs', params: IdParam, response: Stats,
    handler: ({ params, services }) => services.vms.stats(params.id),
  }),
  route({
    method: 'GET', path: '/vms/{id}/logs', operationId: 'vmLogs', tag: 'vms', access: 'read',
    auth: { role: 'reader', project: VM },
    summary: 'The serial console output as newline-delimited JSON records; follow=true streams until QEMU ends', params: IdParam,
    query: Type.Object({ follow: Type.Boolean({ default: false }), tail: Type.Optional(Type.Integer({ minimum: 0 })) }),
    response: LogLine, streams: 'ndjson',
    handler: async ({ params, query, services, signal }) =>
      stream('ndjson', await services.vms.logs(params.id, { follow: query.follow, ...(query.tail !== undefined ? { tail: query.tail } : {}), signal })),
  }),
];
