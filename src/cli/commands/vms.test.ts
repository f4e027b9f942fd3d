import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCpuList, vmCreateBody, vmImage, vmStatusText, type Vm } from './vms.js';

const noOpts = { name: undefined, cpus: undefined, memory: undefined, kernel: undefined, initrd: undefined, append: undefined, disk: undefined, pin: undefined };

test('CPU lists: ranges and singles; bad ones are usage errors', () => {
  assert.deepEqual(parseCpuList('0-2,5'), [0, 1, 2, 5]);
  assert.deepEqual(parseCpuList('1'), [1]);
  for (const bad of ['', '2-1', 'a', '1,,2']) assert.throws(() => parseCpuList(bad), { name: 'UsageError' });
});

test('vm create body: memory in MiB, absolute paths, name as option or argument, one boot source needed', () => {
  const b = vmCreateBody({ ...noOpts, memory: '1g', cpus: 2, kernel: './k', initrd: '/i', append: 'console=ttyS0', pin: '0-1' }, ['vm1']);
  assert.deepEqual(b, { name: 'vm1', cpus: 2, memoryMiB: 1024, kernel: `${process.cwd()}/k`, initrd: '/i', append: 'console=ttyS0', pin: [0, 1] });
  // without a '/', kernel and initrd name images of the image service
  assert.deepEqual(vmCreateBody({ ...noOpts, kernel: 'vmlinuz', initrd: 'initramfs' }, []), { kernel: 'vmlinuz', initrd: 'initramfs' });
  assert.deepEqual(vmCreateBody({ ...noOpts, disk: '/d.qcow2', name: 'x' }, []), { name: 'x', disk: '/d.qcow2' });
  assert.throws(() => vmCreateBody(noOpts, []), { name: 'UsageError', message: /--kernel FILE .*--image NAME .* or --disk FILE/ });
  assert.deepEqual(vmCreateBody({ ...noOpts, image: 'debian', name: 'y', network: ['front', 'back'] }, []), { name: 'y', image: 'debian', networks: ['front', 'back'] });
  assert.throws(() => vmCreateBody({ ...noOpts, image: 'debian', disk: '/d' }, []), { name: 'UsageError', message: /give one/ });
  assert.throws(() => vmCreateBody({ ...noOpts, disk: '/d', append: 'x' }, []), { name: 'UsageError' });
  assert.throws(() => vmCreateBody({ ...noOpts, disk: '/d', name: 'a' }, ['b']), { name: 'UsageError' });
  assert.throws(() => vmCreateBody({ ...noOpts, disk: '/d', memory: '1m' }, []), { name: 'UsageError' });
});

test('ps columns for VMs: image from disk, kernel or template; saved and stopped statuses', () => {
  const now = Date.parse('2026-01-01T00:01:00Z');
  const v: Vm = {
    id: 'a'.repeat(32), name: 'v', type: 'vm', status: 'saved', exitCode: null, createdAt: '2026-01-01T00:00:00Z',
    startedAt: null, finishedAt: null, savedAt: '2026-01-01T00:00:30Z', config: { cpus: 1, memoryMiB: 256, kernel: '/boot/vmlinuz-6.1' },
  };
  assert.equal(vmImage(v), 'kernel:vmlinuz-6.1');
  assert.equal(vmImage({ config: { ...v.config, disk: '/img/deb.qcow2' } }), 'deb.qcow2');
  assert.equal(vmStatusText(v, now), 'Saved 30 seconds ago');
  assert.equal(vmStatusText({ ...v, status: 'stopped', exitCode: 137, finishedAt: '2026-01-01T00:00:50Z' }, now), 'Stopped (137) 10 seconds ago');
  assert.equal(vmStatusText({ ...v, status: 'running', startedAt: '2026-01-01T00:00:00Z' }, now), 'Up About a minute');
});
