// Each VM's QEMU gets a user of its own: the same one at every launch, never another running VM's
// on the host, whichever agent runs it (reservations in a host-wide directory).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QEMU_UID_BASE, QEMU_UID_COUNT, QemuUsers, isQemuUid, processUser } from './qemu-user.js';

const scratch = (t: { after(fn: () => void): void }) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-qemu-users-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};
const ids = Array.from({ length: 300 }, (_, i) => i.toString(16).padStart(64, '0'));

test('a VM keeps its user at every launch; no two VMs of a driver share one; a gone VM frees it', (t) => {
  const dir = scratch(t);
  const users = new QemuUsers({ dir });
  const uids = ids.map((id) => users.claim(id).uid);
  assert.equal(new Set(uids).size, ids.length, 'distinct');
  for (const u of uids) assert.ok(isQemuUid(u) && u >= QEMU_UID_BASE && u < QEMU_UID_BASE + QEMU_UID_COUNT && u < 2 ** 31);
  assert.deepEqual(users.claim(ids[7]!), { uid: uids[7], gid: uids[7] }, 'the same at the next launch');
  assert.equal(readFileSync(join(dir, String(uids[7])), 'utf8'), ids[7], 'reserved host-wide');
  assert.equal(users.peek(ids[7]!).uid, uids[7]);
  users.release(ids[7]!);
  assert.ok(!readdirSync(dir).includes(String(uids[7])), 'released');
  // another driver (after a restart) derives the same user from the id
  assert.equal(new QemuUsers({ dir: scratch(t) }).claim(ids[7]!).uid, uids[7]);
  // a running QEMU found at the start keeps its user; root is never taken for one
  const again = new QemuUsers({ dir: scratch(t) });
  again.adopt(ids[3]!, QEMU_UID_BASE + 5);
  assert.equal(again.claim(ids[3]!).uid, QEMU_UID_BASE + 5);
  again.adopt(ids[4]!, 0);
  assert.notEqual(again.claim(ids[4]!).uid, 0);
});

test('a driver that never claimed a VM (a new one after a restart) frees its user when the VM goes: by its first choice, or any reservation naming it', (t) => {
  const dir = scratch(t);
  const before = new QemuUsers({ dir });
  const uid = before.claim(ids[9]!).uid;
  new QemuUsers({ dir }).release(ids[9]!);
  assert.ok(!readdirSync(dir).includes(String(uid)), 'its first choice, released');
  // a VM that took another user than its first choice (that one was taken)
  const taken = new QemuUsers({ dir, preferred: () => 7 });
  const other = taken.claim('vm-x').uid;
  const moved = taken.claim('vm-y').uid;
  assert.notEqual(moved, other);
  new QemuUsers({ dir, preferred: () => 7 }).release('vm-y');
  assert.deepEqual(readdirSync(dir), [String(other)], "found by its reservation; the other VM's stays");
  new QemuUsers({ dir }).release('vm-none'); // none: nothing happens
  assert.deepEqual(readdirSync(dir), [String(other)]);
});

test("two agents of one host never give two running VMs one user: a reservation another VM's process runs as is skipped, one nobody runs as is taken over", async (t) => {
  const dir = scratch(t);
  const first = () => 42; // every VM tries the same user first
  const a = new QemuUsers({ dir, preferred: first });
  const b = new QemuUsers({ dir, preferred: first });
  const ua = a.claim('vm-a').uid;
  assert.equal(ua, QEMU_UID_BASE + 42);
  // vm-a's QEMU runs as it (a process of that uid stands in)
  const running = spawn('sleep', ['30'], { uid: ua, gid: ua, stdio: 'ignore' });
  t.after(() => running.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 100));
  const ub = b.claim('vm-b').uid;
  assert.notEqual(ub, ua, "the other agent's VM takes the next user");
  assert.equal(b.claim('vm-a').uid, ua, 'the same VM on another agent of the host (a move between them) keeps its user');
  b.release('vm-a');
  running.kill('SIGKILL');
  await new Promise((r) => running.once('exit', r));
  // nobody runs as vm-a's user now: a third VM may take it, and vm-a takes another at its next launch
  const c = new QemuUsers({ dir, preferred: first });
  assert.equal(c.claim('vm-c').uid, ua, 'taken over');
  const runningC = spawn('sleep', ['30'], { uid: ua, gid: ua, stdio: 'ignore' });
  t.after(() => runningC.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 100));
  assert.notEqual(a.claim('vm-a').uid, ua, "checked again at vm-a's next launch: vm-c's QEMU runs as it now");
  runningC.kill('SIGKILL');
  await new Promise((r) => runningC.once('exit', r));
  // a crashed agent's reservations nobody runs as go at the next start
  assert.ok(new QemuUsers({ dir }).sweep() >= 1);
});

test("processUser reads a process's real uid and gid", () => {
  assert.deepEqual(processUser(process.pid), { uid: process.getuid!(), gid: process.getgid!() });
  assert.equal(processUser(2 ** 22 + 12345), undefined);
});
