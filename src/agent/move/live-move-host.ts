/**
 * The host's half of a live container move (agent.ts ContainerLiveMoveHost): the checkpoint at
 * the source (runc + CRIU, drivers/container/checkpoint.ts), its images out and in as a tar
 * (tree-tar.ts, checked as hostile input), and the restore at the destination: the container's
 * network namespace made first with its endpoints (same address and MAC), then the container
 * restored into it. LocalAgent delegates here with the parts it owns.
 */
import { mkdir, rm } from 'node:fs/promises';
import { totalmem } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Conflict, InvalidArgument, Unavailable } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { CheckpointResult, ContainerCreateRequest, ContainerLiveMoveHost, LiveMoveSupport, TreeImportResult } from '../agent.js';
import type { RuntimeState } from '../drivers/instance-driver.js';
import type { ContainerDriver } from '../drivers/container/container-driver.js';
import { probeCriu } from '../drivers/container/criu.js';
import { exportTree, importTree } from './tree-tar.js';

const log = logger('agent.live-move');

export interface LiveMoveHostParts {
  agentName: string;
  containers: Pick<ContainerDriver, 'checkpoint' | 'checkpointImages' | 'restore'>;
  /** The container's named network namespace here, when it has one. */
  netnsOf(id: string): string | undefined;
  /** Made at the destination before the restore: the namespace and endpoints of the request (attach without a process). */
  plumbFresh(req: ContainerCreateRequest): Promise<void>;
  /** Undone when a restore fails. */
  unplumb(id: string): Promise<void>;
  /** As createContainer prepares it: the spec and the request's mounts (volumes mounted). */
  restoreSpec(req: ContainerCreateRequest): Promise<{ spec: Parameters<ContainerDriver['restore']>[0]; mounts: Parameters<ContainerDriver['restore']>[1]['mounts'] }>;
  saveRequest(req: ContainerCreateRequest): Promise<void>;
  warnings(id: string): Promise<string[]>;
  runtimeOf(id: string): Promise<string>;
}

/** What `nimbus hosts` and the move's check read: a CRIU that passed `criu check` here, or why none did. */
export async function liveMoveSupport(): Promise<LiveMoveSupport> {
  const p = await probeCriu();
  return p.path ? { usable: true, criu: p.path, ...(p.version ? { version: p.version } : {}) } : { usable: false, reason: p.reason ?? 'no criu' };
}

async function needCriu(host: string): Promise<string> {
  const p = await probeCriu();
  if (!p.path) throw new Unavailable(`host ${host} cannot checkpoint or restore containers: ${p.reason ?? 'no criu'}`, { host });
  return p.path;
}

export class LiveMoveHost implements ContainerLiveMoveHost {
  constructor(private readonly p: LiveMoveHostParts) {}

  async checkpointContainer(id: string): Promise<CheckpointResult> {
    const criu = await needCriu(this.p.agentName);
    const netnsPath = this.p.netnsOf(id);
    const r = await this.p.containers.checkpoint(id, { criu, ...(netnsPath ? { netnsPath } : {}) });
    log.info('container checkpointed', { id, bytes: r.bytes, ms: r.ms });
    return r;
  }

  async exportCheckpoint(id: string): Promise<Readable> {
    return exportTree(this.p.containers.checkpointImages(id), { kind: 'plain' });
  }

  async importCheckpoint(id: string, bytes: AsyncIterable<Uint8Array>): Promise<TreeImportResult> {
    const images = this.p.containers.checkpointImages(id);
    // a failed move's images are replaced; a container of that id here is refused by the restore
    await rm(path.dirname(images), { recursive: true, force: true });
    await mkdir(images, { recursive: true, mode: 0o700 });
    try {
      // the images are the processes' memory and kernel state: never more than this host's memory
      return await importTree(images, bytes, { kind: 'plain', maxBytes: totalmem(), what: `the checkpoint of container ${id.slice(0, 12)}` });
    } catch (e) {
      await rm(path.dirname(images), { recursive: true, force: true });
      throw e;
    }
  }

  async restoreContainer(req: ContainerCreateRequest): Promise<RuntimeState & { warnings: string[]; runtime: string }> {
    const criu = await needCriu(this.p.agentName);
    if (req.runtime === 'vm') throw new InvalidArgument('secure containers (--runtime vm) do not move live');
    if (req.process.terminal || req.process.stdin) throw new Conflict(`container ${req.id.slice(0, 12)} has a terminal or an open stdin: it does not move live`);
    await this.p.saveRequest(req);
    // the namespace first (same address and MAC), joined by path: CRIU restores into it
    const madeNetns = req.network?.mode === 'networks' && !this.p.netnsOf(req.id);
    if (madeNetns) await this.p.plumbFresh(req);
    try {
      const { spec, mounts } = await this.p.restoreSpec(req);
      const state = await this.p.containers.restore(spec, { criu, ...(mounts?.length ? { mounts } : {}) });
      return { ...state, warnings: await this.p.warnings(req.id), runtime: await this.p.runtimeOf(req.id) };
    } catch (e) {
      if (madeNetns) await this.p.unplumb(req.id).catch((x: unknown) => log.warn('undoing the endpoints of a failed restore', { id: req.id, error: String(x) }));
      throw e;
    }
  }
}
