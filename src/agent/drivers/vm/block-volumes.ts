/**
 * Block volumes on a VM (docs/volumes.md "Block volumes"): virtio-blk disks plugged into a running
 * guest over QMP (blockdev-add + device_add; device_del, the guest's DEVICE_DELETED, then
 * blockdev-del), and the list the VM's record keeps, which its argv is built from at the next
 * start (qemu.ts: blockVolumeArgs, the same node and device names, so a disk attached at boot
 * unplugs like a hot-plugged one).
 */
import { Conflict, InvalidArgument, NotFound } from '../../../core/errors.js';
import { blockVolumeNames, type BlockVolumeConfig } from './qemu.js';
import { open, type FileHandle } from 'node:fs/promises';
import { runOk } from '../../../core/exec.js';
import { withQmp, type InstancePaths } from './qemu-process.js';
import { fdPlaceholder, handFdsToQemu } from './qmp-fds.js';

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

/**
 * The volume's file and the files under it (a clone's or a snapshot's backing chain), top first,
 * as qemu-img reads them (-U: another VM may hold a shared volume open).
 */
async function backingChain(file: string, format: 'qcow2' | 'raw'): Promise<Array<{ path: string; format: 'qcow2' | 'raw' }>> {
  if (format === 'raw') return [{ path: file, format }];
  const info = JSON.parse(await runOk('qemu-img', ['info', '--backing-chain', '-U', '--output=json', file])) as Array<{ filename: string; format: string }>;
  return info.map((l, i) => {
    if (l.format !== 'qcow2' && l.format !== 'raw') throw new InvalidArgument(`block volume ${i ? 'backing ' : ''}file is ${l.format}; qcow2 or raw expected`);
    return { path: i === 0 ? file : l.filename, format: l.format };
  });
}

/**
 * Hot-plug: the volume as a block node, then a virtio-blk device on it (the guest sees a new vdX).
 * QEMU may run as a user of its own (qemu-user.ts) that cannot open the files: they are opened
 * here and handed over as descriptors (qmp-fds.ts), each backing file as a read-only node of its own.
 */
export async function plugBlockVolume(p: InstancePaths, b: BlockVolumeConfig): Promise<void> {
  const n = blockVolumeNames(b.volumeId);
  const chain = await backingChain(b.path, b.format ?? 'qcow2');
  const files: FileHandle[] = [];
  try {
    for (const [i, layer] of chain.entries()) files.push(await open(layer.path, i === 0 && !b.readonly ? 'r+' : 'r'));
    let backing: Record<string, unknown> | undefined;
    for (let i = chain.length - 1; i >= 1; i--) {
      backing = { driver: chain[i]!.format, 'read-only': true, file: { driver: 'file', filename: fdPlaceholder(i) }, ...(backing ? { backing } : {}) };
    }
    const node = { driver: chain[0]!.format, 'node-name': n.node, 'read-only': b.readonly === true, file: { driver: 'file', filename: fdPlaceholder(0) }, ...(backing ? { backing } : {}) };
    await handFdsToQemu(p.qmpSocket, { op: 'blockdev-add', node }, files.map((f) => f.fd));
  } finally {
    for (const f of files) await f.close();
  }
  await withQmp(p, async (c) => {
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
