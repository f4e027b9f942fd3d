/**
 * nimbusd: the embedded default runs the control plane and one local agent in
 * one process; they talk only through the Agent interface.
 *
 * Daemon states: starting → reconciling → serving → stopping → stopped.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { compileOptions, describeStore, type CompiledOptions, type NimbusOptions } from '../core/config.js';
import { newId } from '../core/ids.js';
import { logger } from '../core/log.js';
import { Unavailable } from '../core/errors.js';
import { openStore } from '../store/open.js';
import type { Store } from '../store/store.js';
import { LocalAgent } from '../agent/local-agent.js';
import { EventBus } from '../control/events/event-bus.js';
import { OperationService } from '../control/operations/operations.js';
import { ImageService } from '../control/images/image-service.js';
import { ContainerService } from '../control/compute/container-service.js';
import { NetworkService } from '../control/networks/network-service.js';
import { DiskImageService } from '../control/images/disk-image-service.js';
import { VmService } from '../control/compute/vm-service.js';
import { AgentDirectory, remoteAgentConnector } from '../control/agents/agent-directory.js';
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
import { processAlive } from '../core/proc.js';

const log = logger('nimbusd');
export const VERSION = '0.1.0';
export const DEFAULT_PROJECT = 'default';

export type DaemonState = 'starting' | 'reconciling' | 'serving' | 'stopping' | 'stopped';

export interface RunningDaemon {
  readonly options: CompiledOptions;
  readonly services: Services;
  state(): DaemonState;
  tcpPort?: number;
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

export async function startDaemon(overrides: Partial<NimbusOptions> = {}): Promise<RunningDaemon> {
  let state: DaemonState = 'starting';
  const options = compileOptions(overrides);
  for (const d of [options.home, options.contentDir, options.snapshotsDir, options.containersDir, options.vmsDir, options.tmpDir]) {
    mkdirSync(d, { recursive: true, mode: 0o711 });
  }
  const releaseLock = takePidLock(options.home);
  const store = await openStore(options.storeLocation);
  log.info('store open', { store: describeStore(options.storeLocation), kind: store.kind });
  const defaultProjectId = await ensureDefaultProject(store);
  const events = new EventBus();
  const operations = new OperationService(store, events);
  const agent = await LocalAgent.create(options);
  const images = new ImageService(store, agent, events, operations, options.insecureRegistries);
  const quota = await QuotaService.open(store);
  await quota.ensureProjects(parentsFirst(await store.projects.list()));
  const networks = new NetworkService(store, agent, events, quota, {
    defaultProjectId, bridge: options.bridge, bridgeSubnet: options.bridgeSubnet, bridgeSubnetFallback: !options.bridgeSubnetExplicit, subnetPool: options.subnetPool,
  });
  agent.setAddressProvider(networks.addressProvider());
  const containers = new ContainerService(store, agent, images, events, quota, operations, networks);
  const disks = new DiskImageService(store, agent, events, () => images.collectGarbage());
  // the embedded agent and the ones registered from other processes or hosts (nimbusd agent)
  // the agent CA (HOME/agent-ca): signs TCP agents' certificates through join tokens, and the client certificate this control plane calls them with
  const agentCa = await AgentCa.open(path.join(options.home, 'agent-ca'));
  const agents = await AgentDirectory.open(store, agent, options.agentName, remoteAgentConnector(agentCa), agentCa);
  const vms = new VmService(store, agents, events, quota, operations, networks, disks);
  const scheduler = new FilterScheduler(store, agents);
  // Reclaims evict borrowers' instances: containers are stopped (no restart policy brings them
  // back), VMs are saved rather than killed (restored later, the guest goes on where it was).
  const reclaimer = new Reclaimer(quota, async (id, action) => {
    if (await store.containers.get(id)) await containers.stop(id);
    else if (await store.vms.get(id)) await (action === 'save' ? vms.save(id) : vms.stop(id));
  });
  quota.onReclaimPlanned = () => reclaimer.kick();
  const identity = new IdentityService(store);
  const admin = await identity.ensureAdmin(process.env.NIMBUS_ADMIN_PASSWORD || undefined, defaultProjectId);
  if (admin.generatedPassword) {
    // Printed once, straight to stderr and never through the logger, so it lands in no log file.
    process.stderr.write(`nimbusd: created user "admin" with password ${admin.generatedPassword}\n` +
      'nimbusd: it is shown only this once; set NIMBUS_ADMIN_PASSWORD on first start to choose it\n');
  }
  const projects = new ProjectService(store, quota, defaultProjectId);
  const services: Services = {
    options, store, agent, agents, scheduler, events, operations, images, disks, containers, networks, vms, quota, identity, projects, access: new AccessControl(store), defaultProjectId,
    startedAt: new Date().toISOString(), version: VERSION,
  };

  state = 'reconciling';
  const interrupted = await operations.failInterrupted();
  const rec = await containers.reconcile();
  const netRec = await networks.reconcile();
  const vmRec = await vms.reconcile();
  // networks hold quota too (`networks`), under their own ids
  const liveInstances = [...(await store.containers.list()), ...(await store.vms.list()), ...(await store.networks.list())].map((i) => i.id);
  const quotaReleased = await quota.reconcile(new Set(liveInstances));
  const gc = await images.collectGarbage();
  log.info('reconciled store with host', { ...rec, networks: netRec, vms: vmRec, interruptedOperations: interrupted, quotaReleased, ...gc });

  const api = new ApiServer(allRoutes(), services);
  await api.listenUnix(options.socket);
  let tcpPort: number | undefined;
  if (options.tcp) {
    const i = options.tcp.lastIndexOf(':');
    tcpPort = await api.listenTcp(options.tcp.slice(0, i).replace(/^\[|\]$/g, ''), Number(options.tcp.slice(i + 1)));
  }
  reclaimer.kick(); // re-arm the timer (reconcile cancelled reclaims whose create did not survive the restart)
  state = 'serving';
  log.info('nimbusd serving', { socket: options.socket, tcp: options.tcp, home: options.home, version: VERSION });

  return {
    options,
    services,
    state: () => state,
    ...(tcpPort !== undefined ? { tcpPort } : {}),
    async stop() {
      if (state === 'stopping' || state === 'stopped') return;
      state = 'stopping';
      // Containers are not stopped: their monitors keep them (and their logs) alive without us.
      reclaimer.stop();
      containers.shutdown();
      await api.close();
      await agents.close();
      await agent.close();
      quota.close(); // its background refresh reads the store
      await store.close();
      rmSync(options.socket, { force: true });
      releaseLock();
      state = 'stopped';
      log.info('nimbusd stopped');
    },
  };
}
