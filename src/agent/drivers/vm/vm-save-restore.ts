/**
 * A VM's whole state (devices, RAM, vCPUs) to a file and back (saveState, restoreState), and
 * new VMs made from a saved one used as a template (createFromTemplate).
 */
import { existsSync } from 'node:fs';
import { mkdir, open, rm, stat, writeFile } from 'node:fs/promises';
import { AlreadyExists, Conflict, NimbusError } from '../../../core/errors.js';
import { runOk } from '../../../core/exec.js';
import { processAlive } from '../../../core/proc.js';
import type { RuntimeState } from '../instance-driver.js';
import type { QemuConfig } from './qemu.js';
import { removeRunFiles, sleep, withQmp } from './qemu-process.js';
import { handFdsToQemu } from './qmp-fds.js';
import { assertTransition, toState, type VmRecord, type VmRecords } from './vm-record.js';
import type { VmRunner } from './vm-runner.js';
import type { QemuUsers } from './qemu-user.js';

/** The name QEMU holds a save's file descriptor under, until its `migrate fd:` takes it. */
const SAVE_FD = 'nimbus-save';

export class VmSaveRestore {
  constructor(
    private readonly records: VmRecords,
    /** Restore launches QEMU; a save stops watching for an exit that is not a stop. */
    private readonly runner: Pick<VmRunner, 'launch' | 'unwatch'>,
    /** A saved VM runs no QEMU: its user goes back (a restore claims one again, the same while it is free). */
    private readonly users: Pick<QemuUsers, 'release'>,
  ) {}

  /**
   * Save the whole VM (devices, RAM, vCPUs) to a file and end QEMU: the guest
   * is paused, its state streamed out by QMP migrate, then QEMU quits.
   */
  saveState(id: string): Promise<{ file: string; bytes: number; ms: number }> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      assertTransition(id, r.lifecycle, 'saved');
      const p = this.records.paths(id);
      const t0 = Date.now();
      await rm(p.savedState, { force: true });
      // QEMU may not open the file itself (it may run as a user of its own): it gets a descriptor
      const out = await open(p.savedState, 'w', 0o600);
      try {
        await handFdsToQemu(p.qmpSocket, { op: 'getfd', name: SAVE_FD }, [out.fd]);
      } catch (e) {
        await rm(p.savedState, { force: true });
        throw e;
      } finally {
        await out.close();
      }
      await withQmp(p, async (c) => {
        await c.execute('stop');
        try {
          await c.execute('migrate', { uri: `fd:${SAVE_FD}` });
          for (;;) {
            const m = await c.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
            if (m.status === 'completed') break;
            if (m.status === 'failed' || m.status === 'cancelled') throw new NimbusError('Internal', `save of ${id} failed: ${m['error-desc'] ?? m.status}`);
            await sleep(10);
          }
        } catch (e) {
          // the guest goes on as it was; no half-written state file stays, nor QEMU's descriptor of it
          if (r.lifecycle === 'running') await c.execute('cont').catch(() => undefined);
          await c.execute('closefd', { fdname: SAVE_FD }).catch(() => undefined);
          await rm(p.savedState, { force: true });
          throw e;
        }
        // record the save before QEMU goes, so an exit watcher does not call it a stop
        this.runner.unwatch(id);
        r.lifecycle = 'saved';
        r.savedAt = new Date().toISOString();
        await this.records.save(r);
        await c.execute('quit').catch(() => undefined); // the socket may close before the reply
      }, 60_000);
      // QEMU exits; fold it in without calling it a stop
      for (let i = 0; i < 500 && processAlive(r.qemuPid, p.qmpSocket); i++) await sleep(10);
      for (let i = 0; i < 100 && processAlive(r.supervisorPid); i++) await sleep(10);
      await removeRunFiles(p);
      delete r.qemuPid;
      delete r.supervisorPid;
      delete r.pinning;
      await this.records.save(r);
      this.users.release(id);
      return { file: p.savedState, bytes: (await stat(p.savedState)).size, ms: Date.now() - t0 };
    });
  }

  /** Bring a saved VM back: QEMU loads the saved state and the guest continues where it was. */
  restoreState(id: string): Promise<{ ms: number }> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      if (r.lifecycle !== 'saved') throw new Conflict(`VM ${id} is ${r.lifecycle}, not saved`, { id });
      const p = this.records.paths(id);
      const t0 = Date.now();
      if (r.template && !existsSync(p.savedState)) {
        // first start of a VM made from a template: the template's state, the template stays saved
        // (once it has been saved on its own, its own state is the one to restore)
        await this.runner.launch(r, this.records.paths(r.template).savedState);
      } else {
        await this.runner.launch(r, p.savedState);
        await rm(p.savedState, { force: true }); // the disk overlay has moved on; the image is stale now
      }
      return { ms: Date.now() - t0 };
    });
  }

  /**
   * A new VM from a saved one used as a template (RunD's microVM templates):
   * same devices and memory, its own sockets and console, a disk overlay backed
   * by the template's frozen overlay. It is left saved; restoreState() starts it.
   */
  /** Under the new VM's lock, as create is. */
  createFromTemplate(templateId: string, id: string, name = id, over: { shares?: QemuConfig['shares'] } = {}): Promise<RuntimeState> {
    return this.records.locked(id, () => this.cloneNow(templateId, id, name, over));
  }

  private async cloneNow(templateId: string, id: string, name: string, over: { shares?: QemuConfig['shares'] }): Promise<RuntimeState> {
    const t = await this.records.load(templateId);
    if (t.lifecycle !== 'saved' || t.template) throw new Conflict(`VM ${templateId} is not a saved VM that can serve as a template`, { id: templateId });
    if (t.config.blockVolumes?.length) throw new Conflict(`VM ${templateId} has block volumes attached: a clone would share its disks`, { id: templateId });
    const p = this.records.paths(id);
    if (existsSync(p.record)) throw new AlreadyExists(`VM ${id} exists`, { id });
    await mkdir(p.dir, { recursive: true, mode: 0o700 });
    try {
      const config: VmRecord['config'] = {
        ...t.config,
        // host-side paths of shared directories are not part of the saved state: each VM brings its own
        ...(over.shares ? { shares: over.shares } : {}),
        name,
        paths: { qmpSocket: p.qmpSocket, consoleSocket: p.consoleSocket, consoleLog: p.consoleLog, pidFile: p.pidFile },
      };
      if (t.config.rootDisk) {
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', this.records.paths(templateId).overlay, p.overlay]);
        config.rootDisk = { path: p.overlay, format: 'qcow2' };
      }
      await writeFile(p.consoleLog, '');
      const r: VmRecord = { id, name, createdAt: new Date().toISOString(), lifecycle: 'saved', config, template: templateId };
      if (t.pin) r.pin = t.pin;
      await this.records.save(r);
      return toState(r);
    } catch (e) {
      await rm(p.dir, { recursive: true, force: true });
      throw e;
    }
  }
}
