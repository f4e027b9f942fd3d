/**
 * Daemon options, documented field by field with defaults and compiled once
 * into a validated object (Temporal WorkerOptions style). Environment
 * variables override defaults; flags override the environment.
 */
import { InvalidArgument } from './errors.js';

export interface NimbusOptions {
  /** State directory (store, content, snapshots, containers). Env NIMBUS_HOME. Default /var/lib/nimbus. */
  home: string;
  /** API unix socket. Env NIMBUS_SOCKET. Default /run/nimbus/nimbus.sock. */
  socket: string;
  /** Optional TCP listener "host:port" (loopback recommended until authn lands). Env NIMBUS_TCP. */
  tcp?: string;
  /** Plain-HTTP registries other than loopback ones (which always work). Env NIMBUS_INSECURE_REGISTRIES, comma-separated. */
  insecureRegistries: string[];
  /** "auto" | "overlayfs" | "native". Env NIMBUS_SNAPSHOTTER. Default auto (overlayfs where it mounts). */
  snapshotter: 'auto' | 'overlayfs' | 'native';
  /** "auto" | "runc" | "crun". Env NIMBUS_RUNTIME. Default auto (crun where its probe passes, else runc). */
  runtime: 'auto' | 'runc' | 'crun';
  /** Name of the embedded agent. Default "local". */
  agentName: string;
  /**
   * Warm containers kept ready per recently used image (runc create ahead of demand;
   * see docs/warm-start.md). 0 turns the pool off. Env NIMBUS_WARM_POOL. Default 2.
   */
  warmPerImage: number;
  /** How many recently used images get warm containers. Env NIMBUS_WARM_IMAGES. Default 4. */
  warmImages: number;
  /** VM accelerator: "auto" (KVM only when a probe boot succeeds, else TCG) | "kvm" | "tcg". Env NIMBUS_VM_ACCEL. Default auto. */
  vmAccel: 'auto' | 'kvm' | 'tcg';
}

export interface CompiledOptions extends Readonly<NimbusOptions> {
  readonly storeFile: string;
  readonly contentDir: string;
  readonly snapshotsDir: string;
  readonly containersDir: string;
  /** One directory per VM (vm-driver.ts) and the accelerator choice. */
  readonly vmsDir: string;
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

export function compileOptions(overrides: Partial<NimbusOptions> = {}, env: NodeJS.ProcessEnv = process.env): CompiledOptions {
  const home = overrides.home ?? env.NIMBUS_HOME ?? '/var/lib/nimbus';
  const opts: NimbusOptions = {
    home,
    socket: overrides.socket ?? env.NIMBUS_SOCKET ?? '/run/nimbus/nimbus.sock',
    insecureRegistries:
      overrides.insecureRegistries ?? (env.NIMBUS_INSECURE_REGISTRIES ?? '').split(',').map((s) => s.trim()).filter(Boolean),
    snapshotter: oneOf('snapshotter', overrides.snapshotter ?? env.NIMBUS_SNAPSHOTTER ?? 'auto', ['auto', 'overlayfs', 'native'] as const),
    runtime: oneOf('runtime', overrides.runtime ?? env.NIMBUS_RUNTIME ?? 'auto', ['auto', 'runc', 'crun'] as const),
    agentName: overrides.agentName ?? env.NIMBUS_AGENT_NAME ?? 'local',
    warmPerImage: count('warm pool size', overrides.warmPerImage ?? env.NIMBUS_WARM_POOL ?? 2),
    warmImages: count('warm images', overrides.warmImages ?? env.NIMBUS_WARM_IMAGES ?? 4),
    vmAccel: oneOf('vm accelerator', overrides.vmAccel ?? (env.NIMBUS_VM_ACCEL || 'auto'), ['auto', 'kvm', 'tcg'] as const),
  };
  const tcp = overrides.tcp ?? env.NIMBUS_TCP;
  if (tcp !== undefined && tcp !== '') {
    if (!/^[^:]+:\d+$/.test(tcp) && !/^\[[0-9a-f:]+\]:\d+$/i.test(tcp)) throw new InvalidArgument(`tcp must be host:port, got "${tcp}"`);
    opts.tcp = tcp;
  }
  if (!home.startsWith('/')) throw new InvalidArgument(`home must be an absolute path, got "${home}"`);
  return Object.freeze({
    ...opts,
    storeFile: `${home}/nimbus.db`,
    contentDir: `${home}/content`,
    snapshotsDir: `${home}/snapshots`,
    containersDir: `${home}/containers`,
    vmsDir: `${home}/vms`,
    tmpDir: `${home}/tmp`,
  });
}
