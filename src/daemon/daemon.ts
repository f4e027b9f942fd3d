/**
 * nimbusd: the embedded default runs the control plane and one local agent in
 * one process; they talk only through the Agent interface.
 *
 * Daemon states: starting → reconciling → serving → stopping → stopped.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { prepareStateDirectories, sweepTempDirs } from './state-dirs.js';
import path from 'node:path';
import { compileOptions, describeStore, type CompiledOptions, type NimbusOptions } from '../core/config.js';
import { newId } from '../core/ids.js';
import { logger } from '../core/log.js';
import { InvalidArgument, Unavailable } from '../core/errors.js';
import { addHostRoots } from '../core/redaction.js';
import type { Agent } from '../agent/agent.js';
import type { InstanceStats } from '../agent/drivers/instance-driver.js';
import { openStore } from '../store/open.js';
import type { Store } from '../store/store.js';
import { LocalAgent } from '../agent/local-agent.js';
import { Replica } from '../control/leader/replica.js';
import { every } from '../control/leader/run-while-leader.js';
import { forgetGoneReplicas } from '../control/leader/replicas.js';
import { settleGoneReplicas } from '../control/leader/gone-replicas.js';
import { SYSTEM_ACTOR } from '../control/events/actor.js';
import { OperationService } from '../control/operations/operations.js';
import { ImageService } from '../control/images/image-service.js';
import { RegistryCredentialService } from '../control/registries/registry-credentials.js';
import { SecretBox } from '../control/registries/sealed-secret.js';
import { CommitService } from '../control/images/commit-service.js';
import { BuildService } from '../control/images/build-service.js';
import { ContainerService } from '../control/compute/container-service.js';
import { HealthMonitor } from '../control/compute/health.js';
import { HealingService, healGraceFromEnv } from '../control/compute/healing.js';
import { HostFence } from '../control/compute/host-fence.js';
import { VolumeService } from '../control/volumes/volume-service.js';
import { NetworkService } from '../control/networks/network-service.js';
import { DiskImageService } from '../control/images/disk-image-service.js';
import { VmService } from '../control/compute/vm-service.js';
import { AgentDirectory } from '../control/agents/agent-directory.js';
import { remoteAgentConnector } from '../control/agents/agent-connections.js';
import { AgentCa } from '../control/agents/agent-ca.js';
import { FilterScheduler } from '../control/scheduler/filter-scheduler.js';
import { QuotaService } from '../control/quota/quota-service.js';
import { Reclaimer } from '../control/quota/reclaimer.js';
import type { Services } from '../control/services.js';
import { AccessControl } from '../control/identity/access.js';
import { IdentityService } from '../control/identity/identity-service.js';
import { ProjectService } from '../control/identity/project-service.js';
import { ApiServer } from '../api/server.js';
import { allRoutes } from '../api/routes/index.js';
import { startDockerApi } from '../api/docker/index.js';
import { processAlive } from '../core/proc.js';
import { withoutEmbedded, type HostAgents } from '../control/compute/hosts.js';
import { Metrics } from '../control/metering/metrics.js';
import { MeteringService, meteringIntervalFromEnv } from '../control/metering/meter.js';
import { quotaEventPublisher, withQuotaEvents } from '../control/metering/quota-events.js';
import { loadServerTls } from '../core/server-tls.js';
import { ServedCertificate } from '../api/edge.js';
import { isLoopbackHost } from '../core/hostname.js';

const log = logger('nimbusd');
export const VERSION = '0.1.0';
export const DEFAULT_PROJECT = 'default';

export type DaemonState = 'starting' | 'reconciling' | 'serving' | 'stopping' | 'stopped';

export interface RunningDaemon {
  readonly options: CompiledOptions;
  readonly services: Services;
  state(): DaemonState;
  tcpPort?: number;
  /** The TCP listeners serve HTTPS (--tls-cert/--tls-key). */
  tls: boolean;
  /**
   * Read --tls-cert/--tls-key again and serve the new pair on every HTTPS listener (SIGHUP: a
   * renewed certificate without a restart; open connections keep theirs). A pair that cannot serve
   * is refused with the reason and the old one stays. Returns how many listeners took it.
   */
  reloadTls(): number;
  /** The Docker Engine API on TCP (--docker-tcp), as tcp://HOST:PORT with the port it got. */
  dockerTcpUrl?: string;
  /** Where a browser finds the web dashboard (on the TCP listener, or the local dashboard port). */
  dashboardUrl?: string;
  stop(): Promise<void>;
}

/** One nimbusd (or agent) per home: a second one would fight over the store and the runtime state. */
export function takePidLock(home: string, what = 'nimbusd'): () => void {
  const file = `${home}/nimbusd.pid`;
  try {
    const other = Number(readFileSync(file, 'utf8').trim());
    if (other && other !== process.pid && processAlive(other)) {
      throw new Unavailable(`another ${what} (pid ${other}) is using ${home}`);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  writeFileSync(file, `${process.pid}\n`);
  return () => rmSync(file, { force: true });
}

async function ensureDefaultProject(store: Store): Promise<string> {
  const found = await store.projects.byName(DEFAULT_PROJECT);
  if (found) return found.id;
  const id = newId().slice(0, 32);
  try {
    await store.projects.insert({ id, name: DEFAULT_PROJECT, parentId: null, createdAt: new Date().toISOString() });
  } catch (e) {
    // another control-plane process sharing the store made it first
    const made = await store.projects.byName(DEFAULT_PROJECT);
    if (made) return made.id;
    throw e;
  }
  return id;
}

/** Projects ordered so that each comes after its parent (the ledger places a child under a known parent). */
function parentsFirst<T extends { id: string; parentId: string | null }>(projects: T[]): T[] {
  const byParent = new Map<string | null, T[]>();
  for (const p of projects) byParent.set(p.parentId, [...(byParent.get(p.parentId) ?? []), p]);
  const out: T[] = [];
  const walk = (parent: string | null) => {
    for (const p of byParent.get(parent) ?? []) {
      out.push(p);
      walk(p.id);
    }
  };
  walk(null);
  return out;
}

/**
 * What stands under the embedded agent's name with --no-agent (the agent directory needs one):
 * every call fails with the reason, so it is listed down and nothing is placed on it.
 */
/** "host:port" or "[v6]:port" (checked by compileOptions) as its parts. */
function splitHostPort(hostPort: string): { host: string; port: number } {
  const i = hostPort.lastIndexOf(':');
  return { host: hostPort.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(hostPort.slice(i + 1)) };
}

function noEmbeddedAgent(name: string): Agent & { close(): Promise<void> } {
  const quiet = new Set(['onVmExit', 'onContainerExit', 'setAddressProvider', 'close', 'claimWarmContainer']);
  return new Proxy({} as Agent & { close(): Promise<void> }, {
    get: (_t, prop) => {
      if (typeof prop !== 'string' || prop === 'then') return undefined;
      if (quiet.has(prop)) return prop === 'claimWarmContainer' ? () => undefined : async () => undefined;
      return async () => {
        throw new Unavailable(`"${name}" is not a host: this control plane runs no embedded agent (--no-agent)`);
      };
    },
  });
}

/** A listen address as it goes in a URL (an IPv6 address in brackets; any-address: loopback). */
function urlHost(host: string): string {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === '' || h === '0.0.0.0') return '127.0.0.1';
  if (h === '::') return '[::1]';
  return h.includes(':') ? `[${h}]` : h;
}

/**
 * The local dashboard port: a port already taken is a warning, not a failed start (the
 * dashboard is a convenience; the API on the socket is what the daemon is for).
 */
async function listenDashboard(api: ApiServer, where: string, tls: ServedCertificate | undefined): Promise<string | undefined> {
  const i = where.lastIndexOf(':');
  const host = where.slice(0, i).replace(/^\[|\]$/g, '') || '127.0.0.1';
  const port = Number(where.slice(i + 1));
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgument(`--dashboard must be HOST:PORT or off, got "${where}"`);
  try {
    const bound = await api.listenTcp(host, port, tls);
    return `${tls ? 'https' : 'http'}://${urlHost(host)}:${bound}/ui/`;
  } catch (e) {
    log.warn('the dashboard port could not be opened; the dashboard is off', { address: where, error: String(e) });
    return undefined;
  }
}

export interface LaunchOptions {
  /** Run no embedded agent: every instance is placed on registered agents (nimbusd --no-agent, NIMBUS_NO_AGENT=1). */
  noAgent?: boolean;
  /** Usage metering's sampling interval in ms; 0: no metering (NIMBUS_METERING_INTERVAL_MS; default 60 s). docs/metering.md */
  meteringIntervalMs?: number;
  /**
   * Without --tcp: a listener of its own on loopback for the web dashboard (HOST:PORT; the
   * API is served there too, tokens required, as on --tcp). Unset or "off": none.
   */
  dashboard?: string;
}

/** What a start opened so far, undone last first if a later step fails. */
type Undo = Array<() => unknown>;

export async function startDaemon(overrides: Partial<NimbusOptions> = {}, launch: LaunchOptions = {}): Promise<RunningDaemon> {
  const undo: Undo = [];
  try {
    return await startSteps(overrides, launch, undo);
  } catch (e) {
    // e.g. a replica refused for its agent CA must not stay listed live, nor hold the pid lock
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch (x) {
        log.warn('undoing a failed start', { error: String(x) });
      }
    }
    throw e;
  }
}

async function startSteps(overrides: Partial<NimbusOptions>, launch: LaunchOptions, undo: Undo): Promise<RunningDaemon> {
  let state: DaemonState = 'starting';
  const options = compileOptions(overrides);
  // HTTPS on the TCP listeners with the administrator's certificate: read and checked first, so a
  // pair that cannot serve stops the start before the store, the agent or any listener
  const pair = loadServerTls(options.tlsCert, options.tlsKey);
  const tls = pair ? new ServedCertificate(pair) : undefined;
  // its state directory and sockets are the host's: no member reads their paths (core/redaction.ts)
  addHostRoots([options.home, options.socket, options.dockerSocket]);
  const noAgent = launch.noAgent ?? process.env.NIMBUS_NO_AGENT === '1';
  // without an embedded agent nothing runs here: no content store, snapshots or instance directories
  prepareStateDirectories(options, { runsInstances: !noAgent });
  const releaseLock = takePidLock(options.home);
  undo.push(releaseLock);
  await sweepTempDirs();
  const store = await openStore(options.storeLocation);
  undo.push(() => store.close());
  log.info('store open', { store: describeStore(options.storeLocation), kind: store.kind });
  const defaultProjectId = await ensureDefaultProject(store);
  // this process as one replica: its leadership (always, on SQLite), events relayed to the
  // other replicas (PostgreSQL), its row among the replicas (docs/replicas.md)
  // the agent CA (HOME/agent-ca): signs TCP agents' certificates through join tokens, and the
  // client certificate this control plane calls them with; every replica of a store shares it
  const agentCa = await AgentCa.open(path.join(options.home, 'agent-ca'), store);
  const replica = await Replica.open(store, options.storeLocation);
  undo.push(() => replica.close());
  const leads = () => replica.leadership.isLeader;
  const events = replica.events;
  const operations = new OperationService(store, events, { replicaId: replica.replicaId });
  // the embedded agent's certificate from the agent CA: its live migrations go over TLS (docs/security.md)
  const agent = noAgent ? noEmbeddedAgent(options.agentName) : await LocalAgent.create(options, { migrationTls: await agentCa.embeddedAgentTls(options.agentName) });
  undo.push(() => agent.close());
  // the embedded agent and the ones registered from other processes or hosts (nimbusd agent)
  const agents = await AgentDirectory.open(store, agent, options.agentName, remoteAgentConnector(agentCa), agentCa, noAgent ? { embedded: false } : {});
  // hosts going down and coming up, for operators (no project: administrators only); told by the leader alone
  agents.onHostStateChange((host, state, reason) => {
    if (leads()) events.publish({ type: 'host', action: state, id: host, actor: SYSTEM_ACTOR, ...(reason ? { attributes: { reason } } : {}) });
  });
  undo.push(() => agents.close());
  // where instances may be placed: every agent, or with --no-agent the registered ones only
  const hosts: HostAgents = noAgent ? withoutEmbedded(agents) : agents;
  // this process's Prometheus metrics; the metering service feeds them while this replica leads
  let meter: MeteringService | undefined;
  const metrics = new Metrics({ store, events, hosts: () => agents.candidates(), warmPool: async (name) => (await agents.get(name).info()).warmPool, meter: () => meter });
  undo.push(() => metrics.close());
  const images = new ImageService(store, agent, events, operations, options);
  images.useHosts(hosts);
  // registry credentials per project (docker login), the passwords sealed under HOME/secrets.key
  const registries = new RegistryCredentialService(store, new SecretBox(path.join(options.home, 'secrets.key'), store), events, options);
  images.useCredentials((projectId, registry) => registries.credentialsFor(projectId, registry));
  const scheduler = metrics.instrumentScheduler(new FilterScheduler(store, agents, { imageLocality: images.locality() }));
  // the ledger's committed audit entries become quota events (with the caller as actor) and counts
  const quota = await QuotaService.open(withQuotaEvents(store, quotaEventPublisher(events, (kind) => metrics.observeQuota(kind))), { replicaId: replica.replicaId });
  await quota.ensureProjects(parentsFirst(await store.projects.list()));
  const networks = new NetworkService(store, agent, events, quota, {
    defaultProjectId, bridge: options.bridge, bridgeSubnet: options.bridgeSubnet, bridgeSubnetFallback: !options.bridgeSubnetExplicit, subnetPool: options.subnetPool,
  });
  networks.useHosts(hosts);
  agent.setAddressProvider(networks.addressProvider());
  const containers = new ContainerService(store, hosts, scheduler, images, events, quota, operations, networks, {
    handlesExits: leads, memoryDefaultBytes: options.containerMemoryDefaultBytes, storageDefaultBytes: options.containerStorageDefaultBytes,
  });
  const volumes = new VolumeService(store, hosts, scheduler, quota, events);
  containers.useVolumes(volumes);
  const disks = new DiskImageService(store, agent, events, () => images.collectGarbage());
  disks.useHosts(hosts); // under --no-agent an upload goes to a registered host, which checks it
  const vmHosts = noAgent ? { ...hosts, onVmExit: (l: (agent: string, id: string) => void) => agents.onVmExit(l) } : agents;
  const vms = new VmService(store, vmHosts, events, quota, operations, scheduler, networks, disks, leads);
  // block volumes (docs/volumes.md): VMs boot from them; attachments take the VM's own lock
  vms.bootVolumes = volumes.block;
  // each live migration gets certificates of its own: QEMU never holds an agent's key (docs/security.md)
  vms.migrationCredentials = (agent) => agentCa.migrationCredentials(agent);
  volumes.block.vmLock = (id, fn) => vms.lockedVm(id, fn);
  // Reclaims evict borrowers' instances: containers are stopped (no restart policy brings them
  // back), VMs are saved rather than killed (restored later, the guest goes on where it was).
  // Only the leader reclaims; a Reclaimer is made per term (its stop is final).
  const evict = async (id: string, action: string) => {
    if (await store.containers.get(id)) await containers.stop(id);
    else if (await store.vms.get(id)) await (action === 'save' ? vms.save(id) : vms.stop(id));
  };
  const identity = new IdentityService(store);
  const admin = await identity.ensureAdmin(process.env.NIMBUS_ADMIN_PASSWORD || undefined, defaultProjectId);
  if (admin.generatedPassword) {
    // Printed once, straight to stderr and never through the logger, so it lands in no log file.
    process.stderr.write(`nimbusd: created user "admin" with password ${admin.generatedPassword}\n` +
      'nimbusd: it is shown only this once; set NIMBUS_ADMIN_PASSWORD on first start to choose it\n');
  }
  const access = new AccessControl(store);
  const projects = new ProjectService(store, quota, defaultProjectId, () => access.forgetTree());
  /** A move, a migration or an evacuation in flight anywhere: its copies are not stale (fencing waits). */
  const fenceWaits = async () => (await store.operations.list(500)).some((op) => (op.status === 'running' || op.status === 'pending') && ['container.move', 'vm.migrate', 'host.evacuate'].includes(op.kind));
  const services: Services = {
    options, store, agent, agents, hosts, scheduler, replica, events, operations, images, disks, containers, networks, vms, volumes, quota, identity, projects, access, defaultProjectId,
    startedAt: new Date().toISOString(), version: VERSION, metrics,
    builds: new BuildService(images, operations, quota, options.tmpDir),
    commits: new CommitService(store, containers, images, hosts, events),
    registries,
    fence: new HostFence({ ...containers.healDeps(), vms, fenceWaits }, events),
  };

  state = 'reconciling';
  /**
   * The store against the hosts, once per leadership term (the leader alone writes what it
   * finds; a replica that becomes leader later does it again: the old leader may have died
   * half-way through something).
   */
  const reconcileAsLeader = async () => {
    const interrupted = await operations.failInterrupted();
    const rec = await containers.reconcile();
    const netRec = await networks.reconcile();
    const vmRec = await vms.reconcile();
    // volumes cut short finished, each host told which it holds (before the quota: an undone create's quota goes with it)
    const volRec = await volumes.reconcile();
    // networks and volumes hold quota too (`networks`; `volumes` and `disk`), under their own ids
    // claims first, then records: another replica's create in flight (charged, claimed, its record
    // not written yet) must not lose its claim to this pass (test/replicas.e2e.test.ts saw it)
    const claimedBefore = await store.placement.consumers();
    const [cs, vs, ns, vols] = [await store.containers.list(), await store.vms.list(), await store.networks.list(), await store.volumes.list()];
    // charges other live replicas made are theirs to finish (a create in flight has no record yet)
    const otherReplicas = new Set((await replica.registry.list()).filter((r) => r.live && r.id !== replica.replicaId).map((r) => r.id));
    const snaps = await store.volumes.listSnapshots(); // block volumes' snapshots hold `disk` under their own ids
    const quotaReleased = await quota.reconcile(new Set([...cs, ...vs, ...ns, ...vols, ...snaps].map((i) => i.id)), otherReplicas);
    // claims: instances from before the scheduler get theirs, claims of instances gone are dropped
    let claimsAdopted = 0;
    for (const c of cs) {
      if (await scheduler.adopt({ consumerId: c.id, projectId: c.projectId, kind: c.config.runtime === 'vm' ? 'secure-container' : 'container', vcpus: c.config.cpus ?? 0, memoryBytes: c.config.memoryBytes ?? 0, diskBytes: 0, host: c.host })) claimsAdopted++;
    }
    for (const v of vs) {
      if (await scheduler.adopt({ consumerId: v.id, projectId: v.projectId, kind: 'vm', vcpus: v.config.cpus, memoryBytes: v.config.memoryMiB * 1024 * 1024, diskBytes: 0, host: v.agent })) claimsAdopted++;
    }
    // a volume's claim holds its host's disk
    const claims = await scheduler.reconcile(new Set([...cs, ...vs, ...vols].map((i) => i.id)), { claimedBefore, charged: new Set(await store.quotaInstanceIds()) });
    const gc = await images.collectGarbage();
    log.info(noAgent ? 'reconciled store with the registered hosts (no embedded agent)' : 'reconciled store with host', {
      ...rec, networks: netRec, vms: vmRec, volumes: volRec, interruptedOperations: interrupted, quotaReleased, claimsAdopted, claimsReleased: claims.released.length, ...gc,
    });
  };
  // the first term's reconcile happens before serving, as it always has (SQLite: always the leader)
  let reconciledThisTerm = false;
  if (leads()) {
    await reconcileAsLeader();
    reconciledThisTerm = true;
  }

  const api = new ApiServer(allRoutes(), services);
  undo.push(() => api.close());
  await api.listenUnix(options.socket);
  // the Docker Engine API for the docker CLI, over the same services (docs/docker-api.md)
  const dockerSocket = options.dockerSocket;
  const dockerTcp = options.dockerTcp ? { ...splitHostPort(options.dockerTcp), ...(tls ? { tls } : {}) } : undefined;
  const { server: dockerApi, tcpPort: dockerTcpPort } = await startDockerApi(services, dockerSocket, dockerTcp);
  undo.push(() => dockerApi.close());
  const dockerTcpUrl = dockerTcp && dockerTcpPort !== undefined ? `tcp://${urlHost(dockerTcp.host)}:${dockerTcpPort}` : undefined;
  if (dockerTcpUrl) {
    services.dockerTcpUrl = dockerTcpUrl; // for GET /info and nimbus docker-env
    if (tls) services.dockerTcpTls = true;
  }
  let tcpPort: number | undefined;
  if (options.tcp) {
    const { host, port } = splitHostPort(options.tcp);
    tcpPort = await api.listenTcp(host, port, tls);
    if (!tls && !isLoopbackHost(host)) log.warn('the API is served on TCP without TLS: tokens and passwords cross the network in clear (nimbusd --tls-cert/--tls-key, or TLS in front)', { tcp: options.tcp });
  }
  const scheme = tls ? 'https' : 'http';
  let dashboardUrl: string | undefined;
  if (tcpPort !== undefined) dashboardUrl = `${scheme}://${urlHost(options.tcp!.slice(0, options.tcp!.lastIndexOf(':')))}:${tcpPort}/ui/`;
  else if (launch.dashboard && launch.dashboard !== 'off') dashboardUrl = await listenDashboard(api, launch.dashboard, tls);
  if (tcpPort !== undefined) await replica.registry.setApiUrl(`${tls ? 'https' : 'tcp'}://${options.tcp!.slice(0, options.tcp!.lastIndexOf(':'))}:${tcpPort}`);
  containers.watchHosts(); // exits from agents registered (again) from now on
  networks.watchHosts(); // and their networks and overlays laid out again
  volumes.watchHosts(); // and told which volumes they hold
  // The work that must happen once across replicas (docs/replicas.md).
  replica.whileLeader('reconcile', () => {
    if (reconciledThisTerm) reconciledThisTerm = false;
    else void reconcileAsLeader().catch((e: unknown) => log.error('reconcile as the new leader failed', { error: String(e) }));
    return () => undefined;
  });
  replica.whileLeader('reclaimer', () => {
    const reclaimer = new Reclaimer(quota, evict);
    quota.onReclaimPlanned = () => reclaimer.kick();
    reclaimer.kick(); // re-arm the timer (reconcile cancelled reclaims whose create did not survive the restart)
    return () => {
      quota.onReclaimPlanned = undefined;
      reclaimer.stop();
    };
  });
  // health checks (--health-cmd): one prober across replicas, its outcome on the records every replica reads
  replica.whileLeader('health', () => {
    const monitor = new HealthMonitor(store, events, containers);
    void monitor.start().catch((e: unknown) => log.error('starting the health checks failed', { error: String(e) }));
    return () => monitor.stop();
  });
  // healing (docs/overlay.md): containers of a host down past the grace rebuilt elsewhere, a host that comes back fenced
  const healGraceMs = healGraceFromEnv();
  if (healGraceMs > 0) {
    replica.whileLeader('healing', () => {
      const healer = new HealingService(
        {
          ...containers.healDeps(),
          vms,
          fenceWaits,
        },
        { publish: (e) => events.publish({ actor: SYSTEM_ACTOR, ...e }) },
        { graceMs: healGraceMs },
      );
      healer.start();
      return () => healer.stop();
    });
  }
  replica.whileLeader('operations.failInterrupted', every('operations.failInterrupted', 5_000, () => operations.failInterrupted()));
  replica.whileLeader('replicas.forget', every('replicas.forget', 60_000, () => forgetGoneReplicas(store)));
  // usage metering: one sampler across replicas, its records exactly-once whoever leads (docs/metering.md)
  const meteringIntervalMs = launch.meteringIntervalMs ?? meteringIntervalFromEnv();
  if (meteringIntervalMs > 0) {
    replica.whileLeader('metering', () => {
      const m = new MeteringService(store, events, async (i) => {
        let s: InstanceStats;
        if (i.kind === 'vm') {
          const v = await store.vms.get(i.id);
          if (!v) return undefined;
          s = await agents.get(v.agent).vmStats(v.id); // a protocol-4 agent refuses it: no reading (null)
        } else {
          s = await containers.runCounters(i.id);
        }
        return { cpuNs: s.cpuUsageNs, memoryBytes: s.memoryBytes, ...(s.network ? { network: s.network } : {}) };
      }, { intervalMs: meteringIntervalMs });
      m.start();
      meter = m;
      return async () => {
        meter = undefined;
        await m.stop();
      };
    });
  }
  if (store.kind === 'postgres') {
    // what a replica that died mid-create left (one process on SQLite: its start's reconcile does it)
    const settle = () => settleGoneReplicas({
      store, quota, scheduler, registry: replica.registry, self: replica.replicaId, settleUncreated: (id) => containers.settleUncreated(id),
    });
    replica.whileLeader('replicas.settle', every('replicas.settle', 5_000, settle));
  }
  state = 'serving';
  log.info('nimbusd serving', { socket: options.socket, tcp: options.tcp, tls: !!tls, home: options.home, version: VERSION });

  return {
    options,
    services,
    state: () => state,
    ...(tcpPort !== undefined ? { tcpPort } : {}),
    tls: !!tls,
    reloadTls() {
      if (!tls) throw new InvalidArgument('nimbusd serves no TLS (started without --tls-cert/--tls-key): nothing to reload');
      const listeners = tls.replace(loadServerTls(options.tlsCert, options.tlsKey)!);
      log.info('TLS certificate reloaded', { cert: options.tlsCert, listeners });
      return listeners;
    },
    ...(dockerTcpUrl !== undefined ? { dockerTcpUrl } : {}),
    ...(dashboardUrl !== undefined ? { dashboardUrl } : {}),
    async stop() {
      if (state === 'stopping' || state === 'stopped') return;
      state = 'stopping';
      // Containers are not stopped: their monitors keep them (and their logs) alive without us.
      containers.shutdown();
      networks.stopWatchingHosts();
      volumes.stopWatchingHosts();
      await api.close();
      await dockerApi.close();
      rmSync(dockerSocket, { force: true });
      await replica.close(); // leader tasks stop (the reclaimer too) before the lock goes
      await agents.close();
      await agent.close();
      quota.close(); // its background refresh reads the store
      metrics.close();
      await store.close();
      rmSync(options.socket, { force: true });
      releaseLock();
      state = 'stopped';
      log.info('nimbusd stopped');
    },
  };
}
