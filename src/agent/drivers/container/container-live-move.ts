/**
 * The container driver's side of a live move (checkpoint.ts has CRIU's command lines and
 * failures): the checkpoint of a running container at the source, and the container made
 * again from its images at the destination (or in place, when the move is rolled back).
 */
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AlreadyExists, Conflict, Internal } from '../../../core/errors.js';
import { run } from '../../../core/exec.js';
import type { InstanceSpec, RuntimeState } from '../instance-driver.js';
import {
  CRIU_CONFIG_ANNOTATION,
  checkpointArgs,
  checkpointFailure,
  criuConfig,
  criuLogErrors,
  externalNetnsLine,
  readRestoreHints,
  treeBytes,
  writeRestoreHints,
} from './checkpoint.js';
import type { CreateOptions } from './container-create.js';
import { exists, type ContainerStore } from './container-store.js';
import type { LogRotation } from './log-rotation.js';
import type { OciMount } from './oci-spec.js';
import { runtimeMessage } from './oci-runtime.js';
import { findStaticBusybox } from './static-busybox.js';
import type { WarmContainers } from './warm-containers.js';
import { WARM_SCRIPT_DIR, warmMounts } from './warm-start.js';

export interface ContainerLiveMoveDeps {
  store: Pick<ContainerStore, 'dir' | 'checkpointImages' | 'warmDir' | 'readConfig' | 'meta' | 'saveMeta' | 'runtime'>;
  warm: Pick<WarmContainers, 'primed'>;
  rotation: Pick<LogRotation, 'stop'>;
  /** The container's state now (only a running one is checkpointed). */
  state(id: string): Promise<RuntimeState>;
  /** The driver's create (container-create.ts). */
  create(spec: InstanceSpec, opts: CreateOptions): Promise<RuntimeState>;
  delete(id: string, opts: { keepCheckpoint?: boolean }): Promise<void>;
}

export class ContainerLiveMove {
  constructor(private readonly d: ContainerLiveMoveDeps) {}

  /**
   * A live move's checkpoint: runc (with this CRIU) dumps the container's processes into
   * checkpointImages(id) and kills them; its rootfs stays mounted (its layer is exported next)
   * and its network namespace (netnsPath, named by the host) is left out of the images. On a
   * failure CRIU leaves the processes running and nothing is recorded. Conflict for what this
   * driver cannot checkpoint (crun: Debian builds it without CRIU; a terminal; a paused container).
   */
  async checkpoint(id: string, opts: { criu: string; netnsPath?: string }): Promise<{ bytes: number; ms: number }> {
    const { store } = this.d;
    const meta = await store.meta(id);
    const short = id.slice(0, 12);
    if (meta.runtime !== 'runc') throw new Conflict(`container ${short} runs on ${meta.runtime}, which cannot checkpoint here (Debian builds crun without CRIU): only runc containers (--runtime runc) move live`, { id, runtime: meta.runtime });
    if (meta.terminal || meta.stdin) throw new Conflict(`container ${short} has a terminal or an open stdin: a checkpoint cannot carry its conmon's end of them; move it cold`, { id });
    if (meta.warm || this.d.warm.primed(id)) throw new Conflict(`container ${short} is a warm container not started yet: move it cold`, { id });
    if (meta.checkpointed) throw new Conflict(`container ${short} is checkpointed already`, { id });
    const st = await this.d.state(id);
    if (st.status !== 'running') throw new Conflict(`container ${short} is ${st.status}: only a running container is checkpointed (a paused one: unpause it first)`, { id, status: st.status });
    const config = await store.readConfig(id);
    // made before live moves: runc would not hand CRIU our configuration, and CRIU would try to dump the veth
    if (!config.annotations?.[CRIU_CONFIG_ANNOTATION]) throw new Conflict(`container ${short} was created by an agent before live moves (its runtime config names no CRIU configuration): move it cold`, { id });
    const netns = config.linux?.namespaces?.find((n) => n.type === 'network');
    // a namespace runc made (no path in config.json) is declared external through the CRIU config file
    await writeFile(path.join(store.dir(id), 'criu.conf'), criuConfig(netns && !netns.path && opts.netnsPath ? await externalNetnsLine(opts.netnsPath) : ''));
    const images = store.checkpointImages(id);
    const work = path.join(path.dirname(images), 'work');
    await rm(path.dirname(images), { recursive: true, force: true });
    await mkdir(images, { recursive: true, mode: 0o700 });
    await mkdir(work, { recursive: true, mode: 0o700 });
    const rt = store.runtime(meta);
    // marked first: the exit conmon records once the dump kills the process is not the container's
    await store.saveMeta({ ...meta, checkpointed: true });
    const t0 = performance.now();
    const r = await run(meta.runtimePath, [...rt.globalArgs(), '--criu', opts.criu, ...checkpointArgs(id, images, work)], { timeoutMs: 120_000 });
    if (r.code !== 0) {
      const errors = await criuLogErrors(path.join(work, 'dump.log'));
      // kept beside the container for whoever looks into it (the images go)
      await copyFile(path.join(work, 'dump.log'), path.join(store.dir(id), 'checkpoint-failed.log')).catch(() => undefined);
      // CRIU resumes what it froze on a failed dump: the container runs on as before
      await store.saveMeta(meta);
      await rm(path.dirname(images), { recursive: true, force: true });
      throw checkpointFailure(id, runtimeMessage(r.stderr || r.stdout), errors);
    }
    const ms = Math.round(performance.now() - t0);
    await writeRestoreHints(images, { warmMounts: config.mounts.some((m) => m.destination === WARM_SCRIPT_DIR) });
    this.d.rotation.stop(id);
    return { bytes: await treeBytes(images), ms };
  }

  /**
   * A container made from a checkpoint (a live move): as create, but conmon runs the runtime's
   * restore from the images (checkpointImages(id)) with this CRIU, and it is running at once.
   * Where a checkpointed copy of it is still here (a move rolled back), that copy's runtime
   * state goes first.
   */
  async restore(spec: InstanceSpec, opts: { mounts?: OciMount[]; criu: string }): Promise<RuntimeState> {
    const { store } = this.d;
    if (await exists(store.dir(spec.id))) {
      const meta = await store.meta(spec.id);
      if (!meta.checkpointed) throw new AlreadyExists(`container ${spec.id} already exists`, { id: spec.id });
      await this.d.delete(spec.id, { keepCheckpoint: true });
    }
    // made from the warm pool: the stub's mounts are in its mount table, so the restore needs them too
    const warm = (await readRestoreHints(store.checkpointImages(spec.id))).warmMounts === true;
    let mounts = opts.mounts ?? [];
    if (warm) {
      const busybox = await findStaticBusybox();
      if (!busybox) throw new Internal('this container came from a warm pool: its restore needs a static busybox on the host (Debian busybox-static)');
      mounts = [...warmMounts(busybox, store.warmDir(spec.id)), ...mounts];
    }
    return this.d.create(spec, { ...(mounts.length ? { mounts } : {}), restore: { criu: opts.criu, warm } });
  }
}
