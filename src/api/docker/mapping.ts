/**
 * Docker's shapes to Nimbus's and back: the create body, `ps` rows and their Status strings,
 * inspect documents, image and network listings. Pure functions (tested in mapping.test.ts).
 */
import { InvalidArgument } from '../../core/errors.js';
import type { CreateContainerInput } from '../../control/compute/container-service.js';
import type { ContainerRecord, ContainerStatus, HealthcheckConfig, NetworkRecord, PortSpec, RestartPolicyName } from '../../store/records.js';
import type { DockerContainerCreate } from './schemas.js';
import { humanDuration } from '../../core/human-duration.js';
import { assertPublishCount, hostPortOf } from '../../core/port-ranges.js';
import { dockerMountsOf, dockerSize, mountsOfHostConfig } from './volumes.js';
import type { MountInput } from '../../control/volumes/volume-service.js';
import { withExposedPorts } from '../../control/networks/publish-all.js';
import { parseVolumesFrom } from '../../core/volumes-from.js';

/** A container as the services show it (`unknown` while its host does not answer). */
export type ContainerLike = Omit<ContainerRecord, 'status'> & { status: ContainerStatus | 'unknown' };

/** A value the client set: not absent, null, false, 0, "" nor empty. */
function isSet(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === 0 || v === '') return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === 'object') return Object.keys(v).length > 0;
  return true;
}

/** Fields Nimbus does not do yet, with the flag a user typed: refused rather than silently ignored. */
const UNSUPPORTED_CONFIG: Array<[string, string]> = [
  ['Shell', 'SHELL'], ['OnBuild', 'ONBUILD'], ['MacAddress', '--mac-address'],
];
const UNSUPPORTED_HOST: Array<[string, string]> = [
  ['Privileged', '--privileged'],
  ['CapAdd', '--cap-add'], ['CapDrop', '--cap-drop'], ['Devices', '--device'],
  ['ReadonlyRootfs', '--read-only'], ['SecurityOpt', '--security-opt'], ['PidMode', '--pid'], ['UTSMode', '--uts'], ['UsernsMode', '--userns'],
  ['CpuShares', '--cpu-shares'], ['CpusetCpus', '--cpuset-cpus'], ['CpusetMems', '--cpuset-mems'], ['CpuQuota', '--cpu-quota'], ['CpuPeriod', '--cpu-period'],
  ['MemoryReservation', '--memory-reservation'], ['KernelMemory', '--kernel-memory'], ['BlkioWeight', '--blkio-weight'], ['Ulimits', '--ulimit'],
  ['Sysctls', '--sysctl'], ['OomKillDisable', '--oom-kill-disable'], ['Init', '--init'], ['GroupAdd', '--group-add'], ['DnsOptions', '--dns-option'],
  ['DnsSearch', '--dns-search'], ['DeviceRequests', '--gpus'], ['VolumeDriver', '--volume-driver'],
];

/** --storage-opt size=SIZE, the writable layer's size (Docker's overlay2 on XFS with project quotas); no other option. */
export function toStorageBytes(opts: Record<string, string> | undefined): number | undefined {
  if (!opts) return undefined;
  let size: number | undefined;
  for (const [k, v] of Object.entries(opts)) {
    if (k.toLowerCase() !== 'size') throw new InvalidArgument(`--storage-opt ${k} is not supported: only size`);
    size = dockerSize(v, '--storage-opt size');
  }
  return size;
}

/** "name:alias" (or "name") of --link. */
function parseLink(l: string): { container: string; alias: string } {
  const [container = '', alias] = l.replace(/^\//, '').split(':');
  return { container, alias: (alias ?? container).replace(/^.*\//, '') };
}

/**
 * -p's bindings: Docker's {"80/tcp": [{HostIp, HostPort}]}. The CLI expands a container range
 * (-p 8000-8010:80-90, -p 80-90) to one key per port; a HostPort range beside one container
 * port (-p 8000-8010:80) is one port of it, chosen by the container's host.
 */
export function toPorts(bindings: NonNullable<DockerContainerCreate['HostConfig']>['PortBindings']): PortSpec[] | undefined {
  if (!bindings) return undefined;
  const ports: PortSpec[] = [];
  for (const [key, list] of Object.entries(bindings)) {
    const m = /^(\d{1,5})(?:\/(tcp|udp|sctp))?$/.exec(key);
    if (!m) throw new InvalidArgument(`invalid port "${key}"`);
    if (m[2] === 'sctp') throw new InvalidArgument('sctp ports are not supported');
    for (const b of list ?? []) {
      // -p 80 (no host port, or 0): one the container's host chooses, as dockerd does
      ports.push({
        protocol: (m[2] ?? 'tcp') as 'tcp' | 'udp', ...hostPortOf(b.HostPort), containerPort: Number(m[1]),
        ...(b.HostIp && b.HostIp !== '0.0.0.0' ? { hostIp: b.HostIp } : {}),
      });
    }
  }
  assertPublishCount(ports.length, 'HostConfig.PortBindings');
  return ports.length ? ports : undefined;
}

const RESTART_NAMES = new Set(['no', 'always', 'on-failure', 'unless-stopped']);

/** Docker's create body (and ?name=) as the Nimbus container service's input; unsupported settings are refused by name. */
export function toContainerInput(body: DockerContainerCreate, name: string | undefined): CreateContainerInput {
  const raw = body as Record<string, unknown>;
  for (const [field, flag] of UNSUPPORTED_CONFIG) if (isSet(raw[field])) throw new InvalidArgument(`${flag} is not supported by Nimbus's Docker API yet (${field})`);
  const host = (body.HostConfig ?? {}) as NonNullable<DockerContainerCreate['HostConfig']> & Record<string, unknown>;
  for (const [field, flag] of UNSUPPORTED_HOST) if (isSet(host[field])) throw new InvalidArgument(`${flag} is not supported by Nimbus's Docker API yet (HostConfig.${field})`);
  const log = host.LogConfig as { Type?: string; Config?: Record<string, string> } | undefined;
  if (log && ((log.Type && log.Type !== 'json-file' && log.Type !== 'local') || isSet(log.Config))) {
    throw new InvalidArgument('--log-driver and --log-opt are not supported by Nimbus\'s Docker API yet (HostConfig.LogConfig)');
  }
  if (host.Runtime && host.Runtime !== 'runc' && host.Runtime !== 'crun') throw new InvalidArgument(`--runtime ${String(host.Runtime)} is not supported (runc or crun)`);
  if (isSet(host.MemorySwap) && host.MemorySwap !== -1 && host.MemorySwap !== host.Memory) throw new InvalidArgument('--memory-swap is not supported (swap is not limited separately)');

  const restartName = host.RestartPolicy?.Name || 'no';
  if (!RESTART_NAMES.has(restartName)) throw new InvalidArgument(`invalid restart policy "${restartName}"`);
  const restart: CreateContainerInput['restart'] = { name: restartName as RestartPolicyName, ...(restartName === 'on-failure' && host.RestartPolicy?.MaximumRetryCount ? { maxRetries: host.RestartPolicy.MaximumRetryCount } : {}) };
  if (host.AutoRemove && restartName !== 'no') throw new InvalidArgument('conflicting options: --restart and --rm');

  const mode = host.NetworkMode && host.NetworkMode !== 'default' ? host.NetworkMode : undefined;
  const endpoints = Object.entries(body.NetworkingConfig?.EndpointsConfig ?? {});
  if (endpoints.length > 1) throw new InvalidArgument('a container is created on one network; connect others afterwards (docker network connect)');
  const aliases = endpoints.flatMap(([, e]) => e?.Aliases ?? []);
  const ports = toPorts(host.PortBindings);
  const cpus = host.NanoCpus ? host.NanoCpus / 1e9 : undefined;
  const pids = host.PidsLimit && host.PidsLimit > 0 ? host.PidsLimit : undefined;
  const storageBytes = toStorageBytes(host.StorageOpt);
  const links = (host.Links ?? []).map(parseLink);
  parseVolumesFrom(host.VolumesFrom); // checked here; resolved by the create (containers.ts), which reads the other containers
  const mounts = mountsOfHostConfig({ Binds: host.Binds, Mounts: host.Mounts, Tmpfs: host.Tmpfs });
  const healthcheck = toHealthcheck(raw.Healthcheck);
  // Config.Volumes lists mount points (-v /path; compose sends it beside Binds): one no mount covers is an anonymous volume
  mounts.push(...anonymousMounts(Object.keys(body.Volumes ?? {}), mounts));
  // -P: the request's ExposedPorts (--expose) here, the image's added by the container service
  const published = host.PublishAllPorts === true ? withExposedPorts(ports, Object.keys(body.ExposedPorts ?? {})) : ports;
  return {
    image: body.Image,
    ...(name ? { name: name.replace(/^\//, '') } : {}),
    ...(body.Cmd ? { cmd: body.Cmd } : {}),
    // --entrypoint "" is [""]: the image's entrypoint dropped
    ...(body.Entrypoint ? { entrypoint: body.Entrypoint.filter((a, i, all) => !(all.length === 1 && i === 0 && a === '')) } : {}),
    env: body.Env ?? [],
    ...(body.WorkingDir ? { workdir: body.WorkingDir } : {}),
    ...(body.User ? { user: body.User } : {}),
    ...(body.Hostname ? { hostname: body.Hostname } : {}),
    ...(host.Memory ? { memoryBytes: host.Memory } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(pids !== undefined ? { pidsLimit: pids } : {}),
    ...(storageBytes !== undefined ? { storageBytes } : {}),
    restart,
    autoRemove: host.AutoRemove === true,
    ...(host.Runtime ? { runtime: host.Runtime as string } : {}),
    labels: body.Labels ?? {},
    ...(body.StopSignal ? { stopSignal: body.StopSignal } : {}),
    ...(body.StopTimeout !== undefined && body.StopTimeout !== null ? { stopTimeout: body.StopTimeout } : {}),
    ...(mode ? { network: mode } : {}),
    ...(published?.length ? { ports: published } : {}),
    ...(host.PublishAllPorts === true ? { publishAll: true } : {}),
    ...(host.Dns?.length ? { dns: host.Dns } : {}),
    ...(host.ExtraHosts?.length ? { extraHosts: host.ExtraHosts } : {}),
    ...(links.length ? { links } : {}),
    ...(aliases.length ? { aliases } : {}),
    ...(mounts.length ? { mounts } : {}),
    ...(healthcheck ? { healthcheck } : {}),
    // -t, -i: the main process's terminal and stdin (StdinOnce: its end when the run's attach ends)
    ...(body.Tty ? { tty: true } : {}),
    ...(body.OpenStdin ? { openStdin: true, ...(raw.StdinOnce === true ? { stdinOnce: true } : {}) } : {}),
  };
}

/** Anonymous volumes (no source) for the paths (Config.Volumes, an image's VOLUMEs) that no mount of `mounts` covers. */
export function anonymousMounts(paths: readonly string[], mounts: readonly MountInput[]): MountInput[] {
  const out: MountInput[] = [];
  for (const p of paths) {
    const target = p.length > 1 ? p.replace(/\/+$/, '') : p;
    if (![...mounts, ...out].some((m) => m.target === target || m.target === p)) out.push({ type: 'volume', target });
  }
  return out;
}

/** Docker's Healthcheck (nanoseconds; 0 is the default) as Nimbus's (milliseconds; absent is the default). */
export function toHealthcheck(raw: unknown): HealthcheckConfig | undefined {
  if (raw === undefined || raw === null) return undefined;
  const h = raw as { Test?: unknown; Interval?: unknown; Timeout?: unknown; Retries?: unknown; StartPeriod?: unknown };
  if (!Array.isArray(h.Test) || h.Test.length === 0) return undefined; // {} or no Test: the image's (none here)
  if (!h.Test.every((t) => typeof t === 'string')) throw new InvalidArgument('Healthcheck.Test must be strings');
  const ms = (v: unknown, what: string) => {
    if (v === undefined || v === null || v === 0) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new InvalidArgument(`Healthcheck.${what} must be nanoseconds`);
    if (v < 1_000_000) throw new InvalidArgument(`Interval, Timeout and StartPeriod of a healthcheck must be at least 1ms (Healthcheck.${what})`);
    return Math.round(v / 1_000_000);
  };
  const interval = ms(h.Interval, 'Interval');
  const timeout = ms(h.Timeout, 'Timeout');
  const start = ms(h.StartPeriod, 'StartPeriod');
  if (h.Retries !== undefined && h.Retries !== null && (typeof h.Retries !== 'number' || !Number.isInteger(h.Retries) || h.Retries < 0)) throw new InvalidArgument('Healthcheck.Retries must be a whole number');
  const retries = typeof h.Retries === 'number' && h.Retries > 0 ? h.Retries : undefined;
  return {
    test: h.Test as string[],
    ...(interval !== undefined ? { intervalMs: Math.max(100, interval) } : {}),
    ...(timeout !== undefined ? { timeoutMs: Math.max(100, timeout) } : {}),
    ...(retries !== undefined ? { retries } : {}),
    ...(start !== undefined ? { startPeriodMs: start } : {}),
  };
}

/** " (healthy)", " (health: starting)", " (unhealthy)" after a running container's status, as ps shows it. */
function healthSuffix(c: ContainerLike): string {
  if (!c.health || !c.config.healthcheck) return '';
  return c.health.status === 'starting' ? ' (health: starting)' : ` (${c.health.status})`;
}

/** Docker's units.HumanDuration: how `ps` says how long ago (one implementation with the CLI's). */
export { humanDuration };

const since = (iso: string | null, now: number) => humanDuration(iso ? Math.max(0, now - Date.parse(iso)) : 0);

/** `ps`'s STATUS column: "Up 3 seconds", "Exited (0) 2 seconds ago", "Created". */
export function statusString(c: ContainerLike, now = Date.now()): string {
  switch (c.status) {
    case 'created': return 'Created';
    case 'running': return `Up ${since(c.startedAt, now)}${healthSuffix(c)}`;
    case 'paused': return `Up ${since(c.startedAt, now)} (Paused)`;
    case 'restarting': return `Restarting (${c.exitCode ?? 0}) ${since(c.finishedAt, now)} ago`;
    case 'exited': return c.finishedAt ? `Exited (${c.exitCode ?? 0}) ${since(c.finishedAt, now)} ago` : `Exited (${c.exitCode ?? 0})`;
    case 'removing': return 'Removal In Progress';
    case 'dead': return 'Dead';
    default: return 'Unknown (its host does not answer)';
  }
}

/** Docker's State word; a container whose host does not answer is shown "dead" (Docker has no "unknown"). */
export function dockerState(c: ContainerLike): string {
  return c.status === 'unknown' ? 'dead' : c.status;
}

/** "docker.io/library/busybox:latest" → "busybox:latest", as the docker CLI shows names. */
export function familiarName(ref: string): string {
  return ref.replace(/^docker\.io\/library\//, '').replace(/^docker\.io\//, '');
}

const unix = (iso: string | null | undefined) => (iso ? Math.floor(Date.parse(iso) / 1000) : 0);

/** What the container runs, as `ps` shows it. */
function commandOf(c: ContainerLike): string {
  return [...(c.config.entrypoint ?? []), ...(c.config.cmd ?? [])].join(' ');
}

function dockerPorts(ports: PortSpec[] | undefined): Array<{ IP?: string; PrivatePort: number; PublicPort?: number; Type: string }> {
  return (ports ?? []).map((p) => ({ IP: p.hostIp ?? '0.0.0.0', PrivatePort: p.containerPort, PublicPort: p.hostPort, Type: p.protocol }));
}

/**
 * A container's SizeRw and SizeRootFs (ps -s, system df): its writable layer as its host measured
 * it (0 when the host did not answer), and that with its image's size.
 */
export function layerSizes(c: Pick<ContainerRecord, 'id' | 'imageDigest'>, usage: ReadonlyMap<string, { bytes: number }>, imageSize: ReadonlyMap<string, number>): { SizeRw: number; SizeRootFs: number } {
  const rw = usage.get(c.id)?.bytes ?? 0;
  return { SizeRw: rw, SizeRootFs: rw + (imageSize.get(c.imageDigest) ?? 0) };
}

/** One row of GET /containers/json. */
export function containerSummary(c: ContainerLike, now = Date.now()): Record<string, unknown> {
  return {
    Id: c.id,
    Names: [`/${c.name}`],
    Image: familiarName(c.config.image),
    ImageID: c.imageDigest,
    Command: commandOf(c),
    Created: unix(c.createdAt),
    Ports: dockerPorts(c.config.ports),
    Labels: c.config.labels ?? {},
    State: dockerState(c),
    Status: statusString(c, now),
    HostConfig: { NetworkMode: c.config.network ?? 'default' },
    NetworkSettings: { Networks: {} },
    Mounts: dockerMountsOf(c),
  };
}

export interface EndpointLike { network: string; networkId: string; address: string; gateway: string; prefix: number; mac: string }

/** GET /containers/{id}/json: the fields the docker CLI reads (logs and attach look at Config.Tty). */
export function containerInspect(c: ContainerLike, endpoints: EndpointLike[] = []): Record<string, unknown> {
  const status = dockerState(c);
  const networks = Object.fromEntries(endpoints.map((e) => [e.network, {
    NetworkID: e.networkId, EndpointID: '', Gateway: e.gateway, IPAddress: e.address, IPPrefixLen: e.prefix, MacAddress: e.mac, Aliases: c.config.aliases ?? null,
  }]));
  const first = endpoints[0];
  const ports: Record<string, Array<{ HostIp: string; HostPort: string }>> = {};
  for (const p of c.config.ports ?? []) (ports[`${p.containerPort}/${p.protocol}`] ??= []).push({ HostIp: p.hostIp ?? '0.0.0.0', HostPort: String(p.hostPort) });
  return {
    Id: c.id,
    Created: c.createdAt,
    Path: (c.config.entrypoint ?? c.config.cmd ?? [])[0] ?? '',
    Args: [...(c.config.entrypoint ?? []), ...(c.config.cmd ?? [])].slice(1),
    State: {
      Status: status,
      Running: c.status === 'running' || c.status === 'paused',
      Paused: c.status === 'paused',
      Restarting: c.status === 'restarting',
      OOMKilled: c.oomKilled,
      Dead: c.status === 'dead',
      Pid: c.pid ?? 0,
      ExitCode: c.exitCode ?? 0,
      Error: '',
      StartedAt: c.startedAt ?? '0001-01-01T00:00:00Z',
      FinishedAt: c.finishedAt ?? '0001-01-01T00:00:00Z',
      ...(c.config.healthcheck && c.health ? {
        Health: {
          Status: c.health.status, FailingStreak: c.health.failingStreak,
          Log: c.health.log.map((p) => ({ Start: p.start, End: p.end, ExitCode: p.exitCode, Output: p.output })),
        },
      } : {}),
    },
    Image: c.imageDigest,
    Name: `/${c.name}`,
    RestartCount: c.restartCount,
    Driver: 'overlay',
    Platform: 'linux',
    HostConfig: {
      NetworkMode: c.config.network ?? 'default',
      AutoRemove: c.config.autoRemove,
      RestartPolicy: { Name: c.config.restart.name, MaximumRetryCount: c.config.restart.maxRetries ?? 0 },
      Memory: c.config.memoryBytes ?? 0,
      NanoCpus: c.config.cpus ? Math.round(c.config.cpus * 1e9) : 0,
      PidsLimit: c.config.pidsLimit ?? null,
      ...(c.config.storageBytes !== undefined ? { StorageOpt: { size: String(c.config.storageBytes) } } : {}),
      PortBindings: ports,
      LogConfig: { Type: 'json-file', Config: {} },
    },
    Config: {
      Hostname: c.config.hostname ?? c.id.slice(0, 12),
      User: c.config.user ?? '',
      Tty: c.config.tty === true,
      OpenStdin: c.config.openStdin === true,
      StdinOnce: c.config.stdinOnce === true,
      AttachStdin: false,
      AttachStdout: true,
      AttachStderr: true,
      Env: c.config.env,
      Cmd: c.config.cmd ?? null,
      Entrypoint: c.config.entrypoint ?? null,
      Image: familiarName(c.config.image),
      WorkingDir: c.config.workdir ?? '',
      Labels: c.config.labels ?? {},
      StopSignal: c.config.stopSignal ?? 'SIGTERM',
      ...(c.config.stopTimeout !== undefined ? { StopTimeout: c.config.stopTimeout } : {}),
      ...(c.config.healthcheck ? {
        Healthcheck: {
          Test: c.config.healthcheck.test,
          ...(c.config.healthcheck.intervalMs !== undefined ? { Interval: c.config.healthcheck.intervalMs * 1_000_000 } : {}),
          ...(c.config.healthcheck.timeoutMs !== undefined ? { Timeout: c.config.healthcheck.timeoutMs * 1_000_000 } : {}),
          ...(c.config.healthcheck.retries !== undefined ? { Retries: c.config.healthcheck.retries } : {}),
          ...(c.config.healthcheck.startPeriodMs !== undefined ? { StartPeriod: c.config.healthcheck.startPeriodMs * 1_000_000 } : {}),
        },
      } : {}),
    },
    NetworkSettings: {
      Ports: ports,
      IPAddress: first?.address ?? '',
      Gateway: first?.gateway ?? '',
      IPPrefixLen: first?.prefix ?? 0,
      MacAddress: first?.mac ?? '',
      Networks: networks,
    },
    Mounts: dockerMountsOf(c),
  };
}

/** Docker's `filters` query: {"name":["x"]} (old clients) or {"name":{"x":true}} (new ones). */
export function parseFilters(raw: string | undefined): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (!raw) return out;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new InvalidArgument('invalid filters: not JSON');
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new InvalidArgument('invalid filters: not an object');
  for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
    const values = Array.isArray(v) ? v : v && typeof v === 'object' ? Object.keys(v).filter((x) => (v as Record<string, unknown>)[x]) : undefined;
    if (!values || !values.every((x): x is string => typeof x === 'string')) throw new InvalidArgument(`invalid filter "${k}"`);
    out.set(k, values);
  }
  return out;
}

const CONTAINER_FILTERS = new Set(['name', 'label', 'status', 'id', 'health']);

/** Whether a container passes `ps --filter` (name: a regular expression as Docker's; label: key or key=value; status: State). */
export function matchesContainerFilters(c: ContainerLike, filters: Map<string, string[]>): boolean {
  for (const [k, values] of filters) {
    if (!CONTAINER_FILTERS.has(k)) throw new InvalidArgument(`invalid filter '${k}' (name, label, status, id and health are supported)`);
    const any = (test: (v: string) => boolean) => values.length === 0 || values.some(test);
    if (k === 'name' && !any((v) => safeRegExp(v).test(c.name))) return false;
    if (k === 'id' && !any((v) => c.id.startsWith(v))) return false;
    if (k === 'status' && !any((v) => v === dockerState(c))) return false;
    if (k === 'health' && !any((v) => (v === 'none' ? !c.config.healthcheck : c.health?.status === v && !!c.config.healthcheck))) return false;
    // every label given must match (Docker's rule for labels)
    if (k === 'label' && !values.every((v) => {
      const i = v.indexOf('=');
      const key = i < 0 ? v : v.slice(0, i);
      const labels = c.config.labels ?? {};
      return i < 0 ? key in labels : labels[key] === v.slice(i + 1);
    })) return false;
  }
  return true;
}

function safeRegExp(s: string): RegExp {
  if (s.length > 256) throw new InvalidArgument('name filter too long');
  try {
    return new RegExp(s);
  } catch {
    throw new InvalidArgument(`invalid name filter "${s}"`);
  }
}

/** One network as Docker lists and inspects it. */
export function networkDoc(n: NetworkRecord, containers: Array<{ id: string; name: string; address: string }> = []): Record<string, unknown> {
  return {
    Name: n.name,
    Id: n.id,
    Created: n.createdAt,
    Scope: 'local',
    Driver: n.driver,
    EnableIPv6: false,
    IPAM: { Driver: 'default', Options: null, Config: [{ Subnet: n.subnet, Gateway: n.gateway }] },
    Internal: n.internal,
    Attachable: true,
    Ingress: false,
    ConfigFrom: { Network: '' },
    ConfigOnly: false,
    Containers: Object.fromEntries(containers.map((c) => [c.id, { Name: c.name, EndpointID: '', MacAddress: '', IPv4Address: c.address, IPv6Address: '' }])),
    Options: {},
    Labels: n.labels,
  };
}

/** Docker's multiplexed stream framing: [stream, 0, 0, 0, size (big-endian u32)] then the bytes. 1 stdout, 2 stderr. */
export function frame(stream: 'stdout' | 'stderr', payload: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header[0] = stream === 'stdout' ? 1 : 2;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}
