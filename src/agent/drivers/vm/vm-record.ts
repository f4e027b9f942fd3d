/**
 * A VM's record (vm.json in its directory under stateDir) and its lifecycle state machine.
 * The record is the VM's whole truth between operations: the store loads it, folds in what
 * happened outside the driver (QEMU exited), saves it atomically, and serialises the
 * operations on one VM (locked).
 */
import { ContextSlot } from '../../../core/async-context.js';
import { existsSync } from 'node:fs';
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Conflict, InvalidArgument, NotFound } from '../../../core/errors.js';
import { KeyedLock } from '../../../core/keyed-lock.js';
import { logger } from '../../../core/log.js';
import { processAlive, procStat } from '../../../core/proc.js';
import type { RuntimeState } from '../instance-driver.js';
import { decodeExitStatus, shutdownCauseIn, type QemuConfig } from './qemu.js';
import { instancePaths, readExitStatus, removeRunFiles, sleep, type InstancePaths } from './qemu-process.js';
import type { VcpuPinning } from './vcpu-pinning.js';

// the driver's name: its log lines read as they did before the record had a file of its own
const log = logger('vm-driver');

/** The VM lifecycle. `running`/`paused` become `stopped` when QEMU exits, whoever caused it. */
export type VmLifecycle = 'created' | 'running' | 'paused' | 'stopped' | 'saved';

const TRANSITIONS: Record<VmLifecycle, readonly VmLifecycle[]> = {
  created: ['running'],
  running: ['paused', 'stopped', 'saved'],
  paused: ['running', 'stopped', 'saved'],
  stopped: ['running'],
  saved: ['running'],
};

export function assertTransition(id: string, from: VmLifecycle, to: VmLifecycle): void {
  if (!TRANSITIONS[from].includes(to)) throw new Conflict(`VM ${id} is ${from}; cannot go to ${to}`, { id, from, to });
}

export interface VmRecord {
  id: string;
  name: string;
  createdAt: string;
  lifecycle: VmLifecycle;
  config: Omit<QemuConfig, 'startPaused' | 'incoming'>;
  pin?: number[];
  qemuPid?: number;
  supervisorPid?: number;
  startedAt?: string;
  finishedAt?: string;
  exitCode?: number;
  /** Set when the driver itself sent a signal, so the exit code says so. */
  killedBy?: string;
  /**
   * QEMU's own word on why its last run ended (qemu.ts, shutdownCauseIn): guest-shutdown,
   * guest-reset (a reboot, a triple fault, a panic), host-qmp-quit, host-signal, ...; absent
   * when it made no shutdown request (it crashed or was killed: the exit code says how).
   */
  endCause?: string;
  pinning?: VcpuPinning[];
  savedAt?: string;
  /** A VM made from a saved template: its state comes from the template's file, its disk is backed by the template's. */
  template?: string;
  /** The balloon target set by resize while it runs (the guest holds memoryMiB − balloonMiB less). */
  balloonMiB?: number;
}

/** What the driver's parts need of the records (each takes only the methods it uses). */
export interface VmRecords {
  /** The VM's files; InvalidArgument for an id that cannot name a directory. */
  paths(id: string): InstancePaths;
  /** Serialise operations on one instance. */
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  /**
   * fn outside any operation's context: what it starts later (a timer's callbacks) is an
   * observer that takes the VM's lock to write, whichever operation made it.
   */
  outsideOperations<T>(fn: () => T): T;
  /** The record with QEMU's exit folded in; NotFound without one. */
  load(id: string): Promise<VmRecord>;
  save(r: VmRecord): Promise<void>;
}

let recordWrites = 0;

export class VmRecordStore implements VmRecords {
  private readonly locks = new KeyedLock();
  /**
   * Per VM, the token of the operation holding its lock now; and per async context, the tokens
   * of the operations it runs in. An observer inside an operation writes at once; a continuation
   * that outlives its operation (a timer it set, a promise it did not await) carries the old
   * token, which no longer holds the lock, so it waits for it. (CI saw the exit watcher, whose
   * timer is set inside the start's lock, write the end without the lock over a later detach:
   * the volume came back at the next start.)
   */
  private readonly holders = new Map<string, symbol>();
  private readonly held = new ContextSlot<ReadonlyMap<string, symbol>>('VM operations held');

  constructor(private readonly stateDir: string) {}

  paths(id: string): InstancePaths {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id)) throw new InvalidArgument(`bad instance id "${id}"`);
    return instancePaths(path.join(this.stateDir, id));
  }

  locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, async () => {
      const token = Symbol(id);
      this.holders.set(id, token);
      try {
        return await this.held.run(new Map([...(this.held.get() ?? []), [id, token]]), fn);
      } finally {
        if (this.holders.get(id) === token) this.holders.delete(id);
      }
    });
  }

  outsideOperations<T>(fn: () => T): T {
    return this.held.exit(fn);
  }

  /** fn under the VM's lock, taken unless this context's operation holds it now (it is not reentrant). */
  private underLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const mine = this.held.get()?.get(id);
    return mine !== undefined && this.holders.get(id) === mine ? fn() : this.locked(id, fn);
  }

  async load(id: string): Promise<VmRecord> {
    const p = this.paths(id);
    let r: VmRecord;
    try {
      r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
    } catch {
      throw new NotFound(`no VM ${id}`, { id });
    }
    return this.observe(r, p);
  }

  async save(r: VmRecord): Promise<void> {
    const p = this.paths(r.id);
    // unique name: an exit watcher and an operation (or two driver instances) may write at once
    const tmp = `${p.record}.${process.pid}.${++recordWrites}.tmp`;
    await writeFile(tmp, JSON.stringify(r, null, 1));
    await rename(tmp, p.record);
  }

  /** Ids of the VMs that have a record. */
  async list(): Promise<string[]> {
    try {
      const out: string[] = [];
      for (const d of await readdir(this.stateDir)) if (existsSync(path.join(this.stateDir, d, 'vm.json'))) out.push(d);
      return out;
    } catch {
      return [];
    }
  }

  /** Fold what happened outside the driver (QEMU exited) into the record. */
  private async observe(r: VmRecord, p: InstancePaths): Promise<VmRecord> {
    if ((r.lifecycle === 'running' || r.lifecycle === 'paused') && !processAlive(r.qemuPid, p.qmpSocket)) {
      // the supervisor writes the status right after QEMU exits; give it a moment
      let status = await readExitStatus(p);
      // (up to 5 s: on a loaded host the supervisor shell can take a while to be scheduled)
      for (let i = 0; status === undefined && i < 500 && processAlive(r.supervisorPid); i++) {
        await sleep(10);
        status = await readExitStatus(p);
      }
      status ??= await readExitStatus(p); // the supervisor may have written it just before exiting
      if (status === undefined && processAlive(r.qemuPid, p.qmpSocket)) {
        // no exit status, and QEMU answers a second look: the first was wrong (a read of its
        // cmdline that failed). A running VM recorded stopped would be rebuilt elsewhere: a second copy.
        log.warn('QEMU seen gone once but alive on a second look: left running', { id: r.id, pid: r.qemuPid });
        return r;
      }
      // The end is written under the VM's lock: an observer outside any operation (the exit
      // watcher) that wrote its copy of the record after an operation's save (a detach, a start)
      // undid that operation's change: CI saw a volume detached while stopped come back at the start.
      return this.underLock(r.id, () => this.recordEnd(r, p, status));
    }
    return r;
  }

  /** QEMU's end folded into the record as it is now (under the lock: an operation's changes stay). */
  private async recordEnd(seen: VmRecord, p: InstancePaths, status: number | undefined): Promise<VmRecord> {
    // someone else (saveState, another watcher) may have recorded the end already: theirs stands
    const r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
    if (r.lifecycle !== seen.lifecycle || r.qemuPid !== seen.qemuPid) return r;
    r.lifecycle = 'stopped';
    r.finishedAt = new Date().toISOString();
    if (r.killedBy === 'SIGKILL') r.exitCode = 137;
    else if (status !== undefined) r.exitCode = decodeExitStatus(status, r.config.debugExit);
    else {
      r.exitCode = 255; // supervisor gone too: status unknown
      // what /proc says of the QEMU now: a CI run under load saw migrated VMs recorded stopped at
      // their destination (not reproduced), and this is the path that records an end unseen
      const st = r.qemuPid ? procStat(r.qemuPid) : undefined;
      log.warn('QEMU seen gone without an exit status: recorded stopped (255)', {
        id: r.id, pid: r.qemuPid, procState: st?.state ?? 'gone', aliveNow: processAlive(r.qemuPid, p.qmpSocket), supervisorAlive: processAlive(r.supervisorPid),
      });
    }
    const cause = shutdownCauseIn(await readFile(p.qemuLog, 'utf8').catch(() => ''));
    if (cause) r.endCause = cause;
    else delete r.endCause;
    log.info('vm ended', { id: r.id, exitCode: r.exitCode, cause: cause ?? 'none requested' });
    delete r.qemuPid;
    delete r.supervisorPid;
    // the exit status stays until the next launch: a second observer racing this one (an exit
    // watcher and a stop) must read the same status, not record 255 for a file removed under it
    await removeRunFiles(p, { keepExitStatus: true });
    await this.save(r);
    return r;
  }
}

export function toState(r: VmRecord): RuntimeState {
  const status = r.lifecycle === 'saved' ? 'stopped' : r.lifecycle;
  const s: RuntimeState = { status };
  if (r.qemuPid && (r.lifecycle === 'running' || r.lifecycle === 'paused')) s.pid = r.qemuPid;
  if (r.startedAt) s.startedAt = r.startedAt;
  if (r.lifecycle === 'stopped') {
    s.exitCode = r.exitCode ?? 0;
    s.oomKilled = false;
    if (r.finishedAt) s.finishedAt = r.finishedAt;
  }
  return s;
}

/** vCPUs a VM has: the ones it booted with and the ones plugged since. */
export const vcpuCount = (r: VmRecord): number => r.config.cpus + (r.config.hotplugCpus?.length ?? 0);

/** A cold boot starts with every vCPU the VM had: the plugged ones become boot ones. */
export function foldHotplug(r: VmRecord): void {
  if (!r.config.hotplugCpus?.length) return;
  r.config.cpus += r.config.hotplugCpus.length;
  delete r.config.hotplugCpus;
}
