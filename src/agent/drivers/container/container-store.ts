/**
 * Where the container driver keeps a container, and its meta.json. All state lives in files,
 * so a new driver on the same stateDir (a restarted daemon) picks up where the old one stopped:
 *
 *   <stateDir>/containers/<id>/meta.json          what we decided at create
 *   <stateDir>/containers/<id>/bundle/config.json the OCI spec; bundle/rootfs is the mount point
 *   <stateDir>/containers/<id>/{container,conmon}.pid, ctr.log (k8s-file), conmon.err
 *   <stateDir>/containers/<id>/persist/           conmon's persist dir (exit, oom)
 *   <stateDir>/containers/<id>/exit.json          exit code + OOM verdict, once observed
 *   <stateDir>/containers/<id>/warm/entry         a warm container's start script (warm-start.ts)
 *   <stateDir>/containers/<id>/warm/go            the fifo its stub waits on until the container's start
 *   <stateDir>/containers/<id>/criu.conf          CRIU's configuration for its checkpoint (checkpoint.ts)
 *   <stateDir>/checkpoints/<id>/images/            a live move's checkpoint (out at the source, in at the destination)
 *   <stateDir>/exits/<id>                          conmon's exit file
 *   <stateDir>/runtime/<runc|crun>/                the runtime's --root
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { InvalidArgument, NotFound } from '../../../core/errors.js';
import { isValidName } from '../../../core/ids.js';
import { replaceStateFile } from '../../../core/state-files.js';
import type { OciSpec } from './oci-spec.js';
import { OciRuntime, type RuntimeName } from './oci-runtime.js';
import { WARM_GO_FIFO } from './warm-start.js';

export interface ContainerMeta {
  id: string;
  name: string;
  runtime: RuntimeName;
  runtimePath: string;
  cgroupsPath: string;
  createdAt: string;
  startedAt?: string;
  pid?: number;
  warnings: string[];
  /** Created ahead of demand with the start stub and not claimed yet (warm-start.ts). */
  warm?: boolean;
  /** The main process's stdin is open to attach (conmon -i). */
  stdin?: 'open' | 'once';
  /** On a terminal (conmon -t). */
  terminal?: boolean;
  /** Checkpointed for a live move: its process is in the images, not running (state: unknown, no exit to record). */
  checkpointed?: boolean;
}

/** Whether a name can be a container's id (and so a directory or exit file of one): the names' rule (core/ids.ts). */
export const isContainerId = (name: string): boolean => isValidName(name);

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Asked in the caller's turn: one access() is a few µs, a thread-pool round trip ~50 µs of CPU here. */
export async function exists(p: string): Promise<boolean> {
  return existsSync(p);
}

export function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  return replaceStateFile(file, JSON.stringify(value, null, 1));
}

function checkedId(id: string): string {
  if (!isContainerId(id)) throw new InvalidArgument(`invalid container id ${JSON.stringify(id)}`);
  return id;
}

export class ContainerStore {
  /** meta.json as last written by this process: only it writes them, so reads need not go to disk. */
  private readonly metas = new Map<string, ContainerMeta>();

  constructor(
    /** Root of all of the driver's state (e.g. /var/lib/nimbus). */
    readonly stateDir: string,
  ) {}

  get containersDir(): string {
    return path.join(this.stateDir, 'containers');
  }
  get exitsDir(): string {
    return path.join(this.stateDir, 'exits');
  }
  dir(id: string): string {
    return path.join(this.containersDir, checkedId(id));
  }
  bundle(id: string): string {
    return path.join(this.dir(id), 'bundle');
  }
  rootfs(id: string): string {
    return path.join(this.bundle(id), 'rootfs');
  }
  configFile(id: string): string {
    return path.join(this.bundle(id), 'config.json');
  }
  exitFile(id: string): string {
    return path.join(this.exitsDir, id);
  }
  /** A live move's checkpoint images (outside the container's directory: a restore in place re-makes that). */
  checkpointImages(id: string): string {
    return path.join(this.stateDir, 'checkpoints', checkedId(id), 'images');
  }
  logPath(id: string): string {
    return path.join(this.dir(id), 'ctr.log');
  }
  /** A warm container's stub directory: its start script and go fifo (warm-start.ts). */
  warmDir(id: string): string {
    return path.join(this.dir(id), 'warm');
  }
  goFifo(id: string): string {
    return path.join(this.warmDir(id), WARM_GO_FIFO);
  }
  /** The container's runtime, with its --root under stateDir. */
  runtime(meta: Pick<ContainerMeta, 'runtime' | 'runtimePath'>): OciRuntime {
    return new OciRuntime(meta.runtime, meta.runtimePath, path.join(this.stateDir, 'runtime', meta.runtime));
  }

  /** The bundle's config.json as written at create (or at a warm container's claim). */
  async readConfig(id: string): Promise<OciSpec> {
    return JSON.parse(await readFile(this.configFile(id), 'utf8')) as OciSpec;
  }

  /** A copy of the container's meta: this process's last write, or the file (a daemon started again). */
  async meta(id: string): Promise<ContainerMeta> {
    const dir = this.dir(id);
    let m = this.metas.get(id);
    if (!m) {
      try {
        m = JSON.parse(await readFile(path.join(dir, 'meta.json'), 'utf8')) as ContainerMeta;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFound(`container ${id} not found`, { id });
        throw e;
      }
      this.metas.set(id, m);
    }
    return { ...m, warnings: [...m.warnings] };
  }

  async saveMeta(meta: ContainerMeta): Promise<void> {
    await writeJsonAtomic(path.join(this.dir(meta.id), 'meta.json'), meta);
    this.metas.set(meta.id, { ...meta, warnings: [...meta.warnings] });
  }

  /** The container's directory is gone: its meta with it. */
  forget(id: string): void {
    this.metas.delete(id);
  }

  async list(): Promise<string[]> {
    try {
      return (await readdir(this.containersDir, { withFileTypes: true }))
        .filter((d) => d.isDirectory() && isContainerId(d.name))
        .map((d) => d.name)
        .sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }
}
