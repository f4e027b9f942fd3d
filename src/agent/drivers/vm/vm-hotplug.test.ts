// The hot-plug's bookkeeping without a QEMU: records in memory, a QMP socket that is not there.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { instancePaths } from './qemu-process.js';
import { VmHotplug } from './vm-hotplug.js';
import type { VmRecord, VmRecords } from './vm-record.js';

test('a vCPU hot-plug that fails reports its own reason, even when recording it fails too', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-hotplug-'));
  try {
    const p = instancePaths(dir); // no QEMU: its QMP socket is not there
    const record: VmRecord = {
      id: 'vm1', name: 'vm1', createdAt: new Date().toISOString(), lifecycle: 'running',
      config: { name: 'vm1', accel: 'tcg', cpus: 1, maxCpus: 4, memoryMiB: 128, nics: [], debugExit: false, paths: { qmpSocket: p.qmpSocket, consoleSocket: p.consoleSocket, consoleLog: p.consoleLog, pidFile: p.pidFile } },
    };
    let saves = 0;
    const records: VmRecords = {
      paths: () => p,
      locked: (_id, fn) => fn(),
      outsideOperations: (fn) => fn(),
      load: async () => structuredClone(record),
      save: async () => {
        saves++;
        throw new Error('disk full');
      },
    };
    await assert.rejects(new VmHotplug(records).resize('vm1', { cpus: 2 }), (e: unknown) => {
      assert.doesNotMatch(String(e), /disk full/, 'not the save\'s failure');
      assert.match(String(e), /qmp\.sock|ENOENT|connect/i, `the QMP connection's: ${String(e)}`);
      return true;
    });
    assert.equal(saves, 1, 'recording was tried');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
