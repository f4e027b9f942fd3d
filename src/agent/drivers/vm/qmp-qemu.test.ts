// The QMP client against a real QEMU (paused with -S: no guest needs to boot).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { QmpClient, QmpCommandError } from './qmp.js';

test('real QEMU: negotiate, query, stop/cont with events, typed errors, quit closes', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-qmpq-'));
  const sock = path.join(dir, 'qmp.sock');
  const qemu = spawn('qemu-system-x86_64', ['-S', '-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-no-user-config', '-display', 'none',
    '-qmp', `unix:${sock},server=on,wait=off`], { stdio: 'ignore' });
  const exited = new Promise<number | null>((r) => qemu.on('exit', (c) => r(c)));
  let c: QmpClient | undefined;
  try {
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
    c = await QmpClient.connect(sock);
    assert.ok((c.greeting?.version.qemu.major ?? 0) >= 6);
    // QEMU 8.0 dropped singlestep from the answer: compare what every version says
    const st = await c.execute<{ status: string; running: boolean }>('query-status');
    assert.deepEqual({ status: st.status, running: st.running }, { status: 'prelaunch', running: false });
    const resumed = c.waitForEvent('RESUME', 10_000);
    await c.execute('cont');
    await resumed;
    assert.equal((await c.execute<{ status: string }>('query-status')).status, 'running');
    const cpus = await c.execute<Array<{ 'thread-id': number; 'cpu-index': number }>>('query-cpus-fast');
    assert.equal(cpus.length, 1);
    assert.ok((cpus[0]?.['thread-id'] ?? 0) > 0);
    await assert.rejects(c.execute('no-such-command'), (e) => e instanceof QmpCommandError && hasCode(e, 'InvalidArgument'));
    await assert.rejects(c.execute('device_del', { id: 'nothing' }), (e) => e instanceof QmpCommandError && hasCode(e, 'NotFound'));
    await c.execute('quit');
    await c.closed;
    assert.equal(await exited, 0);
  } finally {
    c?.close();
    if (qemu.exitCode === null) qemu.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
