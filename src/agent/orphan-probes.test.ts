import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { killOrphanProbes } from './orphan-probes.js';
import { processAlive } from '../core/proc.js';

/** Pids whose command line names marker. */
function withArg(marker: string): number[] {
  return readdirSync('/proc').filter((e) => /^\d+$/.test(e)).map(Number).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').includes(marker);
    } catch {
      return false;
    }
  });
}

test('kills probe QEMUs orphaned by a dead daemon, never one of its own in progress', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-probe-orphan-'));
  const initrd = join(dir, 'probe-empty.initrd');
  // stand-ins named like QEMU (argv[0]) with the probe's initrd among their arguments; perl sleeps
  // without forking (a shell's child between fork and exec would be a second, transient match)
  const ours = spawn('perl', ['-e', 'sleep 60', initrd], { argv0: 'qemu-system-x86_64', stdio: 'ignore' });
  const orphanParent = spawn('setsid', ['bash', '-c', `(exec -a qemu-system-x86_64 perl -e 'sleep 60' ${initrd}) & exit 0`], { stdio: 'ignore' });
  await new Promise((r) => orphanParent.once('exit', r));
  try {
    let orphans: number[] = [];
    for (let i = 0; i < 250 && orphans.length === 0; i++) { // up to 5 s on a loaded host
      orphans = withArg(initrd).filter((p) => p !== ours.pid);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(orphans.length, 1, 'the orphan stand-in runs');
    assert.deepEqual(killOrphanProbes(initrd), orphans);
    for (let i = 0; i < 100 && processAlive(orphans[0]); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(processAlive(orphans[0]), false, 'the orphan is gone');
    assert.equal(processAlive(ours.pid), true, 'our own probe is left alone');
    assert.deepEqual(killOrphanProbes(join(dir, 'other.initrd')), []);
  } finally {
    ours.kill('SIGKILL');
    for (const p of withArg(initrd)) process.kill(p, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
