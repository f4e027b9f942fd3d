import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hasCode } from '../../../core/errors.js';
import { decodeExitStatus, parseCpuList, qemuArgv, shutdownCauseIn, type QemuConfig } from './qemu.js';

const base: QemuConfig = {
  name: 'vm1',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 256,
  kernel: '/boot/vmlinuz',
  initrd: '/tmp/initrd.gz',
  append: 'console=ttyS0',
  nics: [],
  paths: { qmpSocket: '/s/qmp.sock', consoleSocket: '/s/console.sock', consoleLog: '/s/console.log', pidFile: '/s/qemu.pid' },
  startPaused: true,
  debugExit: false,
};

const after = (argv: string[], flag: string) => argv.filter((_, i) => argv[i - 1] === flag);

test('argv: machine, accelerator, cpu model, size, monitor, console, kernel boot', () => {
  const a = qemuArgv(base);
  assert.deepEqual(after(a, '-machine'), ['pc,accel=tcg']);
  assert.deepEqual(after(a, '-cpu'), ['max']);
  assert.deepEqual(after(a, '-smp'), ['2']);
  assert.deepEqual(after(a, '-m'), ['256M']);
  assert.deepEqual(after(a, '-chardev'), [
    'socket,id=qmp,path=/s/qmp.sock,server=on,wait=off',
    // the second monitor, where descriptors are handed over (qmp-fds.ts)
    'socket,id=qmpfds,path=/s/qmp-fds.sock,server=on,wait=off',
    'socket,id=console,path=/s/console.sock,server=on,wait=off,logfile=/s/console.log,logappend=on',
  ]);
  assert.deepEqual(after(a, '-mon'), ['chardev=qmp,mode=control', 'chardev=qmpfds,mode=control']);
  assert.deepEqual(after(a, '-serial'), ['chardev:console']);
  assert.deepEqual(after(a, '-kernel'), ['/boot/vmlinuz']);
  assert.deepEqual(after(a, '-append'), ['console=ttyS0']);
  assert.ok(a.includes('-S') && a.includes('-nodefaults') && a.includes('-no-reboot'));
  assert.ok(!a.includes('-incoming') && !a.some((x) => x.startsWith('isa-debug-exit')));
  assert.deepEqual(after(qemuArgv({ ...base, accel: 'kvm' }), '-cpu'), ['host']);
  assert.ok(!qemuArgv({ ...base, startPaused: false }).includes('-S'));
});

test('argv: overlay disk, NICs on taps, incoming migration, debug exit, comma escaping', () => {
  const a = qemuArgv({
    ...base,
    name: 'a,b',
    rootDisk: { path: '/d/root.qcow2', format: 'qcow2' },
    nics: [{ tap: 'vif3.0', mac: '52:54:00:00:00:01' }, { tap: 'vif3.1', mac: '52:54:00:00:00:02', mtu: 1450 }],
    incoming: 'exec:cat /x',
    debugExit: true,
  });
  assert.deepEqual(after(a, '-name'), ['guest=a,,b']);
  assert.deepEqual(after(a, '-drive'), ['if=none,id=root,file=/d/root.qcow2,format=qcow2,cache=writeback,file.auto-read-only=off']);
  // the taps are the jailer's descriptors, from TAP_FD_BASE (jailer.ts): QEMU has no network to find them in by name
  assert.deepEqual(after(a, '-netdev'), ['tap,id=net0,fd=20', 'tap,id=net1,fd=21']);
  assert.deepEqual(after(a, '-device'), [
    'isa-debug-exit,iobase=0xf4,iosize=0x01',
    'virtio-blk-pci,drive=root',
    'virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01',
    'virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02,host_mtu=1450',
  ]);
  assert.throws(() => qemuArgv({ ...base, nics: [{ tap: 'vif3.0', mac: '52:54:00:00:00:01', mtu: 100 }] }), { code: 'InvalidArgument' });
  assert.deepEqual(after(a, '-incoming'), ['exec:cat /x']);
  const diskOnly = qemuArgv({ ...base, kernel: undefined, initrd: undefined, append: undefined, rootDisk: { path: '/d/r.qcow2', format: 'qcow2' } });
  assert.deepEqual(after(diskOnly, '-device'), ['virtio-blk-pci,drive=root,bootindex=0']);
});

test('argv: invalid configurations are InvalidArgument', () => {
  const bad: Array<Partial<QemuConfig>> = [
    { cpus: 0 },
    { memoryMiB: 8 },
    { kernel: undefined, initrd: undefined, append: undefined },
    { kernel: undefined },
    { nics: [{ tap: 'a-very-long-tap-name', mac: '52:54:00:00:00:01' }] },
    { nics: [{ tap: 'vif1.0', mac: 'nope' }] },
  ];
  for (const b of bad) assert.throws(() => qemuArgv({ ...base, ...b }), (e) => hasCode(e, 'InvalidArgument'), JSON.stringify(b));
});

test('exit status decoding: power-off, guest codes via isa-debug-exit, signals, QEMU failure', () => {
  assert.equal(decodeExitStatus(0, true), 0);
  assert.equal(decodeExitStatus(7, true), 3);
  assert.equal(decodeExitStatus(127, true), 63);
  assert.equal(decodeExitStatus(1, true), 1);
  assert.equal(decodeExitStatus(137, true), 137);
  assert.equal(decodeExitStatus(7, false), 7);
});

test('CPU lists', () => {
  assert.deepEqual(parseCpuList('0-2,5'), [0, 1, 2, 5]);
  assert.deepEqual(parseCpuList('1'), [1]);
  assert.throws(() => parseCpuList('3-1'), (e) => hasCode(e, 'InvalidArgument'));
  assert.throws(() => parseCpuList('x'), (e) => hasCode(e, 'InvalidArgument'));
});

test('shutdown cause: the last shutdown request QEMU traced on its stderr, by name; none when it made none', () => {
  assert.equal(shutdownCauseIn('qemu_system_powerdown_request \nqemu_system_shutdown_request reason=6\n'), 'guest-shutdown');
  assert.equal(shutdownCauseIn('qemu_system_shutdown_request reason=7\nqemu_system_shutdown_request reason=2\n'), 'host-qmp-quit');
  assert.equal(shutdownCauseIn('qemu_system_shutdown_request reason=8'), 'guest-panic');
  assert.equal(shutdownCauseIn('qemu_system_shutdown_request reason=42'), 'cause 42');
  assert.equal(shutdownCauseIn('qemu-system-x86_64: terminating on signal 15 from pid 1 (node)\n'), 'host-signal');
  assert.equal(shutdownCauseIn('qemu-system-x86_64: ../softmmu/physmem.c:1: assertion failed\n'), undefined);
  assert.equal(shutdownCauseIn(''), undefined);
  // a guest that panicked (panic=-1) after a migration, as QEMU 7.2 wrote it: no request, the run state to shutdown
  const reset = 'runstate_set current_run_state 1 (inmigrate) new_state 9 (running)\nrunstate_set current_run_state 9 (running) new_state 11 (shutdown)\n';
  assert.equal(shutdownCauseIn(reset), 'guest-reset');
  assert.equal(shutdownCauseIn(`${reset}qemu_system_shutdown_request reason=2\n`), 'host-qmp-quit', 'a request, when there is one, says it');
  assert.equal(shutdownCauseIn('runstate_set current_run_state 6 (prelaunch) new_state 9 (running)\n'), undefined);
  assert.ok(qemuArgv(base).join(' ').includes('-d trace:qemu_system_shutdown_request,trace:qemu_system_powerdown_request,trace:runstate_set'), 'QEMU is asked to say it');
  assert.ok(qemuArgv(base).join(' ').includes('-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny'), 'QEMU runs under its own seccomp filter, spawning nothing');
});

test('runAs: QEMU drops to its own user (-runas uid:gid), allowed the one change of user it makes; never root, never with a 9p share', () => {
  const runAs = { uid: 2_000_000_007, gid: 2_000_000_007 };
  const argv = qemuArgv({ ...base, runAs }).join(' ');
  assert.ok(argv.includes('-runas 2000000007:2000000007'));
  assert.ok(argv.includes('-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny'), 'deny would kill it at its own change of user');
  assert.ok(!qemuArgv(base).join(' ').includes('-runas'), 'absent: it stays root');
  assert.throws(() => qemuArgv({ ...base, runAs: { uid: 0, gid: 0 } }), /other than root/);
  assert.throws(() => qemuArgv({ ...base, runAs, shares: [{ tag: 'rootfs', path: '/x' }] }), /9p/);
  assert.ok(qemuArgv({ ...base, runAs, chroot: '/vms/x/jail' }).join(' ').includes('-runas 2000000007:2000000007 -chroot /vms/x/jail'), 'and into an empty root');
  assert.throws(() => qemuArgv({ ...base, chroot: '/vms/x/jail' }), /user of its own/, 'root leaves a chroot at will');
  // QEMU 9.1 and later (10.0 has no -runas or -chroot): one -run-with, a comma in the path doubled
  const runWith = qemuArgv({ ...base, runAs, chroot: '/vms/a,b/jail', runWith: true }).join(' ');
  assert.ok(runWith.includes('-run-with user=2000000007:2000000007,chroot=/vms/a,,b/jail'), runWith);
  assert.ok(!runWith.includes('-runas') && !runWith.includes('-chroot'));
  assert.ok(qemuArgv({ ...base, runAs, runWith: true }).join(' ').includes('-run-with user=2000000007:2000000007 '), 'no chroot: the user alone');
  assert.ok(!qemuArgv({ ...base, runWith: true }).join(' ').includes('-run-with'), 'no user: nothing to drop to');
});

