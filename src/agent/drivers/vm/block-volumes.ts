/**
 * Block volumes on a VM (docs/volumes.md "Block volumes"): virtio-blk disks plugged into a running
 * guest over QMP (blockdev-add + device_add; device_del, the guest's DEVICE_DELETED, then
 * blockdev-del), and the list the VM's record keeps, which its argv is built from at the next
 * start (qemu.ts: blockVolumeArgs, the same node and device names, so a disk attached at boot
 * unplugs like a hot-plugged one).
 */
import { Conflict, InvalidArgument, NotFound } from '../../../core/errors.js';
import { blockVolumeNames, type BlockVolumeConfig } from './qemu.js';
import { withQmp, type InstancePaths } from './qemu-process.js';

/** How long a detach waits for the guest to let go of the disk (ACPI eject) before it is refused. */
export const DETACH_TIMEOUT_MS = 60_000;
/** Most block volumes on one VM (PCI slots on the pc machine's bus: 32, less the VM's own devices). */
export const MAX_BLOCK_VOLUMES = 16;

type Lifecycle = 'created' | 'running' | 'paused' | 'stopped' | 'saved';

/** Whether a change applies to QEMU now (running) or only to the record (created, stopped); Conflict otherwise. */
export function blockChangeMode(vm: string, lifecycle: Lifecycle, verb: 'attach' | 'detach'): 'live' | 'record' {
  if (lifecycle === 'running') return 'live';
  if (lifecycle === 'created' || lifecycle === 'stopped') return 'record';
  if (lifecycle === 'saved') throw new Conflict(`cannot ${verb} a volume while VM ${vm} is saved: its saved state holds its devices; restore it first`, { id: vm });
  throw new Conflict(`cannot ${verb} a volume while VM ${vm} is ${lifecycle}: unpause it first (the guest must see the change)`, { id: vm });
}

/** The record's list with `b` added; Conflict when it is there already. */
export function withVolume(list: readonly BlockVolumeConfig[] | undefined, b: BlockVolumeConfig): BlockVolumeConfig[] {
  blockVolumeNames(b.volumeId); // checks the id
  if (!b.path.startsWith('/')) throw new InvalidArgument('a block volume\'s path must be absolute');
  const now = list ?? [];
  if (now.some((x) => x.volumeId === b.volumeId)) throw new Conflict(`volume ${b.volumeId} is attached to this VM already`, { volume: b.volumeId });
  if (now.length >= MAX_BLOCK_VOLUMES) throw new Conflict(`a VM holds at most ${MAX_BLOCK_VOLUMES} block volumes`);
  if (b.boot && now.some((x) => x.boot)) throw new Conflict('this VM has a boot volume already');
  return [...now, b];
}

/** The record's list without the volume; NotFound when it is not attached. */
export function withoutVolume(list: readonly BlockVolumeConfig[] | undefined, volumeId: string): BlockVolumeConfig[] {
  const now = list ?? [];
  if (!now.some((x) => x.volumeId === volumeId)) throw new NotFound(`volume ${volumeId} is not attached to this VM`, { volume: volumeId });
  return now.filter((x) => x.volumeId !== volumeId);
}

/** Hot-plug: the qcow2 as a block node, then a virtio-blk device on it (the guest sees a new vdX). */
export async function plugBlockVolume(p: InstancePaths, b: BlockVolumeConfig): Promise<void> {
  const n = blockVolumeNames(b.volumeId);
  await withQmp(p, async (c) => {
    await c.execute('blockdev-add', { driver: b.format ?? 'qcow2', 'node-name': n.node, 'read-only': b.readonly === true, file: { driver: 'file', filename: b.path } });
    try {
      await c.execute('device_add', { driver: 'virtio-blk-pci', id: n.device, drive: n.node, serial: n.serial, ...(b.shared ? { 'share-rw': true } : {}) });
    } catch (e) {
      await c.execute('blockdev-del', { 'node-name': n.node }).catch(() => undefined);
      throw e;
    }
  });
}

/**
 * Hot-unplug: device_del asks the guest to release the disk (ACPI eject); only its DEVICE_DELETED
 * says it did, and then the block node goes (QEMU closes the file). A guest that does not answer
 * within the timeout keeps the disk: Conflict, and the volume stays attached (a later detach
 * finds the device gone if the guest let go meanwhile).
 */
export async function unplugBlockVolume(p: InstancePaths, volumeId: string, timeoutMs = DETACH_TIMEOUT_MS): Promise<void> {
  const n = blockVolumeNames(volumeId);
  await withQmp(p, async (c) => {
    const deleted = c.waitForEvent('DEVICE_DELETED', timeoutMs, (e) => (e.data as { device?: string } | undefined)?.device === n.device);
    let present = true;
    try {
      await c.execute('device_del', { id: n.device });
    } catch (e) {
      if (!/not found/i.test(String(e))) {
        deleted.catch(() => undefined);
        throw e;
      }
      present = false; // released after an earlier detach timed out
    }
    if (present) {
      try {
        await deleted;
      } catch {
        throw new Conflict(`the guest did not release volume ${volumeId} within ${Math.round(timeoutMs / 1000)} s (no ACPI eject): it stays attached; try again, or stop the VM and detach`, { volume: volumeId });
      }
    } else {
      deleted.catch(() => undefined);
    }
    await c.execute('blockdev-del', { 'node-name': n.node }).catch((e: unknown) => {
      if (!/not found|cannot find/i.test(String(e))) throw e;
    });
  }, timeoutMs + 5000);
}
