import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { processAlive } from '../../../core/proc.js';
import { VmRecordStore, type VmRecord } from './vm-record.js';

const record = (id: string, qemuPid: number, supervisorPid: number): VmRecord => ({
  id, name: id, createdAt: new Date().toISOString(), lifecycle: 'running', qemuPid, supervisorPid,
  config: { cpus: 1, memoryMiB: 64 } as VmRecord['config'],
});

/** A record store in a temporary directory, with the directory of VM `id` made. */
async function storeWith(id: string): Promise<{ dir: string; store: VmRecordStore; p: ReturnType<VmRecordStore['paths']> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-vm-record-'));
  const store = new VmRecordStore(dir);
  const p = store.paths(id);
  await mkdir(path.dirname(p.record), { recursive: true });
  return { dir, store, p };
}

/** The pid of a process that has exited (and been reaped). */
async function deadPid(): Promise<number> {
  const gone = spawn('true', { stdio: 'ignore' });
  await new Promise((r) => gone.once('exit', r));
  return gone.pid!;
}

/**
 * VM `id` recorded running, its QEMU gone (a dead pid), its supervisor alive `seconds` more and
 * writing no status: an observer that sees the end waits for the supervisor meanwhile.
 */
async function endingVm(id: string, seconds: number) {
  const { dir, store, p } = await storeWith(id);
  const gone = await deadPid();
  const supervisor = spawn('sleep', [String(seconds)], { stdio: 'ignore' });
  await writeFile(p.record, JSON.stringify(record(id, gone, supervisor.pid!)));
  const cleanup = async () => {
    supervisor.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  };
  return { store, p, gone, cleanup };
}

describe('VM record: QEMU seen gone', () => {
  it('a QEMU that answers a second look (no exit status written) stays running, not recorded stopped', async () => {
    const id = 'vm1';
    const { dir, store, p } = await storeWith(id);
    const children: ChildProcess[] = [];
    try {
      // "QEMU": its command line holds the QMP socket's path (the liveness marker) only after
      // 0.2 s, so the first look finds it gone and the second, after the supervisor's wait, alive
      const [head, tail] = [p.qmpSocket.slice(0, -3), p.qmpSocket.slice(-3)];
      const qemu = spawn('sh', ['-c', 'sleep 0.2; exec sh -c "sleep 30" "$0$1"', head, tail], { stdio: 'ignore' });
      const supervisor = spawn('sleep', ['0.6'], { stdio: 'ignore' });
      children.push(qemu, supervisor);
      assert.equal(processAlive(qemu.pid, p.qmpSocket), false, 'the marker is not there yet');
      await writeFile(p.record, JSON.stringify(record(id, qemu.pid!, supervisor.pid!)));
      const seen = await store.load(id);
      assert.equal(seen.lifecycle, 'running');
      assert.equal(seen.qemuPid, qemu.pid);
      assert.equal(processAlive(qemu.pid, p.qmpSocket), true);
    } finally {
      for (const c of children) c.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a QEMU really gone without an exit status is recorded stopped with 255', async () => {
    const { dir, store, p } = await storeWith('vm2');
    try {
      const gone = await deadPid();
      await writeFile(p.record, JSON.stringify(record('vm2', gone, gone)));
      const seen = await store.load('vm2');
      assert.equal(seen.lifecycle, 'stopped');
      assert.equal(seen.exitCode, 255);
      assert.equal(seen.qemuPid, undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an end seen outside any operation is written under the VM\'s lock, onto the record as the operation left it', async () => {
    // a supervisor that lives 0.4 s and writes no status: the observer waits for it meanwhile
    const { store, p, gone, cleanup } = await endingVm('vm3', 0.4);
    try {
      const watcher = store.load('vm3'); // as the exit watcher does: no lock held
      await new Promise((r) => setTimeout(r, 100));
      // an operation changes the record meanwhile (a detach while the VM is being seen ending)
      await store.locked('vm3', async () => {
        const r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
        r.config.memoryMiB = 128;
        await store.save(r);
      });
      const seen = await watcher;
      assert.equal(seen.lifecycle, 'stopped');
      const onDisk = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
      assert.equal(onDisk.lifecycle, 'stopped');
      assert.equal(onDisk.config.memoryMiB, 128, 'the operation\'s change stays');
      // and an observer inside the operation does not wait for the lock it holds
      await writeFile(p.record, JSON.stringify(record('vm3', gone, gone)));
      const inside = await store.locked('vm3', () => store.load('vm3'));
      assert.equal(inside.lifecycle, 'stopped');
    } finally {
      await cleanup();
    }
  });

  it('a timer set inside an operation (the exit watcher, set by the start) takes the lock once that operation is over', async () => {
    const { store, p, cleanup } = await endingVm('vm4', 0.3);
    try {
      // the start: sets its watcher's timer and returns
      let watcher: Promise<VmRecord> | undefined;
      await store.locked('vm4', async () => {
        setTimeout(() => { watcher = store.load('vm4'); }, 20);
      });
      // the next operation (a detach) reads the record before the watcher sees the end and saves
      // after it would have written it: the end must come after the change, not under it
      await store.locked('vm4', async () => {
        const r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
        await new Promise((res) => setTimeout(res, 700));
        assert.ok(watcher, 'the watcher looked meanwhile');
        r.config.memoryMiB = 128;
        await store.save(r);
      });
      assert.equal((await watcher!).lifecycle, 'stopped');
      const onDisk = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
      assert.equal(onDisk.lifecycle, 'stopped', 'the end is recorded');
      assert.equal(onDisk.config.memoryMiB, 128, 'the operation\'s change stays');
    } finally {
      await cleanup();
    }
  });
});
