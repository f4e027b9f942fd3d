/**
 * A VM's hardware changed in place: vCPUs and memory (resize), block volumes (attach, detach).
 * While it runs the change goes to QEMU over QMP (hot-plug, the balloon) and to the record;
 * while it is created or stopped only to the record, for the next start.
 */
import { logger } from '../../../core/log.js';
import { Conflict, InvalidArgument } from '../../../core/errors.js';
import { blockChangeMode, plugBlockVolume, unplugBlockVolume, withoutVolume, withVolume } from './block-volumes.js';
import type { BlockVolumeConfig } from './qemu.js';
import { withQmp } from './qemu-process.js';
import { pinVcpus } from './vcpu-pinning.js';
import { foldHotplug, vcpuCount, type VmRecord, type VmRecords } from './vm-record.js';

const log = logger('vm-driver');

export class VmHotplug {
  constructor(private readonly records: VmRecords) {}

  /**
   * Change a VM's size where QEMU allows it. Running or paused: memory through the balloon,
   * below the boot size and back up to it (the guest's balloon driver gives the pages back),
   * and vCPUs added by hot-plug up to maxCpus. Created or stopped: vCPUs and memory for the next start.
   */
  resize(id: string, want: { cpus?: number; memoryMiB?: number }): Promise<{ cpus: number; memoryMiB: number; balloonMiB?: number }> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      if (want.cpus !== undefined && (!Number.isInteger(want.cpus) || want.cpus < 1 || want.cpus > 64)) throw new InvalidArgument(`cpus must be 1-64, got ${want.cpus}`, { id });
      if (want.memoryMiB !== undefined && (!Number.isInteger(want.memoryMiB) || want.memoryMiB < 16)) throw new InvalidArgument(`memory must be at least 16 MiB, got ${want.memoryMiB}`, { id });
      if (r.lifecycle === 'saved') throw new Conflict(`VM ${id} is saved: restore it first, or resize it once stopped`, { id });
      if (r.lifecycle === 'created' || r.lifecycle === 'stopped') {
        foldHotplug(r);
        if (want.cpus !== undefined) {
          if (r.config.maxCpus !== undefined && want.cpus > r.config.maxCpus) r.config.maxCpus = want.cpus;
          r.config.cpus = want.cpus;
          if (r.config.maxCpus === r.config.cpus) delete r.config.maxCpus;
        }
        if (want.memoryMiB !== undefined) r.config.memoryMiB = want.memoryMiB;
        delete r.balloonMiB;
        await this.records.save(r);
        return { cpus: r.config.cpus, memoryMiB: r.config.memoryMiB };
      }
      if (want.cpus !== undefined && want.cpus !== vcpuCount(r)) await this.hotplugVcpus(r, want.cpus);
      if (want.memoryMiB === undefined) return { cpus: vcpuCount(r), memoryMiB: r.config.memoryMiB, ...(r.balloonMiB ? { balloonMiB: r.balloonMiB } : {}) };
      if (!r.config.balloon) throw new Conflict(`VM ${id} has no balloon device: stop it to change its memory`, { id });
      if (want.memoryMiB > r.config.memoryMiB) {
        throw new InvalidArgument(`a running VM's memory can shrink and grow back up to its boot size (${r.config.memoryMiB} MiB), not to ${want.memoryMiB}; stop it to go beyond`, { id });
      }
      await withQmp(this.records.paths(id), (c) => c.execute('balloon', { value: want.memoryMiB! * 1024 * 1024 }));
      r.balloonMiB = want.memoryMiB;
      await this.records.save(r);
      return { cpus: vcpuCount(r), memoryMiB: r.config.memoryMiB, balloonMiB: want.memoryMiB };
    });
  }

  /** A block volume onto the VM (block-volumes.ts): hot-plugged while it runs, recorded for the next start while created or stopped. */
  attachVolume(id: string, b: BlockVolumeConfig): Promise<{ live: boolean }> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      const mode = blockChangeMode(id, r.lifecycle, 'attach');
      const next = withVolume(r.config.blockVolumes, b);
      if (mode === 'live') await plugBlockVolume(this.records.paths(id), b);
      r.config.blockVolumes = next;
      await this.records.save(r);
      return { live: mode === 'live' };
    });
  }

  /** The volume off the VM: unplugged (the guest must release it) while it runs, off the record otherwise. */
  detachVolume(id: string, volumeId: string, timeoutMs?: number): Promise<{ live: boolean }> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      const mode = blockChangeMode(id, r.lifecycle, 'detach');
      const next = withoutVolume(r.config.blockVolumes, volumeId);
      if (mode === 'live') await unplugBlockVolume(this.records.paths(id), volumeId, timeoutMs);
      if (next.length) r.config.blockVolumes = next;
      else delete r.config.blockVolumes;
      await this.records.save(r);
      return { live: mode === 'live' };
    });
  }

  /**
   * vCPU hot-plug on a running VM created with room for it (maxCpus): QMP device_add into the
   * free slots query-hotpluggable-cpus lists (the guest sees an ACPI CPU hot-add). The plugged
   * ones are recorded and replayed as -device on a restore or an incoming migration; the pin
   * list applies to the new threads.
   */
  private async hotplugVcpus(r: VmRecord, want: number): Promise<void> {
    const id = r.id;
    const max = r.config.maxCpus;
    if (max === undefined) throw new Conflict(`VM ${id} was created without room for more vCPUs (--max-cpus): stop it to change them`, { id });
    if (want > max) throw new InvalidArgument(`VM ${id} can grow to ${max} vCPUs while it runs (its --max-cpus), not ${want}; stop it to go beyond`, { id });
    // Removal would be device_del, which the guest must answer with an ACPI eject (the test guest's
    // kernel does not); one it answers later would leave the record naming a CPU QEMU no longer
    // has, and the next restore would not match its state. So vCPUs only come, while it runs.
    if (want < vcpuCount(r)) throw new Conflict(`VM ${id} has ${vcpuCount(r)} vCPUs: while it runs they can be added, not removed (stop it to go down)`, { id });
    const plugged = r.config.hotplugCpus ?? [];
    let failed = false;
    await withQmp(this.records.paths(id), async (c) => {
      const slots = await c.execute<Array<{ type: string; 'qom-path'?: string; props: Record<string, number> }>>('query-hotpluggable-cpus');
      const free = slots.filter((x) => x['qom-path'] === undefined).reverse(); // QEMU lists the highest slot first
      while (vcpuCount(r) < want) {
        const slot = free.shift();
        if (!slot) throw new Conflict(`VM ${id} has no free vCPU slot left`, { id });
        const cpu = { driver: slot.type, id: `vcpu${vcpuCount(r)}`, props: { ...slot.props } };
        await c.execute('device_add', { driver: cpu.driver, id: cpu.id, ...cpu.props });
        plugged.push(cpu);
        r.config.hotplugCpus = plugged; // recorded as soon as QEMU has it (saved below, also on failure)
      }
      r.pinning = r.pin?.length ? await pinVcpus(c, r.pin) : [];
    }, 30_000).catch((e: unknown) => {
      failed = true;
      throw e;
    }).finally(() => this.records.save(r).catch((e: unknown) => {
      // what QEMU has plugged is recorded also after a failure; a failed save must not hide its reason
      if (!failed) throw e;
      log.warn('recording the vCPUs a failed hot-plug left failed', { id, error: String(e) });
    }));
  }

  /** What the guest has given back so far: QMP query-balloon's actual size, MiB (running VMs with a balloon). */
  async balloonActualMiB(id: string): Promise<number | undefined> {
    const r = await this.records.load(id);
    if (!r.config.balloon || (r.lifecycle !== 'running' && r.lifecycle !== 'paused')) return undefined;
    const b = await withQmp(this.records.paths(id), (c) => c.execute<{ actual: number }>('query-balloon'));
    return Math.round(b.actual / (1024 * 1024));
  }
}
