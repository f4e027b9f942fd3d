/**
 * `docker cp` on a host (agent.ts ContainerCopyHost): a path of a container's rootfs stat'ed, read
 * as a tar, or a tar extracted under a directory of it, running or not.
 *
 * Where: the rootfs as the container driver mounted it (bundle/rootfs, the overlay of the image's
 * layers under the container's writable layer, mounted from create to removal), so writes land in
 * the writable layer, never in a shared image layer. A container whose rootfs is not mounted here
 * (a host restarted since it ran) gets its writable snapshot mounted aside for the copy.
 *
 * Safety: the path and the tar are hostile, and so is the tree (a tenant's). Paths are resolved
 * inside the rootfs (container-paths.ts); the tar is written out by tree-tar.ts (never following a
 * symlink) and unpacked by apply-layer.ts (entries kept under the extraction point, no parent that
 * is a symlink, files opened O_NOFOLLOW|O_EXCL, hard links inside it, no device nodes, size and
 * entry limits, the disk's reserve). All of that checks a path, then uses it: a running container
 * could swap a checked directory for a symlink in between (CVE-2018-15664, dockerd's own). So a
 * running container is frozen (the runtime's pause) for as long as its tree is walked, and thawed
 * after (a copy out is spooled to disk first: the caller's pace holds nothing); a copy holds off the container's start, stop, pause, unpause and removal until it ends
 * (dockerd holds its container lock likewise), and copies of one container take turns.
 * Secure containers (a microVM's disk) are refused.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Conflict, InvalidArgument, NotFound, hasCode } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { RoomPacer, type UnpackRoom } from '../content/disk-space.js';
import type { RuntimeState } from '../drivers/instance-driver.js';
import { applyLayer } from '../layers/apply-layer.js';
import { DEFAULT_LAYER_MAX_BYTES } from '../layers/unpack-limits.js';
import { exportTree } from '../move/tree-tar.js';
import { mountAll, unmountAll } from '../snapshots/mount.js';
import type { MountSpec } from '../snapshots/snapshotter.js';
import type { ContainerArchiveResult, ContainerPathStat } from '../agent.js';
import { pathStat, resolveContainerPath } from './container-paths.js';

const log = logger('agent.copy');


/** The mounts every container has besides its own (oci-spec.ts, and the /etc files the driver binds). */
export const DEFAULT_MOUNT_POINTS = ['/proc', '/dev', '/sys', '/etc/hosts', '/etc/resolv.conf', '/etc/hostname'];

export interface ContainerArchiveOptions {
  /** Refuse to replace a directory with a non-directory or the reverse (the docker CLI always asks). */
  noOverwriteDirNonDir?: boolean;
  /** `docker cp -a`: every entry owned by the container's user instead of the tar's owners. */
  copyUIDGID?: boolean;
}

/** What the container driver knows of a container it holds. */
export interface CopyView {
  /** Its rootfs as mounted on this host; absent when it is not mounted. */
  rootfs?: string;
  /** Container paths something is mounted on. */
  mountPoints: string[];
  /** Its process's uid and gid. */
  user: { uid: number; gid: number };
}

export interface CopyHostParts {
  agentName: string;
  isSecure(id: string): boolean;
  /** The driver's view; undefined when the driver holds no state for it. */
  view(id: string): Promise<CopyView | undefined>;
  /** Runtime state; NotFound when the driver has none. */
  state(id: string): Promise<RuntimeState>;
  freeze(id: string): Promise<void>;
  thaw(id: string): Promise<void>;
  /** The container's writable snapshot's mounts (NotFound: the host has no such container). */
  snapshotMounts(id: string): Promise<MountSpec[]>;
  /** The saved request's mount targets and user, for a container the driver holds nothing of. */
  saved(id: string): Promise<{ mountPoints: string[] }>;
  /** Where a snapshot is mounted aside. */
  scratchDir: string;
  room(): UnpackRoom;
  /** Most bytes of files one extraction writes; absent: the per-layer unpack limit (16 GiB). */
  maxBytes?: number;
}

interface Gate {
  copying: boolean;
  ops: number;
  waiters: Array<() => void>;
  /** Callers holding or waiting on it: it is forgotten only at 0, so two callers never hold two gates of one id. */
  users: number;
}

/** A rootfs open for a copy: where, what is mounted in it, and how to let go of it. */
interface OpenRootfs {
  root: string;
  mountPoints: string[];
  user: { uid: number; gid: number };
  close(): Promise<void>;
}

export class CopyHost {
  private readonly gates = new Map<string, Gate>();
  private scratchSwept = false;

  constructor(private readonly p: CopyHostParts) {}

  private gate(id: string): Gate {
    let g = this.gates.get(id);
    if (!g) this.gates.set(id, (g = { copying: false, ops: 0, waiters: [], users: 0 }));
    g.users++;
    return g;
  }

  /** One caller is done with the gate: the waiters look again. */
  private leave(id: string, g: Gate): void {
    if (--g.users === 0) this.gates.delete(id);
    for (const f of g.waiters.splice(0)) f();
  }

  /**
   * A lifecycle call (start, stop, pause, unpause, remove) waits for the container's copy in
   * progress, and a copy waits for those in progress: they change the rootfs' mount or thaw it.
   */
  async lifecycle<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const g = this.gate(id);
    while (g.copying) await new Promise<void>((r) => g.waiters.push(r));
    g.ops++;
    try {
      return await fn();
    } finally {
      g.ops--;
      this.leave(id, g);
    }
  }

  /** The copy's turn: once no other copy and no lifecycle call is in progress. */
  private async copyTurn(id: string): Promise<() => void> {
    const g = this.gate(id);
    while (g.copying || g.ops > 0) await new Promise<void>((r) => g.waiters.push(r));
    g.copying = true;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      g.copying = false;
      this.leave(id, g);
    };
  }

  /** The container's rootfs, frozen when it runs; close() thaws it (and unmounts one mounted aside). */
  private async open(id: string): Promise<OpenRootfs> {
    if (this.p.isSecure(id)) {
      throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM (--runtime vm): its files are in the microVM's disk, which copies do not reach; exec in it instead`, { container: id });
    }
    const release = await this.copyTurn(id);
    try {
      const view = await this.p.view(id);
      let state: RuntimeState['status'] = 'stopped';
      if (view) {
        state = await this.p.state(id).then((s) => s.status, (e: unknown) => {
          if (hasCode(e, 'NotFound')) return 'stopped' as const;
          throw e;
        });
      }
      if (view?.rootfs) {
        const frozen = state === 'running';
        if (frozen) await this.p.freeze(id);
        const root = view.rootfs;
        return {
          root, mountPoints: view.mountPoints, user: view.user,
          close: async () => {
            try {
              // a container killed meanwhile has nothing to thaw; the copy itself went through
              if (frozen) await this.p.thaw(id).catch((e: unknown) => log.error('thawing a container after a copy failed', { container: id, error: String(e) }));
            } finally {
              release();
            }
          },
        };
      }
      if (state === 'running' || state === 'paused') throw new Conflict(`container ${id.slice(0, 12)} runs but its rootfs is not mounted on host ${this.p.agentName}`, { container: id });
      return await this.mountAside(id, view, release);
    } catch (e) {
      release();
      throw e;
    }
  }

  /**
   * docker commit: fn given the container's writable layer (its overlay upper directory), under
   * the copy gate (no start, stop, pause, unpause or removal meanwhile), a running container
   * frozen for as long as fn runs when `pause` (a paused one stays as it is). Resolves to fn's answer.
   */
  async withWritableLayer<T>(id: string, pause: boolean, fn: (upperDir: string) => Promise<T>): Promise<T> {
    if (this.p.isSecure(id)) {
      throw new Conflict(`container ${id.slice(0, 12)} runs in its own microVM (--runtime vm): its files are in the microVM's disk, which a commit does not reach`, { container: id });
    }
    const release = await this.copyTurn(id);
    let frozen = false;
    try {
      const mounts = await this.p.snapshotMounts(id).catch((e: unknown) => {
        if (hasCode(e, 'NotFound')) throw new NotFound(`container ${id.slice(0, 12)} has no writable layer on host ${this.p.agentName}`, { container: id });
        throw e;
      });
      const upper = mounts.find((m) => m.type === 'overlay')?.options.find((o) => o.startsWith('upperdir='));
      if (!upper) throw new Conflict(`container ${id.slice(0, 12)}'s writable layer on host ${this.p.agentName} is not an overlay upper directory (the native snapshotter): it cannot be committed`, { container: id });
      const view = await this.p.view(id);
      const state = view ? await this.p.state(id).then((s) => s.status, (e: unknown) => {
        if (hasCode(e, 'NotFound')) return 'stopped' as const;
        throw e;
      }) : 'stopped';
      if (pause && state === 'running') {
        await this.p.freeze(id);
        frozen = true;
      }
      return await fn(upper.slice('upperdir='.length));
    } finally {
      try {
        if (frozen) await this.p.thaw(id).catch((e: unknown) => log.error('thawing a container after a commit failed', { container: id, error: String(e) }));
      } finally {
        release();
      }
    }
  }

  /** A stopped container the driver holds no mount of: its writable snapshot mounted under scratchDir for the copy. */
  private async mountAside(id: string, view: CopyView | undefined, release: () => void): Promise<OpenRootfs> {
    const mounts = await this.p.snapshotMounts(id).catch((e: unknown) => {
      if (hasCode(e, 'NotFound')) throw new NotFound(`container ${id.slice(0, 12)} has no writable layer on host ${this.p.agentName}`, { container: id });
      throw e;
    });
    await this.sweepScratch();
    const root = path.join(this.p.scratchDir, `${id.slice(0, 32)}-${randomBytes(4).toString('hex')}`);
    await mkdir(root, { recursive: true, mode: 0o700 });
    try {
      await mountAll(mounts, root);
    } catch (e) {
      await rm(root, { recursive: true, force: true });
      throw e;
    }
    const saved = view ? { mountPoints: view.mountPoints } : await this.p.saved(id).catch(() => ({ mountPoints: [] as string[] }));
    return {
      root, mountPoints: [...DEFAULT_MOUNT_POINTS, ...saved.mountPoints], user: view?.user ?? { uid: 0, gid: 0 },
      close: async () => {
        try {
          await unmountAll(root);
          await rm(root, { recursive: true, force: true });
        } finally {
          release();
        }
      },
    };
  }

  /** Mounts a crashed agent left aside: gone before the first of this process. */
  private async sweepScratch(): Promise<void> {
    if (this.scratchSwept) return;
    this.scratchSwept = true;
    const left = await readdir(this.p.scratchDir).catch(() => [] as string[]);
    for (const d of left) {
      const dir = path.join(this.p.scratchDir, d);
      await unmountAll(dir).then(() => rm(dir, { recursive: true, force: true })).catch((e: unknown) => log.warn('a copy mount left by an earlier run stays', { dir, error: String(e) }));
    }
  }

  async stat(id: string, p: string): Promise<ContainerPathStat> {
    const r = await this.open(id);
    try {
      return pathStat(r.root, resolveContainerPath(r.root, p, { followLast: false, mountPoints: r.mountPoints }), r.mountPoints);
    } finally {
      await r.close();
    }
  }

  /**
   * The path as a tar (dockerd's: entries named from the path's last component) with its stat.
   * The tar is spooled to an unlinked file of the host while the container is held (frozen when it
   * runs, its start, stop and removal waiting), and the container is let go before the caller reads:
   * streamed straight out, a caller that stopped reading (the reader role may copy) held a running
   * container frozen for as long as its connection stayed open. The spool is bounded by the layer
   * limit and by the disk's reserve.
   */
  async read(id: string, p: string): Promise<{ stat: ContainerPathStat; bytes: Readable }> {
    const r = await this.open(id);
    let stat: ContainerPathStat;
    let spool: FileHandle | undefined;
    try {
      const resolved = resolveContainerPath(r.root, p, { followLast: false, mountPoints: r.mountPoints });
      stat = pathStat(r.root, resolved, r.mountPoints);
      const tar = exportTree(resolved.hostPath, { kind: 'plain', rootName: resolved.name === '/' ? '.' : resolved.name, whiteoutNames: 'keep', maxBytes: this.p.maxBytes ?? DEFAULT_LAYER_MAX_BYTES });
      await mkdir(this.p.scratchDir, { recursive: true });
      const file = path.join(this.p.scratchDir, `read-${randomBytes(8).toString('hex')}.tar`);
      try {
        await pipeline(tar, this.roomChecked(id), createWriteStream(file, { flags: 'wx', mode: 0o600 }));
        spool = await open(file, 'r');
      } finally {
        await rm(file, { force: true }); // the descriptor keeps it: nothing is left whatever becomes of the caller
      }
    } catch (e) {
      await spool?.close();
      throw e;
    } finally {
      await r.close();
    }
    return { stat, bytes: spool.createReadStream() };
  }

  /** Bytes passed through, the disk's room asked again when due (RoomPacer: ResourceExhausted at its reserve). */
  private roomChecked(id: string): Transform {
    const pacer = new RoomPacer(this.p.room(), `a copy out of container ${id.slice(0, 12)}`);
    let written = 0;
    return new Transform({
      transform(chunk: Buffer, _enc, cb) {
        written += chunk.length;
        if (!pacer.due(written)) return cb(null, chunk);
        pacer.check(written).then(() => cb(null, chunk), cb);
      },
    });
  }

  /** The tar extracted under the directory p (its last symlink followed, as dockerd does). */
  async write(id: string, p: string, opts: ContainerArchiveOptions, bytes: AsyncIterable<Uint8Array>): Promise<ContainerArchiveResult> {
    const r = await this.open(id);
    try {
      const resolved = resolveContainerPath(r.root, p, { followLast: true, mountPoints: r.mountPoints });
      if (!resolved.stat) throw new NotFound(`no such directory: ${JSON.stringify(p)}`, { path: p });
      if (!resolved.stat.isDirectory()) throw new InvalidArgument('extraction point is not a directory', { path: p });
      const max = this.p.maxBytes ?? DEFAULT_LAYER_MAX_BYTES;
      const out = await applyLayer(resolved.hostPath, bytes, {
        mediaType: 'application/x-tar',
        mode: 'native',
        whiteouts: 'literal',
        // the container's own files: root in it could set these bits itself (dockerd keeps them too)
        allowSetuid: true,
        devices: 'refuse',
        fifos: 'allow',
        xattrs: true,
        digest: `the copy into ${p.slice(0, 200)}`,
        limits: { maxUnpackedBytes: max, maxEntryBytes: max },
        room: this.p.room(),
        ...(opts.noOverwriteDirNonDir ? { noOverwriteDirNonDir: true } : {}),
        ...(opts.copyUIDGID ? { owner: r.user } : {}),
      });
      return { bytes: out.size, entries: out.entries, unpackedBytes: out.unpackedBytes };
    } finally {
      await r.close();
    }
  }
}
