import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { processAlive } from '../../../core/proc.js';
import { VmRecordStore, type VmRecord } from './vm-record.js';

const record = (id: string, qemuPid: number, supervisorPid: number): VmRecord => ({
  id, name: id, createdAt: new Date().toISOString(), lifecycle: 'running', qemuPid, supervisorPid,
  config: { cpus: 1, memoryMiB: 64 } as VmRecord['config'],
});

describe('VM record: QEMU seen gone', () => {
  it('a QEMU that answers a second look (no exit status written) stays running, not recorded stopped', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-vm-record-'));
    const children: ChildProcess[] = [];
    try {
      const store = new VmRecordStore(dir);
      const id = 'vm1';
      const p = store.paths(id);
      await mkdir(path.dirname(p.record), { recursive: true });
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
    const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-vm-record-'));
    try {
      const store = new VmRecordStore(dir);
      const p = store.paths('vm2');
      await mkdir(path.dirname(p.record), { recursive: true });
      const gone = spawn('true', { stdio: 'ignore' });
      await new Promise((r) => gone.once('exit', r));
      await writeFile(p.record, JSON.stringify(record('vm2', gone.pid!, gone.pid!)));
      const seen = await store.load('vm2');
      assert.equal(seen.lifecycle, 'stopped');
      assert.equal(seen.exitCode, 255);
      assert.equal(seen.qemuPid, undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
