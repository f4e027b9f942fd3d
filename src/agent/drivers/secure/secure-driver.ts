/**
 * Secure containers (the Kata/RunD idea): an OCI container's rootfs and process,
 * run inside a microVM instead of a namespace on the host kernel. The driver
 * composes the VM driver: the rootfs the snapshotter prepared is mounted on the
 * host and shared into the guest over virtio-9p; the guest's nimbus-init
 * (secure-guest.ts) chroots into it and runs the same start script a warm
 * container runs (entrypoint, env, workdir honoured), output on the serial
 * console (the container's logs), exit status written back through the share.
 *
 *   <stateDir>/<id>/rootfs/      the container's rootfs, mounted from the snapshot
 *   <stateDir>/<id>/meta.json    the request's hostname and the VM's id
 *   <stateDir>/vms/<id>/         the microVM (the VM driver's own directory)
 *
 * What differs from a runc container: one log stream (stdout and stderr merged on
 * the console), the process runs as root in the guest (the VM is the boundary),
 * no exec yet (no guest agent), pause/unpause stop the vCPUs.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { AlreadyExists, Conflict, InvalidArgument, NotFound, Unavailable } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import { readUnderRoot, removeUnderRoot } from '../../../core/read-under-root.js';
import { mountAll, mountsUnder, unmountAll } from '../../snapshots/mount.js';
import type { ExecRequest, ExecSession, InstanceDriver, InstanceSpec, InstanceStats, LogRecord, RuntimeState } from '../instance-driver.js';
import { buildOciSpec, readHardLimits, readUserDb } from '../container/oci-spec.js';
import { stubUnsuitable, warmScript } from '../container/warm-start.js';
import type { Accelerator } from '../vm/qemu.js';
import { VmDriver } from '../vm/vm-driver.js';
import { ROOTFS_TAG, TEMPLATE_MARKER, buildSecureGuest, type SecureGuest } from './secure-guest.js';
import { secureGuestMemoryMiB } from './guest-memory.js';

const log = logger('agent.drivers.secure');
const MiB = 1024 * 1024;

export interface SecureDriverOptions {
  stateDir: string;
  accel: Accelerator;
  /** Where the guest image is built and cached. Default <stateDir>/guest. */
  guestCacheDir?: string;
  /** Guest memory when the container sets no limit. Default 256 MiB. */
  defaultMemoryMiB?: number;
  /**
   * Start microVMs by restoring a saved, booted guest instead of booting one (RunD's
   * templates; the default). false: boot every time.
   */
  templates?: boolean;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class SecureDriver implements InstanceDriver {
  readonly type = 'container' as const;
  private readonly vms: VmDriver;
  private readonly templates = new Map<string, Promise<string | undefined>>();
  /** The guest image, built (or found in the cache) once per driver rather than hashed again on every create. */
  private guestP: Promise<SecureGuest> | undefined;

  constructor(private readonly o: SecureDriverOptions) {
    this.vms = new VmDriver({ stateDir: path.join(o.stateDir, 'vms'), accel: o.accel, ...(o.defaultMemoryMiB ? { defaultMemoryMiB: o.defaultMemoryMiB } : {}) });
  }

  private dir(id: string): string {
    if (!ID_RE.test(id)) throw new InvalidArgument(`invalid container id ${JSON.stringify(id)}`);
    return path.join(this.o.stateDir, id);
  }
  private rootfs(id: string): string {
    return path.join(this.dir(id), 'rootfs');
  }
  /**
   * The microVM's id: 16 hex digits of the container id's hash, because QEMU's unix
   * sockets live under the VM's directory and a socket path must stay under 108 bytes.
   */
  private vm(id: string): string {
    return `s${createHash('sha256').update(id).digest('hex').slice(0, 15)}`;
  }
  /** The workload's exit status as nimbus-init wrote it: a regular file reached without a symlink, a few bytes. */
  private async readGuestExit(id: string): Promise<string | undefined> {
    return (await readUnderRoot(this.rootfs(id), '.nimbus/exit', 32))?.toString('utf8');
  }

  async create(spec: InstanceSpec): Promise<RuntimeState> {
    const id = spec.id;
    if (existsSync(this.dir(id))) throw new AlreadyExists(`secure container ${id} exists`, { id });
    if (spec.rootfs.length === 0) throw new InvalidArgument('rootfs must hold at least one mount', { id });
    const guest = await this.guest();
    const rootfs = this.rootfs(id);
    await mkdir(rootfs, { recursive: true });
    try {
      await mountAll(spec.rootfs, rootfs);
      // The same OCI process a runc container would get (env, cwd, user from the image), run by the start script.
      const { config } = buildOciSpec(spec, { hardLimits: await readHardLimits(), cgroupsPath: `/nimbus/${id}`, userDb: await readUserDb(rootfs) });
      const why = stubUnsuitable(config.process);
      if (why) throw new InvalidArgument(`cannot run this command in a microVM: ${why}`, { id });
      if (config.process.user.uid !== 0) throw new InvalidArgument('secure containers run their process as root inside the microVM for now; drop --user', { id });
      const nimbus = path.join(rootfs, '.nimbus');
      await rm(nimbus, { recursive: true, force: true }); // whatever the image had there is not ours
      await mkdir(path.join(nimbus, 'start'), { recursive: true, mode: 0o755 });
      await writeFile(path.join(nimbus, 'busybox'), ''); // the guest binds its own busybox here
      await writeFile(path.join(nimbus, 'start', 'entry'), warmScript(config.process));
      await writeFile(path.join(nimbus, 'start', 'hostname'), `${config.hostname}\n`);
      const memoryMiB = secureGuestMemoryMiB(spec.resources.memoryBytes, this.o.defaultMemoryMiB);
      const share = [{ tag: ROOTFS_TAG, path: rootfs }];
      const template = this.o.templates === false ? undefined : await this.template(guest, memoryMiB, spec.resources.cpus);
      if (template) {
        await this.vms.createFromTemplate(template, this.vm(id), spec.name, { shares: share });
        await writeFile(path.join(this.dir(id), 'template'), template);
      } else {
        await this.vms.create({
          ...spec,
          id: this.vm(id),
          rootfs: [],
          resources: { ...spec.resources, memoryBytes: memoryMiB * MiB },
          vm: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append, shares: share },
        });
      }
      return { status: 'created' };
    } catch (e) {
      await this.delete(id).catch(() => undefined);
      throw e;
    }
  }

  private guest(): Promise<SecureGuest> {
    this.guestP ??= buildSecureGuest(this.o.guestCacheDir ?? path.join(this.o.stateDir, 'guest'));
    this.guestP.catch(() => {
      this.guestP = undefined; // e.g. no kernel yet: try again next time
    });
    return this.guestP;
  }

  async start(id: string): Promise<RuntimeState> {
    // the last run's status (the name itself if the guest made it a symlink, never what it points to)
    await removeUnderRoot(this.rootfs(id), '.nimbus/exit');
    const template = await readFile(path.join(this.dir(id), 'template'), 'utf8').catch(() => undefined);
    if (!template) return this.vms.start(this.vm(id));
    // From the template: restore the booted guest (its rootfs share pointing here), then let it go on.
    const vmId = this.vm(id);
    if ((await this.vms.inspect(vmId)).lifecycle !== 'saved') {
      // started again after an exit: a fresh copy of the template
      await this.vms.delete(vmId);
      await this.vms.createFromTemplate(template, vmId, id, { shares: [{ tag: ROOTFS_TAG, path: this.rootfs(id) }] });
    }
    await this.vms.restoreState(vmId);
    const console = await this.vms.openConsole(vmId);
    await new Promise<void>((resolve) => console.end('go\n', resolve));
    return this.vms.state(vmId);
  }

  /**
   * The saved template for this guest, memory and CPU count: booted once to the point
   * where nimbus-init waits for "go" (before it mounts the share), then saved. Undefined
   * (boot instead) when it cannot be made.
   */
  private template(guest: SecureGuest, memoryMiB: number, cpus: number | undefined): Promise<string | undefined> {
    const vcpus = Math.max(1, Math.ceil(cpus ?? 1));
    const id = `tmpl-${createHash('sha256').update(JSON.stringify([guest, memoryMiB, vcpus, this.o.accel])).digest('hex').slice(0, 10)}`;
    let p = this.templates.get(id);
    if (!p) {
      p = this.makeTemplate(id, guest, memoryMiB, vcpus).catch((e: unknown) => {
        log.warn('cannot make a microVM template; booting instead', { error: e instanceof Error ? e.message : String(e) });
        this.templates.delete(id);
        return undefined;
      });
      this.templates.set(id, p);
    }
    return p;
  }

  private async makeTemplate(id: string, guest: SecureGuest, memoryMiB: number, cpus: number): Promise<string> {
    const existing = await this.vms.inspect(id).catch(() => undefined);
    if (existing?.lifecycle === 'saved') return id;
    if (existing) await this.vms.delete(id);
    const empty = path.join(this.o.stateDir, 'vms', `${id}.share`);
    await mkdir(empty, { recursive: true });
    await this.vms.create({
      id, name: id, rootfs: [], process: { args: [], env: [], cwd: '/', user: '0' },
      resources: { memoryBytes: memoryMiB * MiB, cpus },
      vm: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} nimbus.template`, shares: [{ tag: ROOTFS_TAG, path: empty }] },
    });
    try {
      await this.vms.start(id);
      const deadline = Date.now() + 120_000;
      for (;;) {
        let seen = false;
        for await (const r of this.vms.logs(id, {})) if (r.line.includes(TEMPLATE_MARKER)) seen = true;
        if (seen) break;
        if (Date.now() > deadline) throw new Unavailable(`the microVM template did not reach ${TEMPLATE_MARKER} within 120 s`);
        await new Promise((r) => setTimeout(r, 20));
      }
      await this.vms.saveState(id);
      log.info('microVM template saved', { id, memoryMiB, cpus });
      return id;
    } catch (e) {
      await this.vms.delete(id).catch(() => undefined);
      throw e;
    }
  }

  async state(id: string): Promise<RuntimeState> {
    if (!existsSync(this.dir(id))) throw new NotFound(`secure container ${id} not found`, { id });
    const s = await this.vms.state(this.vm(id));
    if (s.status !== 'stopped') return s;
    // made from a template and not started yet: a saved VM, a created container
    if (existsSync(path.join(this.dir(id), 'template')) && (await this.vms.inspect(this.vm(id))).lifecycle === 'saved') return { status: 'created' };
    // the workload's status came back through the share; without it the VM died under it
    const text = await this.readGuestExit(id);
    const code = text === undefined ? NaN : Number(text.trim());
    return { ...s, exitCode: Number.isInteger(code) ? code : s.exitCode ? s.exitCode : 255 };
  }

  async stop(id: string, timeoutSec: number, _signal?: string): Promise<RuntimeState> {
    // ACPI power button: nimbus-init sends TERM to the workload, then the VM powers off
    await this.vms.stop(this.vm(id), timeoutSec);
    return this.state(id);
  }

  kill(id: string, signal: string): Promise<void> {
    return this.vms.kill(this.vm(id), signal);
  }
  pause(id: string): Promise<void> {
    return this.vms.pause(this.vm(id));
  }
  unpause(id: string): Promise<void> {
    return this.vms.unpause(this.vm(id));
  }
  exec(id: string, _req: ExecRequest): Promise<ExecSession> {
    throw new Conflict(`exec is not available in secure container ${id} yet (no guest agent)`, { id });
  }
  async *logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    const vmId = this.vm(id);
    // A container made from a template is a saved VM until its first start: following its
    // logs (as `run` does before start) waits for that start instead of ending at once.
    while (opts.follow && !opts.signal?.aborted && existsSync(path.join(this.dir(id), 'template')) && (await this.vms.inspect(vmId)).lifecycle === 'saved') {
      await new Promise((r) => setTimeout(r, 20));
    }
    yield* this.vms.logs(vmId, opts);
  }
  stats(id: string): Promise<InstanceStats> {
    return this.vms.stats(this.vm(id));
  }

  async delete(id: string): Promise<void> {
    await this.vms.delete(this.vm(id)).catch((e: unknown) => {
      if (!(e instanceof NotFound)) throw e;
    });
    const dir = this.dir(id);
    if (!existsSync(dir)) return;
    await rm(path.join(this.rootfs(id), '.nimbus'), { recursive: true, force: true }).catch(() => undefined);
    await unmountAll(this.rootfs(id));
    const left = await mountsUnder(dir);
    if (left.length) throw new Conflict(`refusing to remove container ${id}: still mounted (${left.length} mount${left.length === 1 ? '' : 's'} in its directory)`, { id }, { adminMessage: `refusing to remove ${dir}: still mounted: ${left.join(', ')}` });
    await rm(dir, { recursive: true, force: true });
  }

  async list(): Promise<string[]> {
    try {
      return (await readdir(this.o.stateDir, { withFileTypes: true })).filter((d) => d.isDirectory() && ID_RE.test(d.name) && d.name !== 'vms' && d.name !== 'guest').map((d) => d.name);
    } catch {
      return [];
    }
  }

  onExit(listener: (id: string) => void): void {
    this.vms.onExit((vmId) => {
      void this.list().then((ids) => {
        const id = ids.find((c) => this.vm(c) === vmId);
        if (id) listener(id);
      });
    });
  }
}
