// Each VM's QEMU gets a user of its own: the same one at every launch, never another VM's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QEMU_UID_BASE, QEMU_UID_COUNT, QemuUsers, isQemuUid, processUser } from './qemu-user.js';

test('a VM keeps its user; no two VMs of a driver share one; a gone VM frees it; a running QEMU found at start keeps its own', () => {
  const users = new QemuUsers();
  const ids = Array.from({ length: 2000 }, (_, i) => i.toString(16).padStart(64, '0'));
  const uids = ids.map((id) => users.claim(id).uid);
  assert.equal(new Set(uids).size, ids.length, 'distinct');
  for (const u of uids) assert.ok(isQemuUid(u) && u >= QEMU_UID_BASE && u < QEMU_UID_BASE + QEMU_UID_COUNT && u < 2 ** 31);
  assert.deepEqual(users.claim(ids[7]!), { uid: uids[7], gid: uids[7] }, 'the same at the next launch');
  // another driver (after a restart) derives the same user from the id
  assert.equal(new QemuUsers().claim(ids[7]!).uid, uids[7]);
  // a VM whose derived user another holds takes the next free one
  const other = new QemuUsers();
  other.adopt('f'.repeat(64), uids[3]!);
  assert.notEqual(other.claim(ids[3]!).uid, uids[3]);
  users.release(ids[3]!);
  const again = new QemuUsers();
  again.adopt(ids[3]!, QEMU_UID_BASE + 5);
  assert.equal(again.claim(ids[3]!).uid, QEMU_UID_BASE + 5, 'adopted: the user it runs as');
  again.adopt(ids[4]!, 0);
  assert.notEqual(again.claim(ids[4]!).uid, 0, 'root is never adopted as a QEMU user');
});

test('processUser reads a process\'s real uid and gid', () => {
  assert.deepEqual(processUser(process.pid), { uid: process.getuid!(), gid: process.getgid!() });
  assert.equal(processUser(2 ** 22 + 12345), undefined);
});
