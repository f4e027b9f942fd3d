/**
 * LocalVmHost: VMs on this host under the QEMU driver (the agent's VmHost and VmMigrationHost):
 * the accelerator they run under, the host files and block volumes they boot from, their taps
 * on the container networks, and the steps of a live migration at either end. LocalAgent
 * delegates here with the parts it owns.
 */
import { join } from 'node:path';
import { Conflict, InvalidArgument } from '../core/errors.js';
import { logger } from '../core/log.js';
import type { CompiledOptions } from '../core/config.js';
import type { AgentInfo, BlockVolumeHost, MigrateOutOptions, VmCreateRequest, VmHost, VmHostState, VmMigrationHost, VmMigrationSpec } from './agent.js';
import type { InstanceDriver } from './drivers/instance-driver.js';
import type { VmDriver } from './drivers/vm/vm-driver.js';
import { HostFileResolver } from './drivers/vm/host-files.js';
import { chooseAccelerator, type AcceleratorChoice } from './drivers/vm/accel.js';
import { hostProbeGuest } from './drivers/vm/probe-guest.js';
import type { NetworkHost } from './network/network-host.js';
import type { HostBlockVolume } from './volumes/block-volume-store.js';
import { killOrphanProbes } from './orphan-probes.js';

const log = logger('agent');

/** What the VM host is given by the agent that owns it. */
export interface VmHostParts {
  options: Pick<CompiledOptions, 'contentDir' | 'vmHostDirs' | 'vmsDir' | 'vmAccel' | 'migrationAddress'>;
  vms: VmDriver;
  /** The host's container networking: a VM's NICs are taps on its networks. */
  network: NetworkHost;
  /** A block volume as this host has it (NotFound for one it lacks). */
  blockVolume(id: string): Promise<HostBlockVolume>;
}

export class LocalVmHost implements VmHost, VmMigrationHost, Pick<BlockVolumeHost, 'attachVmVolume' | 'detachVmVolume'> {
  /** Kernels, initrds and disks VMs may boot from: the content store's blobs and the operator's --vm-host-dir. */
  private readonly hostFiles = new HostFileResolver(() => [join(this.p.options.contentDir, 'blobs'), ...this.p.options.vmHostDirs]);
  private readonly vmExitListeners: ((id: string) => void)[] = [];
  private accelChoice: Promise<AcceleratorChoice> | undefined;
  private accelDecided: AcceleratorChoice | undefined;

  constructor(private readonly p: VmHostParts) {
    p.vms.onExit((id) => {
      for (const l of this.vmExitListeners) l(id);
    });
  }

  /**
   * The accelerator for new VMs, decided on first use rather than at start: a
   * daemon that runs no VM never boots a probe (which can take its whole bound
   * where KVM hangs) and never delays its start for one.
   * Secure containers' microVMs take the same choice (container-host.ts).
   */
  vmAccelerator(): Promise<AcceleratorChoice> {
    this.accelChoice ??= chooseVmAccelerator(this.p.options).then(
      (a) => {
        log.info('VM accelerator chosen', { accel: a.accel, reason: a.reason });
        this.accelDecided = a;
        return a;
      },
      (e: unknown) => {
        this.accelChoice = undefined; // ask again next time
        throw e;
      },
    );
    return this.accelChoice;
  }

  private async vmHostState(id: string): Promise<VmHostState> {
    const [state, inspect] = await Promise.all([this.p.vms.state(id), this.p.vms.inspect(id)]);
    return { ...state, lifecycle: inspect.lifecycle };
  }

  /** The accelerator as info() reports it; never waits for (nor starts) the probe: a listing must not take a probe boot's 20 s. */
  acceleratorInfo(): NonNullable<AgentInfo['vm']> {
    return this.accelDecided
      ? { accelerator: this.accelDecided.accel, reason: this.accelDecided.reason, decidedAt: this.accelDecided.decidedAt }
      : { accelerator: 'undecided', reason: this.accelChoice ? 'probing: a boot of the host kernel under KVM (at most 20 s)' : 'decided by a probe boot when the first VM or secure container is created' };
  }

  async createVm(req: VmCreateRequest): Promise<VmHostState> {
    // host files: only from the content store or an allow-listed directory, by their real path
    req = { ...req };
    for (const role of ['kernel', 'initrd', 'disk'] as const) {
      const file = req[role];
      if (file !== undefined) req[role] = await this.hostFiles.resolve(role, file);
    }
    const accel = (await this.vmAccelerator()).accel;
    // NICs: taps on the networks first; the guest learns its addresses from its command line
    // (nimbus.net=eth0,ADDR/PREFIX,GATEWAY: the test guest's init reads it; other guests configure themselves)
    const nics = req.nics?.length ? await this.p.network.attachTaps(req.id, req.nics) : [];
    const netArgs = (req.nics ?? []).map((n, i) => `nimbus.net=eth${i},${n.address}/${n.network.subnet.split('/')[1]},${n.network.gateway}`);
    const append = req.kernel && netArgs.length ? [req.append ?? '', ...netArgs].filter(Boolean).join(' ') : req.append;
    try {
      await this.p.vms.create({
        id: req.id,
        name: req.name,
        rootfs: [],
        process: { args: [], env: [], cwd: '/', user: '0' },
        resources: { cpus: req.cpus, memoryBytes: req.memoryMiB * 1024 * 1024 },
        vm: {
          accel,
          ...(req.kernel ? { kernel: req.kernel } : {}),
          ...(req.initrd ? { initrd: req.initrd } : {}),
          ...(append ? { append } : {}),
          ...(req.disk ? { disk: req.disk } : {}),
          ...(req.pin?.length ? { pin: req.pin } : {}),
          ...(req.maxCpus !== undefined ? { maxCpus: req.maxCpus } : {}),
          ...(nics.length ? { nics } : {}),
          ...(req.volumes?.length ? { blockVolumes: await this.blockVolumePaths(req.volumes) } : {}),
        },
      });
    } catch (e) {
      if (nics.length) await this.p.network.detach(req.id).catch(() => undefined);
      throw e;
    }
    return this.vmHostState(req.id);
  }
  async createVmFromTemplate(templateId: string, id: string, name: string): Promise<VmHostState> {
    // a clone would open its template's taps and carry its MACs: not yet
    if (this.p.network.endpointsOf(templateId).length) throw new InvalidArgument('a VM with network interfaces cannot serve as a template yet');
    await this.p.vms.createFromTemplate(templateId, id, name);
    return this.vmHostState(id);
  }
  async startVm(id: string): Promise<VmHostState> {
    await this.p.vms.start(id);
    return this.vmHostState(id);
  }
  async stopVm(id: string, timeoutSec: number): Promise<VmHostState> {
    await this.p.vms.stop(id, timeoutSec);
    return this.vmHostState(id);
  }
  killVm(id: string, signal: string) {
    return this.p.vms.kill(id, signal);
  }
  pauseVm(id: string) {
    return this.p.vms.pause(id);
  }
  unpauseVm(id: string) {
    return this.p.vms.unpause(id);
  }
  resizeVm(id: string, want: { cpus?: number; memoryMiB?: number }) {
    return this.p.vms.resize(id, want);
  }
  saveVm(id: string) {
    return this.p.vms.saveState(id);
  }
  restoreVm(id: string) {
    return this.p.vms.restoreState(id);
  }
  vmState(id: string) {
    return this.vmHostState(id);
  }
  inspectVm(id: string) {
    return this.p.vms.inspect(id);
  }
  async vmStats(id: string) {
    return this.p.network.withCounters(id, await this.p.vms.stats(id));
  }
  openVmConsole(id: string) {
    return this.p.vms.openConsole(id);
  }
  vmLogs(id: string, opts: Parameters<InstanceDriver['logs']>[1]) {
    return this.p.vms.logs(id, opts);
  }
  async removeVm(id: string) {
    await this.p.vms.delete(id);
    await this.p.network.detach(id); // its taps
  }
  listVms() {
    return this.p.vms.list();
  }
  async reconcileVms() {
    // the KVM probe's initrd (hostProbeGuest): a probe QEMU a killed nimbusd left runs forever
    const probes = killOrphanProbes(join(this.p.options.vmsDir, 'probe-empty.initrd'));
    const r = await this.p.vms.reconcile();
    return { ...r, killed: [...r.killed, ...probes] };
  }
  vmMigrationSpec(id: string) {
    return this.p.vms.migrationSpec(id);
  }
  async prepareVmIncoming(spec: VmMigrationSpec) {
    // the same rule for boot files as a create: they must be ones this host may boot from
    const config = { ...spec.config };
    for (const role of ['kernel', 'initrd', 'disk'] as const) {
      const file = config[role];
      if (typeof file === 'string') config[role] = await this.hostFiles.resolve(role, file);
    }
    const storage = spec.storage?.backing ? { ...spec.storage, backing: await this.hostFiles.resolve('disk', spec.storage.backing) } : spec.storage;
    // its block volumes: this host's files of them (made empty by the control plane before; the
    // source mirrors into them), never the source's paths
    if (Array.isArray(config.blockVolumes) && config.blockVolumes.length) {
      const asked = config.blockVolumes as Array<{ volumeId: string; readonly?: boolean; boot?: boolean; shared?: boolean }>;
      if (asked.some((b) => b.shared)) throw new Conflict(`VM ${spec.id} has a shared volume attached: it cannot move`, { id: spec.id });
      config.blockVolumes = await this.blockVolumePaths(asked.map((b) => ({ volumeId: b.volumeId, ...(b.readonly ? { readonly: true } : {}), ...(b.boot ? { boot: true } : {}) })));
    }
    // its taps here before QEMU opens them: same names (from the VM's id) and MACs (from the addresses)
    if (spec.nics?.length) config.nics = await this.p.network.attachTaps(spec.id, spec.nics);
    try {
      // the stream comes in on the address other hosts reach this one by
      return await this.p.vms.prepareIncoming({ ...spec, config, ...(storage ? { storage } : {}) }, this.p.options.migrationAddress);
    } catch (e) {
      if (spec.nics?.length) await this.p.network.detach(spec.id).catch(() => undefined);
      throw e;
    }
  }
  async migrateVmOut(id: string, uri: string, opts: MigrateOutOptions) {
    const out = await this.p.vms.migrateOut(id, uri, opts);
    // the guest no longer runs here: frames for it stop going into this host's taps
    await this.p.network.setTaps(id, false).catch((e: unknown) => log.warn('taking a migrated VM\'s taps down failed', { id, error: String(e) }));
    return out;
  }
  async finishVmIncoming(id: string, consoleHistory: string) {
    const { resumedAt } = await this.p.vms.finishIncoming(id, consoleHistory);
    return { resumedAt, state: await this.vmHostState(id) };
  }
  async abandonVmIncoming(id: string) {
    await this.p.vms.abandonIncoming(id);
    await this.p.network.detach(id); // its taps, if it had NICs
  }
  async endVmMigration(id: string, outcome: 'moved' | 'resume') {
    if (outcome === 'resume') await this.p.network.setTaps(id, true);
    await this.p.vms.endMigration(id, outcome);
    if (outcome === 'moved') await this.p.network.detach(id); // the guest's NICs are the destination's taps now
  }
  onVmExit(listener: (id: string) => void): void {
    this.vmExitListeners.push(listener);
  }

  // ---------------------------------------------------------------- block volumes on VMs (docs/volumes.md "Block volumes")

  /** The volumes' qcow2 files here (NotFound for one this host lacks). */
  private async blockVolumePaths(vols: NonNullable<VmCreateRequest['volumes']>): Promise<Array<{ volumeId: string; path: string; readonly?: boolean; boot?: boolean; format?: 'raw'; shared?: boolean }>> {
    return Promise.all(vols.map(async (v) => {
      const b = await this.p.blockVolume(v.volumeId);
      return { ...v, path: b.path, ...(b.format === 'raw' ? { format: 'raw' as const, shared: true } : {}) };
    }));
  }
  async attachVmVolume(vmId: string, volume: { volumeId: string; readonly?: boolean; boot?: boolean }) {
    const [b] = await this.blockVolumePaths([volume]);
    return this.p.vms.attachVolume(vmId, b!);
  }
  detachVmVolume(vmId: string, volumeId: string) {
    return this.p.vms.detachVolume(vmId, volumeId);
  }
}

/**
 * KVM only when a probe boot of the host kernel gets through under it, else TCG;
 * cached per host boot in the VM directory (a hanging probe costs its whole bound).
 */
async function chooseVmAccelerator(options: Pick<CompiledOptions, 'vmAccel' | 'vmsDir'>): Promise<AcceleratorChoice> {
  const force = options.vmAccel === 'auto' ? undefined : options.vmAccel;
  const guest = await hostProbeGuest(options.vmsDir);
  if (!guest) {
    const accel = force ?? 'tcg';
    const reason = force ? `forced (NIMBUS_VM_ACCEL=${force})` : 'no host kernel in /boot to probe KVM with; using TCG';
    return { accel, reason, bootId: '', decidedAt: new Date().toISOString() };
  }
  return chooseAccelerator({ guest, cacheFile: join(options.vmsDir, 'accel.json'), ...(force ? { force } : {}) });
}
