/**
 * The host's half of a cold container move (agent.ts ContainerMoveHost): a stopped container's
 * writable layer, its log and a volume's data out as tar streams, and in at the destination,
 * checked as hostile input (tree-tar.ts, drivers/container/log-transfer.ts). LocalAgent delegates
 * here with the parts it owns.
 */
import { readdir } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { ContainerCreateRequest, ContainerMoveHost, LayerImportOptions, TreeImportResult } from '../agent.js';
import type { RuntimeState } from '../drivers/instance-driver.js';
import type { UnpackRoom } from '../content/disk-space.js';
import { layerSize, type MountSpec, type Snapshotter } from '../snapshots/snapshotter.js';
import { DEFAULT_LAYER_MAX_BYTES } from '../layers/unpack-limits.js';
import { exportTree, importTree } from './tree-tar.js';

const log = logger('agent.move');

export interface MoveHostParts {
  agentName: string;
  snapshotter: Snapshotter;
  /** The runtime's state of a container; NotFound when the host has none. */
  containerState(id: string): Promise<RuntimeState>;
  /** Ids the host holds containers (or their writable layers) for. */
  listContainers(): Promise<string[]>;
  snapshotExists(key: string): Promise<boolean>;
  /** A volume mounted on the host: where its data is, and its size. */
  volume(id: string): Promise<{ path: string; sizeBytes: number }>;
  /** Free space of the snapshots' filesystem. */
  room: () => UnpackRoom;
  /** The request a container was created with, as the host saved it. */
  savedRequest(id: string): Promise<ContainerCreateRequest>;
  /** The per-layer unpack limit (NIMBUS_LAYER_MAX_BYTES); absent: the default. */
  layerMaxBytes?: number;
  /** A container's log files out and in (the container driver's: drivers/container/log-transfer.ts). */
  logs: {
    export(id: string): Promise<Readable>;
    import(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult>;
  };
  /** Containers a live move restored here, running, whose log is still to come (taken once). */
  restored?: Set<string>;
}

/** Where an overlay snapshot's own files are. */
function upperOf(mounts: MountSpec[]): string {
  const upper = mounts.find((m) => m.type === 'overlay')?.options.find((o) => o.startsWith('upperdir='));
  if (!upper) throw new Conflict('the container\'s writable layer is not an overlay upper directory');
  return upper.slice('upperdir='.length);
}

export class MoveHost implements ContainerMoveHost {
  constructor(private readonly p: MoveHostParts) {}

  /** Moves carry an overlay upper directory: a native snapshot is a whole copy of the image, not a layer. */
  private needOverlay(): void {
    if (this.p.snapshotter.name !== 'overlayfs') {
      throw new Conflict(`host ${this.p.agentName} uses the native snapshotter: only containers on overlayfs move between hosts`, { host: this.p.agentName });
    }
  }

  containerRequest(id: string): Promise<ContainerCreateRequest> {
    return this.p.savedRequest(id);
  }

  /** A container whose layer or log is read must not be writing to it. */
  private async needStopped(id: string, what: string): Promise<void> {
    const state = await this.p.containerState(id).catch((e: unknown) => {
      // a stopped container whose runtime state went (re-created at its next start) is still here by its layer
      if ((e as { code?: unknown }).code === 'NotFound') return { status: 'stopped' } as RuntimeState;
      throw e;
    });
    if (state.status !== 'stopped' && state.status !== 'created' && state.status !== 'unknown') {
      throw new Conflict(`container ${id.slice(0, 12)} is ${state.status}: only a stopped container's ${what} can be exported`, { container: id });
    }
  }

  async exportContainerLayer(id: string): Promise<Readable> {
    this.needOverlay();
    await this.needStopped(id, 'layer');
    const upper = upperOf(await this.p.snapshotter.mounts(id));
    log.debug('exporting a writable layer', { id });
    return exportTree(upper, { kind: 'overlay' });
  }

  async importContainerLayer(id: string, imageChainId: string, bytes: AsyncIterable<Uint8Array>, opts: LayerImportOptions = {}): Promise<TreeImportResult> {
    this.needOverlay();
    if (!(await this.p.snapshotExists(imageChainId))) throw new NotFound(`image layers ${imageChainId} are not on host ${this.p.agentName}`, { imageChainId });
    if ((await this.p.listContainers()).includes(id)) {
      throw new Conflict(`host ${this.p.agentName} has a container ${id.slice(0, 12)} already`, { container: id });
    }
    // sized as at its source: a layer that held more than that never fits (ENOSPC), and nothing stays
    const mounts = await this.p.snapshotter.prepare(id, imageChainId, layerSize(opts));
    try {
      return await importTree(upperOf(mounts), bytes, {
        kind: 'overlay', maxBytes: this.p.layerMaxBytes ?? DEFAULT_LAYER_MAX_BYTES, room: this.p.room(), what: `the writable layer of container ${id.slice(0, 12)}`,
      });
    } catch (e) {
      await this.p.snapshotter.remove(id).catch((x: unknown) => log.warn('removing a half-imported layer failed', { id, error: String(x) }));
      throw e;
    }
  }

  async exportContainerLogs(id: string): Promise<Readable> {
    await this.needStopped(id, 'log');
    return this.p.logs.export(id);
  }

  async importContainerLogs(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult> {
    // made by createContainer, not started: nothing of its own in its log yet
    const state = await this.p.containerState(id);
    // restored by a live move: running already, its own output after the generations placed before it
    if (state.status === 'running' && this.p.restored?.delete(id)) return this.p.logs.import(id, bytes);
    if (state.status !== 'created') throw new Conflict(`container ${id.slice(0, 12)} is ${state.status} on host ${this.p.agentName}: a log is imported before its first start only`, { container: id });
    return this.p.logs.import(id, bytes);
  }

  async exportVolume(id: string): Promise<Readable> {
    const v = await this.p.volume(id);
    return exportTree(v.path, { kind: 'plain' });
  }

  async importVolume(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult> {
    const v = await this.p.volume(id);
    if ((await readdir(v.path)).length) throw new Conflict(`volume ${id} on host ${this.p.agentName} is not empty: data is imported into a new volume only`, { volume: id });
    if (!Number.isSafeInteger(v.sizeBytes) || v.sizeBytes <= 0) throw new InvalidArgument(`volume ${id} has no size`);
    return importTree(v.path, bytes, { kind: 'plain', maxBytes: v.sizeBytes, what: `volume ${id}` });
  }
}
