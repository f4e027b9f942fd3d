/** /_ping, /version and /info: what the docker CLI asks first (API version negotiation) and for `docker version` / `docker info`. */
import { hostname, release, cpus, totalmem } from 'node:os';
import { DOCKER_API_VERSION, DOCKER_MIN_API_VERSION, type DockerRoute } from './server.js';

const ARCH = process.arch === 'x64' ? 'amd64' : process.arch;

export const systemRoutes: DockerRoute[] = [
  {
    // HEAD too: newer CLIs ping with HEAD and read API-Version from the headers
    method: 'GET', pattern: /^\/_ping$/, name: 'ping', access: 'public',
    handler: () => ({ json: 'OK', headers: { 'cache-control': 'no-cache, no-store, must-revalidate', pragma: 'no-cache', 'ostype': 'linux' } }),
  },
  {
    method: 'GET', pattern: /^\/version$/, name: 'version', access: 'public',
    handler: ({ services }) => {
      const engine = {
        Version: services.version, ApiVersion: DOCKER_API_VERSION, MinAPIVersion: DOCKER_MIN_API_VERSION, GitCommit: '', GoVersion: `node ${process.version}`,
        Os: 'linux', Arch: ARCH, KernelVersion: release(), BuildTime: services.startedAt,
      };
      return {
        json: {
          Platform: { Name: 'Nimbus' },
          Components: [{ Name: 'Engine', Version: services.version, Details: { ApiVersion: DOCKER_API_VERSION, MinAPIVersion: DOCKER_MIN_API_VERSION, Os: 'linux', Arch: ARCH, KernelVersion: release() } }],
          ...engine,
        },
      };
    },
  },
  {
    method: 'GET', pattern: /^\/info$/, name: 'info', access: 'reader',
    handler: async ({ services, project, auth }) => {
      // counts are the project's: what this docker CLI can see
      const containers = await services.containers.list({ all: true, projectId: project });
      const images = await services.images.list(project);
      const admin = auth.principal?.systemAdmin === true;
      const agent = services.hosts.localName === undefined ? undefined : await services.agent.info();
      const count = (s: string) => containers.filter((c) => c.status === s).length;
      return {
        json: {
          ID: services.replica.replicaId,
          Containers: containers.length,
          ContainersRunning: count('running'),
          ContainersPaused: count('paused'),
          ContainersStopped: containers.length - count('running') - count('paused'),
          Images: images.length,
          Driver: agent?.snapshotter ?? 'nimbus',
          DriverStatus: [],
          Plugins: { Volume: [], Network: ['bridge', 'host', 'none'], Authorization: null, Log: ['json-file'] },
          MemoryLimit: true, SwapLimit: false, CpuCfsPeriod: true, CpuCfsQuota: true, CPUShares: false, CPUSet: false, PidsLimit: true,
          IPv4Forwarding: true, BridgeNfIptables: false, BridgeNfIp6tables: false, Debug: false,
          NFd: 0, NGoroutines: 0, SystemTime: new Date().toISOString(), LoggingDriver: 'json-file',
          CgroupDriver: 'cgroupfs', CgroupVersion: agent?.cgroupLayout.includes('v1') ? '1' : '2',
          NEventsListener: 0, KernelVersion: agent?.kernel ?? release(), OperatingSystem: 'Nimbus', OSVersion: '', OSType: 'linux', Architecture: agent?.architecture ?? ARCH,
          IndexServerAddress: 'https://index.docker.io/v1/',
          RegistryConfig: { AllowNondistributableArtifactsCIDRs: [], AllowNondistributableArtifactsHostnames: [], InsecureRegistryCIDRs: ['127.0.0.0/8'], IndexConfigs: {}, Mirrors: [] },
          NCPU: agent?.cpus ?? cpus().length,
          MemTotal: agent?.memoryBytes ?? totalmem(),
          GenericResources: null,
          // host facts are the operator's (as the Nimbus /info)
          DockerRootDir: admin ? services.options.home : '',
          HttpProxy: '', HttpsProxy: '', NoProxy: '',
          Name: admin ? (agent?.hostname ?? hostname()) : 'nimbus',
          Labels: [], ExperimentalBuild: false, ServerVersion: services.version,
          Runtimes: Object.fromEntries((agent?.runtimes ?? []).filter((r) => r.usable).map((r) => [r.name, { path: r.name }])),
          DefaultRuntime: agent?.runtimes.find((r) => r.default)?.name ?? 'runc',
          Swarm: { NodeID: '', NodeAddr: '', LocalNodeState: 'inactive', ControlAvailable: false, Error: '', RemoteManagers: null },
          LiveRestoreEnabled: true, Isolation: '', InitBinary: '', ContainerdCommit: { ID: '', Expected: '' }, RuncCommit: { ID: '', Expected: '' }, InitCommit: { ID: '', Expected: '' },
          // as dockerd says them: containers run under the seccomp filter (agent/drivers/container/seccomp.ts)
          // unless the administrator turned it off, and always with no_new_privileges; a profile's path is the host's
          SecurityOptions: [
            ...(services.options.seccompProfile === 'unconfined' ? [] : [`name=seccomp,profile=${services.options.seccompProfile === undefined ? 'default' : admin ? services.options.seccompProfile : 'custom'}`]),
            'name=no-new-privileges',
          ],
          Warnings: [],
        },
      };
    },
  },
];
