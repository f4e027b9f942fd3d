// The jailer of a QEMU that keeps file capabilities (share-jail.ts), run around a shell instead of QEMU: what
// the jail holds, the capabilities and no_new_privs it leaves, and nothing left on the host after.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { mountsUnder } from '../../snapshots/mount.js';
import { shareJailOf } from './share-jail.js';
import { jailedCommand } from './jailer.js';
import { QEMU_UID_BASE, QEMU_UID_COUNT } from './qemu-user.js';
import { instancePaths } from './qemu-process.js';

/** Opens argv[1] through its file handle (name_to_handle_at, then open_by_handle_at on its directory): prints handle-opened or handle-refused. */
const OPEN_BY_HANDLE = [
  'import ctypes, os, sys',
  'libc = ctypes.CDLL(None, use_errno=True)',
  'class Handle(ctypes.Structure): _fields_ = [("size", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 128)]',
  'h = Handle(); h.size = 128; m = ctypes.c_int()',
  'assert libc.name_to_handle_at(-100, sys.argv[1].encode(), ctypes.byref(h), ctypes.byref(m), 0) == 0, ctypes.get_errno()',
  'd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)',
  'print("handle-opened" if libc.open_by_handle_at(d, ctypes.byref(h), os.O_RDONLY) >= 0 else "handle-refused")',
].join('\n');

test('the jail holds the host programs, the paths it is given and its own /proc/self/fd; nothing else (not its VM\'s directory: its run files are descriptors), read-only but for its writable paths, where a device node it makes does not open; a user of its own with 9p\'s capabilities only, no_new_privs', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-share-jail-'));
  try {
    const vmDir = path.join(dir, 'vm');
    const share = path.join(dir, 'rootfs');
    const secret = path.join(dir, 'not-given');
    for (const d of [vmDir, share, secret]) await mkdir(d);
    await writeFile(path.join(share, 'in-the-share'), 'shared');
    await writeFile(path.join(secret, 'file'), 'secret');
    // a kernel under /usr (as some distributions keep one): already there through /usr, mounted over as it is
    const run = instancePaths(vmDir);
    const paths = { qmpSocket: run.qmpSocket, consoleSocket: run.consoleSocket, consoleLog: run.consoleLog, pidFile: run.pidFile };
    // a user of its own, as the driver claims one (the last of the range: no VM of this host's holds it in a test)
    const user = { uid: QEMU_UID_BASE + QEMU_UID_COUNT - 1, gid: QEMU_UID_BASE + QEMU_UID_COUNT - 1 };
    const jail = shareJailOf({ accel: 'tcg', kernel: '/usr/bin/env', shares: [{ tag: 'r', path: share }], paths }, vmDir, path.join(vmDir, 'jail'), user);
    await mkdir(jail.root);
    assert.throws(() => shareJailOf({ accel: 'tcg', shares: [{ tag: 'r', path: dir }], paths }, vmDir, jail.root), /may not share .*VM's own directory/, 'nor a share that holds it');
    const script = [
      'ls -A / | tr "\\n" " "; echo',
      'echo $(ls -A /proc) $(ls -A /proc/self)',
      'cat "$1/in-the-share"; echo',
      'test -e /etc/passwd && echo etc || echo no-etc',
      'test -e "$2" && echo secret || echo no-secret',
      'echo w > "$1/written" && echo share-writable',
      '(echo x > /planted) 2>/dev/null && echo root-writable || echo root-read-only',
      '(echo x > /usr/planted) 2>/dev/null && echo usr-writable || echo usr-read-only',
      // a device node made where it may write (9p passthrough makes the guest's): made, but no use
      // to it (the /dev/zero numbers; a disk's would be the host's disk)
      'mknod "$1/zero" c 1 5 && (head -c1 "$1/zero" >/dev/null 2>&1 && echo node-opened || echo node-refused)',
      // not its VM's directory, whose files the agent and the supervisor use by path: its run
      // files come as descriptors (10, 11, 13: the listening sockets; 12: the console log)
      'test -e "$3" && echo vm-dir || echo no-vm-dir',
      'echo $(ls /proc/self/fd | grep -E "^1[0-3]$")',
      // not root: no signal reaches a root process (this test's own, here), kill(-1) none
      'kill -0 "$4" 2>/dev/null && echo kill-allowed || echo kill-refused',
      // open_by_handle_at ("shocker"): with a handle, a file of the same filesystem opens from
      // any descriptor on it, past the mount namespace; here a handle of its own share's file
      `python3 -I -S -c '${OPEN_BY_HANDLE}' "$1/in-the-share"`,
      'sleep 1',
    ].join('\n');
    const { binary, argv } = jailedCommand('/bin/sh', ['-c', script, 'jailed', share, secret, vmDir, String(process.pid)], { taps: [], share: jail });
    const child = spawn(binary, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    // read while it sleeps: the shell is the jailer's process (exec after exec, the same pid)
    let status = '';
    for (let i = 0; i < 100 && !/share-writable/.test(out); i++) await new Promise((r) => setTimeout(r, 20));
    status = await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => '');
    const jailedNs: Record<string, string> = {};
    for (const ns of ['mnt', 'ipc', 'net']) jailedNs[ns] = await readlink(`/proc/${child.pid}/ns/${ns}`).catch(() => '');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, err);
    const lines = out.trim().split('\n');
    assert.deepEqual(lines[0]!.trim().split(' ').filter((n) => !['bin', 'lib', 'lib32', 'lib64', 'libx32', 'sbin', 'usr'].includes(n)).sort(), ['dev', 'proc', dir.split('/')[1]!].sort(), 'programs, devices, /proc, and the top of its own paths');
    assert.equal(lines[1]!.trim(), 'self fd', 'of /proc, its own fd directory only');
    assert.deepEqual(lines.slice(2), ['shared', 'no-etc', 'no-secret', 'share-writable', 'root-read-only', 'usr-read-only', 'node-refused', 'no-vm-dir', '10 11 12 13', 'kill-refused', 'handle-refused'],
      'a device node it makes in its share does not open (nodev); its VM\'s directory is not there, its run files are descriptors; no file opens by its handle');
    // the run files, made by the jailer in the VM's directory before it left the host's tree
    assert.ok((await lstat(run.qmpSocket)).isSocket() && (await lstat(run.consoleSocket)).isSocket(), 'the sockets');
    assert.equal((await lstat(run.consoleLog)).mode & 0o777, 0o600, 'the console log');
    assert.equal(Number((await readFile(run.pidFile, 'utf8')).trim()), child.pid, 'its pid, which exec keeps');
    const field = (f: string) => new RegExp(`^${f}:\\s+(\\S+)`, 'm').exec(status)?.[1];
    // chown 0, dac_override 1, fowner 3, fsetid 4, mknod 27: ambient, so effective after the exec
    assert.equal(field('Uid'), String(user.uid), status);
    assert.equal(field('Gid'), String(user.gid));
    assert.match(status, /^Groups:[ \t]*$/m, 'no supplementary group');
    // namespaces of its own: mounts, System V IPC and the network (every VM's QEMU has the last two: jailer.ts)
    for (const ns of ['mnt', 'ipc', 'net']) {
      assert.match(jailedNs[ns] ?? '', new RegExp(`^${ns}:\\[\\d+\\]$`), `read while it ran: ${ns}`);
      assert.notEqual(jailedNs[ns], await readlink(`/proc/self/ns/${ns}`), `its own ${ns} namespace`);
    }
    assert.equal(field('CapBnd'), '000000000800001b', status);
    assert.equal(field('CapAmb'), '000000000800001b');
    assert.equal(field('CapEff'), '000000000800001b');
    assert.equal(field('NoNewPrivs'), '1');
    assert.equal(await readFile(path.join(share, 'written'), 'utf8'), 'w\n', 'the share is the host directory itself');
    assert.deepEqual(await mountsUnder(dir), [], 'its mounts were its namespace\'s only');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
