/**
 * Daemon options, documented field by field with defaults and compiled once
 * into a validated object (Temporal WorkerOptions style). Environment
 * variables override defaults; flags override the environment.
 */
import path from 'node:path';
import { totalmem } from 'node:os';
import { InvalidArgument } from './errors.js';
import { MAX_STORAGE_BYTES, MIN_MEMORY_BYTES, MIN_STORAGE_BYTES } from './limits.js';
import { checkTlsPair } from './server-tls.js';

export interface NimbusOptions {
  /** State directory (store, content, snapshots, containers). Env NIMBUS_HOME. Default /var/lib/nimbus. */
  home: string;
  /** API unix socket. Env NIMBUS_SOCKET. Default /run/nimbus/nimbus.sock. */
  socket: string;
  /** Optional TCP listener "host:port" (loopback recommended until authn lands). Env NIMBUS_TCP. */
  tcp?: string;
  /** The Docker Engine API's unix socket. Env NIMBUS_DOCKER_SOCKET. Default docker.sock beside `socket` (/run/nimbus/docker.sock). */
  dockerSocket: string;
  /** Optional TCP listener "host:port" for the Docker Engine API (every request needs a token). Env NIMBUS_DOCKER_TCP. */
  dockerTcp?: string;
  /**
   * PEM certificate (its chain after it) and private key the TCP listeners (--tcp, --docker-tcp,
   * the dashboard's) serve HTTPS with; both or neither. Env NIMBUS_TLS_CERT, NIMBUS_TLS_KEY.
   */
  tlsCert?: string;
  tlsKey?: string;
  /** Plain-HTTP registries other than loopback ones (which always work). Env NIMBUS_INSECURE_REGISTRIES, comma-separated. */
  insecureRegistries: string[];
  /**
   * Registries (HOST[:PORT]) pulls may reach on this host's own, loopback or link-local addresses,
   * which are refused otherwise (agent/images/registry-egress.ts); insecure ones are allowed too.
   * Env NIMBUS_ALLOWED_REGISTRIES, comma-separated.
   */
  allowedRegistries: string[];
  /**
   * Proxies in front of the API whose X-Forwarded-For is believed for the caller's address (what
   * failed logins are counted by: api/caller-address.ts). Env NIMBUS_TRUSTED_PROXIES, comma-separated.
   */
  trustedProxies: string[];
  /**
   * The memory a container created without one is given (limited and charged) in a project whose
   * memory quota is limited: what Kubernetes' LimitRange gives a namespace with a ResourceQuota.
   * In an unlimited project such a container stays best effort (no limit, charged nothing, killed
   * first when the host runs out). A project's own default wins (quota: containerMemoryDefault).
   * Env NIMBUS_CONTAINER_MEMORY_DEFAULT: bytes with a k/m/g suffix; 0: none unless a project sets
   * one. Default 512 MiB (docs/identity.md).
   */
  containerMemoryDefaultBytes: number;
  /**
   * What the writable layer of a container created without a storage size may hold, and is
   * charged to the project's disk quota, in a project whose disk quota is limited (GKE Autopilot's
   * default ephemeral storage). Elsewhere such a layer is unbounded, as under Docker. Env
   * NIMBUS_CONTAINER_STORAGE_DEFAULT: bytes with a k/m/g suffix, rounded up to MiB; 0: unbounded
   * everywhere. Default 1 GiB (docs/identity.md).
   */
  containerStorageDefaultBytes: number;
  /** "auto" | "overlayfs" | "native". Env NIMBUS_SNAPSHOTTER. Default auto (overlayfs where it mounts). */
  snapshotter: 'auto' | 'overlayfs' | 'native';
  /** "auto" | "runc" | "crun". Env NIMBUS_RUNTIME. Default auto (runc where its probe passes, else crun). */
  runtime: 'auto' | 'runc' | 'crun';
  /**
   * The seccomp profile containers run under, in Docker's format (agent/drivers/container/seccomp.ts),
   * or "unconfined". Env NIMBUS_SECCOMP_PROFILE. Default the host's /usr/share/containers/seccomp.json.
   */
  seccompProfile?: string;
  /** Name of the embedded agent. Default "local". */
  agentName: string;
  /**
   * Warm containers kept ready per recently used image (runc create ahead of demand;
   * see docs/warm-start.md). 0 turns the pool off. Env NIMBUS_WARM_POOL. Default 2.
   */
  warmPerImage: number;
  /** How many recently used images get warm containers. Env NIMBUS_WARM_IMAGES. Default 4. */
  warmImages: number;
  /**
   * Memory the warm pool may grow into above warmPerImage when requests come in bursts (measured per
   * warm container; docs/warm-start.md). Env NIMBUS_WARM_BUDGET: bytes ("512m", "1g") or a share of
   * the host's memory ("2%", at most 50%); 0 keeps the pool at warmPerImage. Default 2% of the host's memory.
   */
  warmBudgetBytes: number;
  /** VM accelerator: "auto" (KVM only when a probe boot succeeds, else TCG) | "kvm" | "tcg". Env NIMBUS_VM_ACCEL. Default auto. */
  vmAccel: 'auto' | 'kvm' | 'tcg';
  /**
   * The address this agent receives live migrations on (the destination QEMU listens there for
   * the stream from the source host). Env NIMBUS_MIGRATION_ADDRESS. Default 127.0.0.1.
   */
  migrationAddress: string;
  /** The default project's "bridge" network: its device. Env NIMBUS_BRIDGE. Default nimbus0. */
  bridge: string;
  /**
   * ... and its subnet (the gateway is its first address). Env NIMBUS_BRIDGE_SUBNET. Default
   * 10.88.0.0/16, or, when the host already routes that (podman's default network is the same
   * subnet), the first free /16 of 10.87, 10.86, … 10.80 (set explicitly, it is used or refused).
   */
  bridgeSubnet: string;
  /** Whether bridgeSubnet was given (env or flag) rather than defaulted. */
  bridgeSubnetExplicit?: boolean;
  /** Subnets (/24 each) for networks created without --subnet and for other projects' "bridge". Env NIMBUS_SUBNET_POOL. Default 10.89.0.0/16. */
  subnetPool: string;
  /** The nftables table (inet family) Nimbus owns on this host. Env NIMBUS_NFT_TABLE. Default nimbus. */
  nftTable: string;
  /** Port of each network's embedded DNS, on its gateway address. Env NIMBUS_DNS_PORT. Default 53. */
  dnsPort: number;
  /**
   * Where the embedded DNS forwards names that are not a network's own ("ip" or "ip:port").
   * Env NIMBUS_DNS_UPSTREAMS, comma-separated; set and empty = forward nothing. Default: the host's /etc/resolv.conf.
   */
  dnsUpstreams?: string[];
  /**
   * Most bytes of regular files one image layer may unpack to, and one image's layers together
   * (a gzip bomb is refused, its snapshot removed). Env NIMBUS_LAYER_MAX_BYTES and
   * NIMBUS_IMAGE_MAX_BYTES: bytes or with a k/m/g/t suffix. Defaults 16 GiB and 64 GiB (agent/layers/unpack-limits.ts).
   */
  layerMaxBytes?: number;
  imageMaxBytes?: number;
  /**
   * Host directories a system administrator may name VM kernels, initrds and disks from by path
   * (everyone else uses images of the image service). Resolved once with symlinks; a path must
   * lie inside one. Env NIMBUS_VM_HOST_DIRS, colon-separated. Default none: host paths are refused.
   */
  vmHostDirs: string[];
  /**
   * The control plane's system of record: a file path or `sqlite:PATH` (the embedded SQLite
   * store), or `postgres://…` (PostgreSQL, for a cloud of many hosts). Env NIMBUS_STORE.
   * Default HOME/nimbus.db.
   */
  store?: string;
}

export interface CompiledOptions extends Readonly<NimbusOptions> {
  /** Where the store is (NimbusOptions.store, or the embedded default's file). */
  readonly storeLocation: string;
  readonly storeFile: string;
  readonly contentDir: string;
  readonly snapshotsDir: string;
  readonly containersDir: string;
  /** One directory per VM (vm-driver.ts) and the accelerator choice. */
  readonly vmsDir: string;
  /** Networks and endpoints this host laid out (agent/network/network-host.ts; the records: network-state.ts). */
  readonly networkDir: string;
  readonly tmpDir: string;
}

const oneOf = <T extends string>(name: string, v: string, allowed: readonly T[]): T => {
  if (!(allowed as readonly string[]).includes(v)) throw new InvalidArgument(`${name} must be one of ${allowed.join(', ')}, got "${v}"`);
  return v as T;
};

const count = (name: string, v: string | number): number => {
  const n = typeof v === 'number' ? v : Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 1000) throw new InvalidArgument(`${name} must be an integer from 0 to 1000, got "${v}"`);
  return n;
};

/** "2%" of the host's memory (at most 50%), or bytes with an optional k/m/g suffix (binary units). */
export function warmBudget(v: string | number, hostBytes = totalmem()): number {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  const s = String(v).trim().toLowerCase();
  const pct = /^(\d+(?:\.\d+)?)%$/.exec(s);
  if (pct && Number(pct[1]) <= 50) return Math.floor((hostBytes * Number(pct[1])) / 100);
  const bytes = /^(\d+)([kmg]?)(?:i?b)?$/.exec(s);
  if (bytes) return Number(bytes[1]) * 1024 ** ' kmg'.indexOf(bytes[2] || ' ');
  throw new InvalidArgument(`warm pool budget must be bytes ("512m") or a share of memory up to 50% ("2%"), got "${v}"`);
}

/** Bytes, with an optional k/m/g/t suffix (binary units). */
export function byteSize(name: string, v: string | number): number {
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v) && v >= 0) return v;
    throw new InvalidArgument(`${name} must be a whole number of bytes, got ${v}`);
  }
  const m = /^(\d+)([kmgt]?)(?:i?b)?$/i.exec(v.trim());
  const n = m ? Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase()) : NaN;
  if (!Number.isSafeInteger(n)) throw new InvalidArgument(`${name} must be bytes with an optional k/m/g/t suffix ("512m"), got "${v}"`);
  return n;
}

/** 512 MiB: Cloud Run's default size, and Kubernetes' LimitRange example's. */
export const DEFAULT_CONTAINER_MEMORY_BYTES = 512 * 1024 * 1024;
export const DEFAULT_CONTAINER_STORAGE_BYTES = 1024 * 1024 * 1024;

/** An environment variable's list ("a,b" or "/a:/b"): its items trimmed, empty ones dropped. */
const listIn = (value: string | undefined, separator = ','): string[] => (value ?? '').split(separator).map((s) => s.trim()).filter(Boolean);

export function compileOptions(overrides: Partial<NimbusOptions> = {}, env: NodeJS.ProcessEnv = process.env): CompiledOptions {
  const home = overrides.home ?? env.NIMBUS_HOME ?? '/var/lib/nimbus';
  const socket = overrides.socket ?? env.NIMBUS_SOCKET ?? '/run/nimbus/nimbus.sock';
  const seccompProfile = overrides.seccompProfile ?? env.NIMBUS_SECCOMP_PROFILE;
  const opts: NimbusOptions = {
    home,
    socket,
    dockerSocket: overrides.dockerSocket ?? (env.NIMBUS_DOCKER_SOCKET || path.join(path.dirname(socket), 'docker.sock')),
    insecureRegistries: overrides.insecureRegistries ?? listIn(env.NIMBUS_INSECURE_REGISTRIES),
    allowedRegistries: overrides.allowedRegistries ?? listIn(env.NIMBUS_ALLOWED_REGISTRIES),
    trustedProxies: overrides.trustedProxies ?? listIn(env.NIMBUS_TRUSTED_PROXIES),
    containerMemoryDefaultBytes: byteSize('container memory default', overrides.containerMemoryDefaultBytes ?? (env.NIMBUS_CONTAINER_MEMORY_DEFAULT || DEFAULT_CONTAINER_MEMORY_BYTES)),
    containerStorageDefaultBytes: byteSize('container storage default', overrides.containerStorageDefaultBytes ?? (env.NIMBUS_CONTAINER_STORAGE_DEFAULT || DEFAULT_CONTAINER_STORAGE_BYTES)),
    snapshotter: oneOf('snapshotter', overrides.snapshotter ?? env.NIMBUS_SNAPSHOTTER ?? 'auto', ['auto', 'overlayfs', 'native'] as const),
    runtime: oneOf('runtime', overrides.runtime ?? env.NIMBUS_RUNTIME ?? 'auto', ['auto', 'runc', 'crun'] as const),
    ...(seccompProfile ? { seccompProfile } : {}),
    agentName: overrides.agentName ?? env.NIMBUS_AGENT_NAME ?? 'local',
    warmPerImage: count('warm pool size', overrides.warmPerImage ?? env.NIMBUS_WARM_POOL ?? 2),
    warmImages: count('warm images', overrides.warmImages ?? env.NIMBUS_WARM_IMAGES ?? 4),
    warmBudgetBytes: warmBudget(overrides.warmBudgetBytes ?? env.NIMBUS_WARM_BUDGET ?? '2%'),
    vmAccel: oneOf('vm accelerator', overrides.vmAccel ?? (env.NIMBUS_VM_ACCEL || 'auto'), ['auto', 'kvm', 'tcg'] as const),
    migrationAddress: overrides.migrationAddress ?? env.NIMBUS_MIGRATION_ADDRESS ?? '127.0.0.1',
    bridge: overrides.bridge ?? env.NIMBUS_BRIDGE ?? 'nimbus0',
    bridgeSubnet: overrides.bridgeSubnet ?? env.NIMBUS_BRIDGE_SUBNET ?? '10.88.0.0/16',
    bridgeSubnetExplicit: (overrides.bridgeSubnet ?? env.NIMBUS_BRIDGE_SUBNET) !== undefined,
    subnetPool: overrides.subnetPool ?? env.NIMBUS_SUBNET_POOL ?? '10.89.0.0/16',
    nftTable: overrides.nftTable ?? env.NIMBUS_NFT_TABLE ?? 'nimbus',
    dnsPort: Number(overrides.dnsPort ?? env.NIMBUS_DNS_PORT ?? 53),
    vmHostDirs: overrides.vmHostDirs ?? listIn(env.NIMBUS_VM_HOST_DIRS, ':'),
  };
  if (opts.containerMemoryDefaultBytes > 0 && opts.containerMemoryDefaultBytes < MIN_MEMORY_BYTES) {
    throw new InvalidArgument(`container memory default must be 0 (none) or at least 6 MiB, got ${opts.containerMemoryDefaultBytes} bytes`);
  }
  if (opts.containerStorageDefaultBytes > 0 && (opts.containerStorageDefaultBytes < MIN_STORAGE_BYTES || opts.containerStorageDefaultBytes > MAX_STORAGE_BYTES)) {
    throw new InvalidArgument(`container storage default must be 0 (unbounded) or from 16 MiB to 16 TiB, got ${opts.containerStorageDefaultBytes} bytes`);
  }
  for (const d of opts.vmHostDirs) {
    if (!d.startsWith('/') || d === '/') throw new InvalidArgument(`a VM host directory must be an absolute path other than /, got "${d}"`);
  }
  const upstreams = overrides.dnsUpstreams ?? (env.NIMBUS_DNS_UPSTREAMS !== undefined ? listIn(env.NIMBUS_DNS_UPSTREAMS) : undefined);
  if (upstreams) opts.dnsUpstreams = upstreams;
  for (const [key, envName] of [['layerMaxBytes', 'NIMBUS_LAYER_MAX_BYTES'], ['imageMaxBytes', 'NIMBUS_IMAGE_MAX_BYTES']] as const) {
    const v = overrides[key] ?? env[envName];
    if (v === undefined || v === '') continue;
    const n = byteSize(envName, v);
    if (n < 1) throw new InvalidArgument(`${envName} must be a positive size in bytes (k/m/g/t suffix allowed), got "${v}"`);
    opts[key] = n;
  }
  if (!/^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$/.test(opts.bridge)) throw new InvalidArgument(`bridge must be an interface name (≤ 15 characters), got "${opts.bridge}"`);
  for (const [name, v] of [['bridge subnet', opts.bridgeSubnet], ['subnet pool', opts.subnetPool]] as const) {
    if (!/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(v)) throw new InvalidArgument(`${name} must be an IPv4 CIDR, got "${v}"`);
  }
  if (!/^[a-zA-Z][a-zA-Z0-9_]{0,63}$/.test(opts.nftTable)) throw new InvalidArgument(`nft table must be a plain name, got "${opts.nftTable}"`);
  if (!Number.isInteger(opts.dnsPort) || opts.dnsPort < 1 || opts.dnsPort > 65535) throw new InvalidArgument(`dns port must be 1-65535, got "${opts.dnsPort}"`);
  for (const [key, value] of [['tcp', overrides.tcp ?? env.NIMBUS_TCP], ['dockerTcp', overrides.dockerTcp ?? env.NIMBUS_DOCKER_TCP]] as const) {
    if (value === undefined || value === '') continue;
    if (!/^[^:]+:\d+$/.test(value) && !/^\[[0-9a-f:]+\]:\d+$/i.test(value)) throw new InvalidArgument(`${key === 'tcp' ? 'tcp' : 'docker tcp'} must be host:port, got "${value}"`);
    opts[key] = value;
  }
  for (const [key, value] of [['tlsCert', overrides.tlsCert ?? env.NIMBUS_TLS_CERT], ['tlsKey', overrides.tlsKey ?? env.NIMBUS_TLS_KEY]] as const) {
    if (value) opts[key] = value;
  }
  checkTlsPair(opts.tlsCert, opts.tlsKey);
  if (!opts.dockerSocket.startsWith('/')) throw new InvalidArgument(`docker socket must be an absolute path, got "${opts.dockerSocket}"`);
  if (!home.startsWith('/')) throw new InvalidArgument(`home must be an absolute path, got "${home}"`);
  const store = overrides.store ?? (env.NIMBUS_STORE || undefined);
  if (store !== undefined) {
    if (!/^(postgres(ql)?:\/\/|sqlite:\/|\/)/.test(store)) {
      throw new InvalidArgument('store must be an absolute path, sqlite:/PATH or postgres://…');
    }
    opts.store = store;
  }
  return Object.freeze({
    ...opts,
    storeLocation: store ?? `${home}/nimbus.db`,
    storeFile: `${home}/nimbus.db`,
    contentDir: `${home}/content`,
    snapshotsDir: `${home}/snapshots`,
    containersDir: `${home}/containers`,
    vmsDir: `${home}/vms`,
    networkDir: `${home}/network`,
    tmpDir: `${home}/tmp`,
  });
}

/** A store location fit for logs and banners: a PostgreSQL URL loses its password (in the userinfo or a query parameter). */
export function describeStore(location: string): string {
  if (!/^postgres(ql)?:\/\//.test(location)) return location;
  // not new URL(): a unix-socket URL (postgres://user@/db?host=/run/postgresql) has no host, and URL refuses it
  return location.replace(/^(postgres(?:ql)?:\/\/[^:@/]*):[^@/]*@/, '$1:***@').replace(/([?&]password=)[^&]*/gi, '$1***');
}

/** The registries an administrator named: plain HTTP (insecure) and reachable on this host's own addresses (allowed). */
export type NamedRegistries = Pick<NimbusOptions, 'insecureRegistries' | 'allowedRegistries'>;
export const NO_NAMED_REGISTRIES: NamedRegistries = { insecureRegistries: [], allowedRegistries: [] };
