/**
 * A checkpoint's pieces (checkpoint.ts): CRIU's failures as the caller can act on them, the
 * container's CRIU configuration, and the restore hints read as hostile input.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { checkpointFailure, criuConfig, criuLogErrors, readRestoreHints, writeRestoreHints } from './checkpoint.js';

const ID = 'a'.repeat(64);

test('CRIU\'s refusals: established TCP connections and outside unix sockets are Conflicts naming them; the rest Internal with CRIU\'s words', () => {
  const tcp = checkpointFailure(ID, 'criu failed: type NOTIFY errno 0', ['inet: Connected TCP socket, consider using --tcp-established option.', 'Dumping FAILED.']);
  assert.ok(hasCode(tcp, 'Conflict'));
  assert.match(tcp.message, /container aaaaaaaaaaaa has established TCP connections: a live move carries listening sockets, not connections to peers \(CRIU's --tcp-established is not used\)/);
  const unix = checkpointFailure(ID, '', ['sockets: External socket is used. Consider using --ext-unix-sk option.', "Can't dump unix socket"]);
  assert.ok(hasCode(unix, 'Conflict'));
  assert.match(unix.message, /unix socket connected outside it/);
  const other = checkpointFailure(ID, 'criu failed', ['sockets: Can\'t get 1:34 opt: Operation not supported', 'Dumping FAILED.']);
  assert.ok(hasCode(other, 'Internal'));
  assert.equal(other.message, "checkpoint of container aaaaaaaaaaaa failed: sockets: Can't get 1:34 opt: Operation not supported; Dumping FAILED.");
});

test('the CRIU configuration leaves in-flight connections behind, and carries the extra lines', () => {
  assert.equal(criuConfig('external net[4026532]:extRootNetNS\n'), 'skip-in-flight\nexternal net[4026532]:extRootNetNS\n');
  assert.equal(criuConfig(''), 'skip-in-flight\n');
});

test('a CRIU log\'s last errors without their locations; restore hints: the one known boolean, anything else ignored', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-checkpoint-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'restore.log'), '(00.1) Error (criu/mount.c:1): first\n(00.2) Warn: x\n(00.3) Error (criu/mount.c:2): second\n(00.4) Error (criu/cr-restore.c:3): Restoring FAILED.\n(00.5) Error (a.c:4): last\n');
  assert.deepEqual(await criuLogErrors(join(dir, 'restore.log')), ['second', 'Restoring FAILED.', 'last']);
  assert.deepEqual(await criuLogErrors(join(dir, 'absent.log')), []);
  assert.deepEqual(await readRestoreHints(dir), {}, 'no hints: none');
  await writeRestoreHints(dir, { warmMounts: true });
  assert.deepEqual(await readRestoreHints(dir), { warmMounts: true });
  for (const hostile of ['{"warmMounts":"yes"}', '[1]', 'not json', '{"warmMounts":true,"mounts":[{"source":"/etc"}]}']) {
    writeFileSync(join(dir, 'nimbus-restore.json'), hostile);
    const h = await readRestoreHints(dir);
    assert.ok(Object.keys(h).every((k) => k === 'warmMounts') && (h.warmMounts === undefined || h.warmMounts === true), `${hostile} → ${JSON.stringify(h)}`);
  }
});
