/**
 * What a container create asks, checked before anything is held: the input validated, its links,
 * network and volumes resolved, and the agent's create request and the placement built from it.
 * Also the create request rebuilt from an existing record (a rebuild on another host).
 */
import { Conflict, InvalidArgument, PermissionDenied, Unavailable } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import { MIN_MEMORY_BYTES } from '../../core/limits.js';
import { secureGuestMemoryMiB } from '../../agent/drivers/secure/guest-memory.js';
import type { ContainerCreateRequest } from '../../agent/agent.js';
import type { ProcessSpec } from '../../agent/drivers/instance-driver.js';
import type { Store } from '../../store/store.js';
import type { ContainerConfig, ContainerRecord, ImageRecord, NetworkRecord } from '../../store/records.js';
import type { ImageService } from '../images/image-service.js';
import type { ProjectScope } from '../identity/scope.js';
import type { NetworkIntent, NetworkService } from '../networks/network-service.js';
import { withExposedPorts } from '../networks/publish-all.js';
import { agentMounts, type MountInput, type StoredMount, type VolumeService } from '../volumes/volume-service.js';
import { checkHostname, checkIpv4, checkPorts, checkResources, checkStopTimeout } from './container-input.js';
import { withGroupResolved, type PlacementInput } from './hosts.js';
import { generateName } from './names.js';
import { checkProcess, processSpecFor } from './process-spec.js';

const MiB = 1024 * 1024;

export interface CreateContainerInput extends Omit<ContainerConfig, 'mounts'> {
  name?: string;
  /** -P: each port the image exposes (ExposedPorts) and `ports` does not name, published on a free host port. */
  publishAll?: boolean;
  /** Volumes by name, host paths, tmpfs (docs/volumes.md); the record keeps them resolved (StoredMount). */
  mounts?: MountInput[];
}

export interface CreateOptions {
  /**
   * Start it too, in the same request (Incus's `"start": true`; `nimbus run -d`). A start that
   * fails leaves the container created, or removes it when it is autoRemove (as dockerd does),
   * and the error names it in details.container.
   */
  start?: boolean;
  /** Where it may run (--host, --zone, --constraint, --group); the scheduler decides. */
  placement?: PlacementInput;
  /** The caller may bind host paths (a system administrator: the API edge decides). Default: no. */
  mayBindHostPaths?: boolean;
  /**
   * The caller may put the container on its host's network (a system administrator: the API edge
   * decides). Default: no. There it sees and reaches every interface of the host, other projects'
   * bridges and containers included, and with CAP_NET_RAW can read their traffic.
   */
  mayUseHostNetwork?: boolean;
}

export interface CreateRequestDeps {
  store: Store;
  images: Pick<ImageService, 'resolve'>;
  networks: Pick<NetworkService, 'intent' | 'linkEnv' | 'unleased' | 'ensureOnHost' | 'lease'>;
  /** The daemon's volume service, once it is set (absent: a create with mounts is refused). */
  volumes(): VolumeService | undefined;
  /** A container by id or name in `scope` (a link's target). */
  get(idOrName: string, scope: ProjectScope): Promise<ContainerRecord>;
  /**
   * The memory a container created without a size is given in this project (limited and charged),
   * or undefined: it runs best effort (docs/identity.md, "A container's memory").
   */
  defaultMemoryBytes?(projectId: string): number | undefined;
  /**
   * What the writable layer of a container created without a storage size may hold in this
   * project (bounded and charged to its disk), or undefined: unbounded (docs/identity.md, "A
   * container's writable layer").
   */
  defaultStorageBytes?(projectId: string): number | undefined;
}

/** A create checked and resolved: what admission, placement and the record are made from. */
export interface PreparedCreate {
  name: string;
  image: ImageRecord;
  /** The record's config: the image as asked, links by id, the mounts resolved (volumes by id). */
  config: ContainerConfig;
  request: Omit<ContainerCreateRequest, 'id'>;
  intent: NetworkIntent;
  /** Where it may run, a group resolved and the host it must share (container:, volumes) pinned. */
  placement: PlacementInput;
}

/**
 * Check and resolve a create. `taken`: whether a name is in use in the project (the store, and
 * names other creates hold). `made`: the anonymous volumes made meanwhile, for the caller to undo.
 */
export async function prepareCreate(
  deps: CreateRequestDeps,
  input: CreateContainerInput,
  projectId: string,
  imageScope: ProjectScope,
  opts: CreateOptions,
  made: string[],
  taken: (name: string) => Promise<boolean>,
): Promise<PreparedCreate> {
  const image = await deps.images.resolve(input.image, imageScope);
  if (input.name !== undefined && !isValidName(input.name)) {
    throw new InvalidArgument(`invalid container name "${input.name}": use letters, digits, '_', '.', '-' (max 128)`);
  }
  if (input.name && (await taken(input.name))) {
    throw new Conflict(`the container name "${input.name}" is already in use in this project`);
  }
  if (input.memoryBytes !== undefined && input.memoryBytes < MIN_MEMORY_BYTES) {
    throw new InvalidArgument('memory limit must be at least 6 MiB');
  }
  checkResources(input);
  const memoryBytes = memoryFor(input, deps.defaultMemoryBytes?.(projectId));
  const storageBytes = input.storageBytes !== undefined ? wholeMiB(input.storageBytes) : deps.defaultStorageBytes?.(projectId);
  if (input.stopTimeout !== undefined) checkStopTimeout(input.stopTimeout, 'stopTimeout');
  if (input.hostname !== undefined) checkHostname(input.hostname);
  if (input.ip !== undefined) checkIpv4(input.ip);
  for (const d of input.dns ?? []) checkIpv4(d, 'dns');
  const { name: requestedName, mounts: mountInput, publishAll, ...asked } = {
    ...input, ...(memoryBytes !== undefined ? { memoryBytes } : {}), ...(storageBytes !== undefined ? { storageBytes } : {}),
  };
  if (input.runtime === 'vm' && asked.network === undefined) asked.network = 'none'; // microVMs have no network yet
  // -P: every port the image exposes that the request does not publish, on a port its host
  // chooses; moot without a network of its own (none, host, container:), as dockerd passes over it
  const ownNetwork = asked.network !== 'none' && asked.network !== 'host' && !asked.network?.startsWith('container:');
  if (publishAll && ownNetwork) asked.ports = withExposedPorts(asked.ports, Object.keys(image.config.config?.ExposedPorts ?? {}));
  checkPorts(asked.ports);
  if (input.runtime === 'vm' && (input.tty || input.openStdin)) throw new InvalidArgument("a secure container's main process has no terminal or stdin yet (-t, -i)");
  if (input.stdinOnce && !input.openStdin) throw new InvalidArgument('stdinOnce needs openStdin');
  // Network settings are checked before anything is made; addresses are leased once the record exists.
  const links: Array<{ container: string; alias: string }> = [];
  for (const l of asked.links ?? []) {
    const t = await deps.get(l.container, { projectId });
    if (t.status !== 'running') throw new Conflict(`cannot link to ${t.name}: it is ${t.status}`);
    links.push({ container: t.id, alias: l.alias });
  }
  const config = { ...asked, ...(links.length ? { links } : {}) };
  const intent: NetworkIntent = await deps.networks.intent(config, projectId, { projectId });
  const onHostNetwork = intent.mode === 'host' || (intent.mode === 'container' && intent.container.config.network === 'host');
  if (onHostNetwork && !opts.mayUseHostNetwork) {
    throw new PermissionDenied(`only a system administrator may put a container on its host's network (--network ${config.network ?? 'host'}): it would see every network of the host, other projects' included`);
  }
  if (links.length && intent.mode !== 'networks') throw new InvalidArgument('--link needs a network (not none, host or container:)');
  const linkNetworks = intent.mode === 'networks' ? intent.networks : [];
  for (const l of links) {
    const shares = (await deps.store.networks.leases({ instanceId: l.container })).some((x) => linkNetworks.some((n) => n.id === x.networkId));
    if (!shares) throw new InvalidArgument(`cannot link to ${(await deps.store.containers.get(l.container))?.name}: it is not on the same network`);
  }
  const name = requestedName ?? (await generateName(taken));
  const process = await processFor(deps, config, image, name, linkNetworks);
  // before a warm container is claimed or a cold one made: both paths give the same answer
  checkProcess(process);
  // volumes resolved (one that does not exist is made, as Docker does): the container runs on their host
  let mounts: StoredMount[] = [];
  let copyUp: string[] = [];
  let volumeHost: string | undefined;
  if (mountInput?.length) {
    const volumes = deps.volumes();
    if (!volumes) throw new Unavailable('this control plane has no volume service');
    if (config.runtime === 'vm') throw new InvalidArgument('secure containers (--runtime vm) cannot mount volumes, host paths or tmpfs yet');
    const resolved = await volumes.resolveMounts(mountInput, projectId, {
      mayBindHostPaths: opts.mayBindHostPaths === true,
      ...(opts.placement?.host !== undefined ? { pinnedHost: opts.placement.host } : {}),
      made,
    });
    mounts = resolved.mounts;
    copyUp = resolved.copyUp;
    volumeHost = resolved.host;
  }
  const request = requestOf(deps, config, image, name, process, intent, mounts, copyUp);
  // container:<id> shares that container's namespace, so it runs on that container's host
  const netnsHost = intent.mode === 'container' ? intent.container.host : undefined;
  if (netnsHost !== undefined && opts.placement?.host !== undefined && opts.placement.host !== netnsHost) {
    throw new InvalidArgument(`--network container:${intent.mode === 'container' ? intent.container.name : ''} runs on that container's host ${netnsHost}, not ${opts.placement.host}`);
  }
  // its volumes are on one host (resolveMounts checked them against a pin): it runs there
  if (netnsHost !== undefined && volumeHost !== undefined && netnsHost !== volumeHost) {
    throw new Conflict(`--network container:${intent.mode === 'container' ? intent.container.name : ''} runs on host ${netnsHost}, and this container's volumes are on ${volumeHost}`);
  }
  const sameHostAs = netnsHost ?? volumeHost;
  // a server group named in the request resolves before anything is held (NotFound names it)
  const placement: PlacementInput = await withGroupResolved(deps.store, projectId, { ...opts.placement, ...(sameHostAs !== undefined ? { host: sameHostAs } : {}) });
  return {
    name, image, request, intent, placement,
    // the mounts resolved (volumes by id) are kept in the config: what a volume's in-use check reads
    config: { ...config, image: input.image, ...(mounts.length ? { mounts } : {}) },
  };
}

/**
 * The memory a container is limited to and charged: what it asks; unasked, a secure container's
 * guest memory (its microVM spends it either way) or the project's default (undefined: none,
 * best effort).
 */
function memoryFor(input: Pick<CreateContainerInput, 'memoryBytes' | 'runtime'>, projectDefault: number | undefined): number | undefined {
  if (input.runtime === 'vm') return secureGuestMemoryMiB(input.memoryBytes) * MiB;
  return input.memoryBytes ?? projectDefault;
}

/** A size rounded up to whole MiB, as the disk quota counts and the snapshotter makes filesystems. */
function wholeMiB(bytes: number): number {
  return Math.ceil(bytes / MiB) * MiB;
}

/** The main process a create asks for: the image's defaults under the config's, with its links' environment first. */
async function processFor(
  deps: Pick<CreateRequestDeps, 'store' | 'networks'>, config: ContainerConfig, image: ImageRecord, name: string, linkNetworks: readonly NetworkRecord[],
): Promise<ProcessSpec> {
  const linkEnv = await deps.networks.linkEnv({ name }, config.links ?? [], linkNetworks, async (t) => Object.keys((await deps.store.images.get(t.imageDigest))?.config.config?.ExposedPorts ?? {}));
  return processSpecFor(image.config, linkEnv.length ? { ...config, env: [...linkEnv, ...config.env] } : config);
}

/** The agent's create request for a config (its network as named: the addresses are leased once the record exists). */
function requestOf(
  deps: Pick<CreateRequestDeps, 'networks'>, config: ContainerConfig, image: ImageRecord, name: string, process: ProcessSpec, intent: NetworkIntent, mounts: StoredMount[], copyUp: readonly string[] = [],
): Omit<ContainerCreateRequest, 'id'> {
  return {
    name, imageChainId: image.chainId, process,
    resources: {
      ...(config.memoryBytes !== undefined ? { memoryBytes: config.memoryBytes } : {}),
      ...(config.cpus !== undefined ? { cpus: config.cpus } : {}),
      ...(config.pidsLimit !== undefined ? { pidsLimit: config.pidsLimit } : {}),
    },
    // unset = the id's first 12 characters, decided by the agent (so a warm container fits)
    ...(config.hostname !== undefined ? { hostname: config.hostname } : {}),
    ...(config.runtime ? { runtime: config.runtime } : {}),
    ...(config.labels ? { labels: config.labels } : {}),
    ...(config.log ? { log: config.log } : {}),
    // the networks named now (a warm container may already be on the first), addresses leased after admission
    network: intent.mode === 'networks' ? { mode: 'networks', endpoints: deps.networks.unleased(intent), ports: [], extraHosts: [], dns: [] } : intent.mode === 'container' ? { mode: 'container', container: intent.container.id } : { mode: intent.mode },
    // copyUp only in a create's own request: a rebuild elsewhere or a move carries the volume's data, not the image's
    ...(mounts.length ? { mounts: agentMounts(mounts, copyUp) } : {}),
    ...(config.storageBytes !== undefined ? { storageBytes: config.storageBytes } : {}),
  };
}

/**
 * The create request of an existing container, from its record, for `host` (a rebuild on
 * another host, healing.ts): its networks laid out there and its leases kept (same addresses).
 */
export async function requestFor(deps: Pick<CreateRequestDeps, 'store' | 'networks'>, c: ContainerRecord, image: ImageRecord, host: string): Promise<ContainerCreateRequest> {
  const intent = await deps.networks.intent(c.config, c.projectId, { projectId: c.projectId });
  const linkNetworks = intent.mode === 'networks' ? intent.networks : [];
  const request = requestOf(deps, c.config, image, c.name, await processFor(deps, c.config, image, c.name, linkNetworks), intent, c.config.mounts ?? []);
  if (intent.mode === 'networks') await deps.networks.ensureOnHost(intent.networks, host);
  request.network = await deps.networks.lease(c, intent);
  return { id: c.id, ...request };
}
