// The exit watcher: one look at a time, however long a look takes (QEMU's exit status awaited,
// then the VM's lock), and the exit told once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DEFAULT_CONSOLE_LIMITS } from './console-log.js';
import { instancePaths } from './qemu-process.js';
import { QemuUsers } from './qemu-user.js';
import { VmRunner } from './vm-runner.js';
import type { VmRecord } from './vm-record.js';

test('the exit watcher looks once at a time: slow looks do not pile up behind each other; the exit is told once', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-vm-runner-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  let inFlight = 0;
  let most = 0;
  let looks = 0;
  const record = (lifecycle: VmRecord['lifecycle']) => ({ id: 'vm1', name: 'vm1', createdAt: '', lifecycle, config: {} } as unknown as VmRecord);
  const runner = new VmRunner({
    paths: () => instancePaths(dir),
    outsideOperations: (fn) => fn(),
    save: async () => undefined,
    // each look takes 150 ms (as one waiting for QEMU's exit status does); the fourth finds it stopped
    load: async () => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, 150));
      inFlight--;
      return record(++looks >= 4 ? 'stopped' : 'running');
    },
  }, { qemu: 'qemu-system-x86_64', consoleLimits: DEFAULT_CONSOLE_LIMITS, settings: { exitPollMs: 10, consoleCheckMs: 10_000 }, users: new QemuUsers({ dir: path.join(dir, 'users') }) });
  const told: string[] = [];
  runner.onExit((id) => told.push(id));
  runner.watch('vm1');
  await new Promise((r) => setTimeout(r, 1000));
  runner.unwatch('vm1');
  assert.equal(most, 1, 'never two looks at once');
  assert.equal(looks, 4, 'looks stop once the exit is seen');
  assert.deepEqual(told, ['vm1']);
});
