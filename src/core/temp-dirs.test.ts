// Temporary directories named for their process: a later process removes those of gone processes only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { processTempDir, processTempDirSync, sweepDeadProcessTempDirs } from './temp-dirs.js';

test("a dead process's directories go (a key inside included), a live one's and other names stay", async (t) => {
  const under = await mkdtemp(path.join(tmpdir(), 'nimbus-temp-dirs-test-'));
  t.after(() => rm(under, { recursive: true, force: true }));
  const gone = spawn('true', { stdio: 'ignore' });
  await new Promise((r) => gone.once('exit', r));
  const mine = await processTempDir('pki', under);
  const mineSync = processTempDirSync('probe-runc', under);
  assert.match(path.basename(mine), new RegExp(`^nimbus-pki-${process.pid}-[A-Za-z0-9]{6}$`));
  const dead = path.join(under, `nimbus-pki-${gone.pid}-AbC123`);
  const deadKind = path.join(under, `nimbus-migrate-tls-${gone.pid}-xYz789`);
  await mkdir(dead);
  await writeFile(path.join(dead, 'ca.key'), 'PRIVATE KEY');
  await mkdir(deadKind);
  const other = path.join(under, 'nimbus-vm-label-AbC123'); // a test's, not named for a process
  await mkdir(other);
  const removed = await sweepDeadProcessTempDirs(under);
  assert.deepEqual(removed.sort(), [path.basename(dead), path.basename(deadKind)].sort());
  assert.deepEqual((await readdir(under)).sort(), [path.basename(mine), path.basename(mineSync), path.basename(other)].sort());
  assert.throws(() => processTempDirSync('../x', under), /bad temporary directory kind/);
});
