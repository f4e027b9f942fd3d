import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { parentPid, parseProcStat, processAlive, procStat } from './proc.js';

test('a live child, then its zombie, then nothing', async () => {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  const pid = child.pid!;
  try {
    assert.equal(processAlive(pid), true);
    // spawn returns once the child is forked; it shows sleep's command line once it has exec'd
    for (let i = 0; i < 400 && !processAlive(pid, 'sleep'); i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(processAlive(pid, 'sleep'), true);
    assert.equal(processAlive(pid, 'no-such-marker'), false, 'a pid reused by another program does not count');
    assert.equal(parentPid(pid), process.pid);
    // killed but not yet reaped: a zombie is not alive
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 200 && procStat(pid)?.state !== 'Z' && procStat(pid) !== undefined; i++) await new Promise((r) => setTimeout(r, 5));
    assert.equal(processAlive(pid), false);
  } finally {
    child.kill('SIGKILL');
    if (child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
  }
  assert.equal(procStat(pid), undefined);
  assert.equal(parentPid(pid), undefined);
  assert.equal(processAlive(undefined), false);
  assert.equal(processAlive(0), false);
});

test('a command name with spaces and parentheses is parsed from the last one', () => {
  const st = procStat(process.pid);
  assert.ok(st);
  assert.equal(st.ppid, process.ppid);
  assert.match(st.state, /^[RS]$/);
});

test('stat text: a command name with spaces and parentheses, state, parent, CPU ticks, last CPU and policy', () => {
  // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
  // ... processor (field 39) rt_priority policy (field 41) ...
  const st = parseProcStat('4242 (we (i) rd) S 17 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 12345 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 10 1 0 0 0\n');
  assert.deepEqual(st, { comm: 'we (i) rd', state: 'S', ppid: 17, cpuTicks: 12, processor: 3, policy: 1 });
});
