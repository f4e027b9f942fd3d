/** The control plane's services, as the API edge sees them. */
import type { Agent } from '../agent/agent.js';
import type { CompiledOptions } from '../core/config.js';
import type { Store } from '../store/store.js';
import type { ContainerService } from './compute/container-service.js';
import type { NetworkService } from './networks/network-service.js';
import type { DiskImageService } from './images/disk-image-service.js';
import type { VmService } from './compute/vm-service.js';
import type { AgentDirectory } from './agents/agent-directory.js';
import type { EventBus } from './events/event-bus.js';
import type { ImageService } from './images/image-service.js';
import type { BuildService } from './images/build-service.js';
import type { CommitService } from './images/commit-service.js';
import type { OperationService } from './operations/operations.js';
import type { QuotaService } from './quota/quota-service.js';
import type { AccessControl } from './identity/access.js';
import type { IdentityService } from './identity/identity-service.js';
import type { ProjectService } from './identity/project-service.js';
import type { Scheduler } from './scheduler/types.js';
import type { Replica } from './leader/replica.js';
import type { HostAgents } from './compute/hosts.js';
import type { HostFence } from './compute/host-fence.js';
import type { Metrics } from './metering/metrics.js';
import type { VolumeService } from './volumes/volume-service.js';
import type { RegistryCredentialService } from './registries/registry-credentials.js';

export interface Services {
  options: CompiledOptions;
  store: Store;
  /** The embedded agent (pulls and imports run there); with --no-agent a stand-in that answers Unavailable. */
  agent: Agent;
  /** Every agent, the embedded one included (VMs may live on any). */
  agents: AgentDirectory;
  /** The hosts instances are placed on: every agent, or the registered ones only (nimbusd --no-agent: localName undefined). */
  hosts: HostAgents;
  /** Chooses the host of every new instance and claims its resources there. */
  scheduler: Scheduler;
  /** This process among the control plane's replicas: leadership, relayed events, the replicas' rows. */
  replica: Replica;
  events: EventBus;
  /** This process's Prometheus metrics (GET /metrics, docs/metering.md); absent where services are assembled by hand (tests). */
  metrics?: Metrics;
  operations: OperationService;
  images: ImageService;
  /** Image builds (docs/builds.md); absent where services are assembled by hand (tests). */
  builds?: BuildService;
  /** docker commit (images/commit-service.ts); absent where services are assembled by hand (tests). */
  commits?: CommitService;
  disks: DiskImageService;
  containers: ContainerService;
  networks: NetworkService;
  vms: VmService;
  /** Named volumes (docs/volumes.md). */
  volumes: VolumeService;
  /** Registry credentials per project (docs/registries.md); absent where services are assembled by hand (tests). */
  registries?: RegistryCredentialService;
  quota: QuotaService;
  identity: IdentityService;
  projects: ProjectService;
  access: AccessControl;
  /** The project used when a request names none (callers without a default project of their own, and the local administrator). */
  defaultProjectId: string;
  startedAt: string;
  version: string;
  /** Destroys a host's stale copies before it is forgotten (DELETE /agents, /hosts); absent where services are assembled by hand (tests): forgotten without. */
  fence?: HostFence;
  /** The Docker Engine API on TCP (nimbusd --docker-tcp), once it listens: tcp://HOST:PORT. */
  dockerTcpUrl?: string;
  /** The Docker API's TCP listener is HTTPS (nimbusd --tls-cert): docker --tlsverify. */
  dockerTcpTls?: boolean;
}
