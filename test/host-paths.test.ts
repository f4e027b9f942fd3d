/**
 * No tenant reaches the host's files through the API (issue 13, finding 1: a member booted a VM
 * whose disk was backed by /etc/shadow and read it from /dev/vda).
 *
 * - Every route's schemas are walked: a string field whose name suggests a file must be declared
 *   a host path (and so refused to non-administrators at the edge) or be listed below as reviewed.
 * - Against a real nimbusd over TCP: a member's host paths are refused with the same answer whether
 *   the file exists or not; the member boots from kernel and initrd images it imported instead, and
 *   sees no host path in what the API returns. An administrator's paths must lie in the directories
 *   the operator allowed, with symlinks and '..' resolved first.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { allRoutes } from '../src/api/routes/index.js';
import { HOST_PATH, fieldsWhere, hostPathFields, refuseHostPaths } from '../src/api/host-paths.js';
import type { Route } from '../src/api/route.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { call } from './helpers/http.js';
import { buildTestGuest, GUEST_CACHE_DIR, hostKernel, READY_MARKER } from '../scripts/fixtures/guest.js';
import { waitFor } from './helpers/wait.js';

/** Fields whose names look like files but that take none: each says why. */
const REVIEWED_NOT_HOST_PATHS: Record<string, string> = {
  'createVm body.image': 'a disk image of the image service, by name',
  'importDiskImage query.name': 'the new image\'s name',
  'createContainer body.workdir': 'a path inside the container\'s own root filesystem',
  'createContainer body.image': 'an OCI image reference',
  'execInContainer body.workdir': 'a path inside the container\'s own root filesystem',
  'explainPlacement body.imageChainId': 'an image\'s layer chain digest, only compared with the hosts\' records (image locality)',
  'buildImage query.dockerfile': 'a path inside the build context the request uploads (contextPath() refuses one outside it, checkDockerfile() a symlink)',
  'execTerminal query.workdir': 'a path inside the container\'s own root filesystem',
  'createVm body.bootVolume': 'a block volume of the project, by name or id (the agent maps it to its own file)',
  'attachVolume body.volume': 'a block volume of the VM\'s project, by name or id',
  'detachVolume params.volume': 'a block volume of the VM\'s project, by name or id',
  'listVolumeSnapshots query.volume': 'a volume of the project, by name or id',
  'containerPathStat query.path': 'a path inside the container\'s own root filesystem, resolved inside it by its host (agent/copy/)',
  'readContainerArchive query.path': 'a path inside the container\'s own root filesystem, resolved inside it by its host (agent/copy/)',
  'writeContainerArchive query.path': 'a path inside the container\'s own root filesystem, resolved inside it by its host (agent/copy/)',
};
const FILE_LIKE = /path|file|dir|kernel|initrd|disk|device|socket|mount|bind|source|volume|root|image|workdir/i;

/** Dotted paths of a schema's string fields. */
const stringFields = (schema: TSchema | undefined) => fieldsWhere(schema, (s) => s.type === 'string');

describe('host paths in the route table', () => {
  test('every file-like string field is declared a host path or reviewed', () => {
    const unmarked: string[] = [];
    for (const r of allRoutes()) {
      for (const [where, schema] of [['params', r.params], ['query', r.query], ['body', r.body]] as const) {
        const declared = new Set(hostPathFields(schema));
        for (const field of stringFields(schema)) {
          const key = `${r.operationId} ${where}.${field}`;
          if (FILE_LIKE.test(field.split('.').pop() ?? '') && !declared.has(field) && !(key in REVIEWED_NOT_HOST_PATHS)) unmarked.push(key);
        }
      }
    }
    assert.deepEqual(unmarked, [], 'declare each with [HOST_PATH]: true (admins only) or add it to REVIEWED_NOT_HOST_PATHS with the reason');
  });

  test('the VM fields are declared, and the edge refuses them to everyone but system administrators', () => {
    const create = allRoutes().find((r) => r.operationId === 'createVm')!;
    assert.deepEqual(hostPathFields(create.body).sort(), ['disk', 'initrd', 'kernel']);
    const member = { userId: 'u', name: 'm', systemAdmin: false, defaultProjectId: 'p', via: 'token', tokenId: 't' } as never;
    const admin = { ...(member as object), systemAdmin: true } as never;
    for (const body of [{ kernel: '/etc/shadow' }, { disk: '/etc/shadow' }, { initrd: '/boot/x', kernel: 'k' }]) {
      assert.throws(() => refuseHostPaths(create, { body }, member), { code: 'PermissionDenied' });
      assert.doesNotThrow(() => refuseHostPaths(create, { body }, admin));
    }
    assert.doesNotThrow(() => refuseHostPaths(create, { body: { kernel: 'vmlinuz', initrd: 'initramfs', image: 'debian' } }, member));
    // nested and list fields are found too
    const nested = { body: { type: 'object', properties: { vols: { type: 'array', items: { type: 'object', properties: { src: { type: 'string', [HOST_PATH]: true } } } } } } } as unknown as Route;
    assert.deepEqual(hostPathFields(nested.body), ['vols[].src']);
    assert.throws(() => refuseHostPaths(nested, { body: { vols: [{ src: 'x' }, { src: '/etc' }] } }, member), { code: 'PermissionDenied' });
  });
});

describe('VM boot files: images for tenants, allowed directories for administrators', { concurrency: false }, () => {
  let d: DaemonProcess;
  let port: number;
  let member = '';
  const link = join(GUEST_CACHE_DIR, `escape-${process.pid}`);
  const sock = () => ({ socketPath: d.socket });
  const tcp = () => ({ port });

  before(async () => {
    process.env.NIMBUS_ADMIN_PASSWORD = 'host-paths-admin-pw';
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0']);
    port = Number(/tcp:127\.0\.0\.1:(\d+)/.exec(d.output())![1]);
    assert.equal((await call(sock(), 'POST', '/projects', { body: { name: 'tenant' } })).status, 201);
    assert.equal((await call(sock(), 'POST', '/users', { body: { name: 'mallory', password: 'mallory-password-1' } })).status, 201);
    assert.equal((await call(sock(), 'PUT', '/projects/tenant/roles/mallory', { body: { role: 'member' } })).status, 200);
    const login = await call(tcp(), 'POST', '/auth/login', { body: { user: 'mallory', password: 'mallory-password-1' } });
    member = (login.body as { token: string }).token;
  });
  after(async () => {
    delete process.env.NIMBUS_ADMIN_PASSWORD;
    rmSync(link, { force: true });
    await d?.destroy();
  });

  test('a member\'s host paths are refused, and the answer does not tell whether the file exists', async () => {
    const kernel = hostKernel().kernel;
    const answers: string[] = [];
    for (const body of [
      { name: 'steal', kernel, append: 'console=ttyS0 rdinit=/bin/sh', disk: '/etc/shadow' },
      { name: 'steal', kernel: '/etc/shadow' },
      { name: 'steal', kernel: '/etc/no-such-file' },
      { name: 'steal', kernel: 'k', initrd: '/boot/../etc/shadow' },
    ]) {
      const r = await call(tcp(), 'POST', '/vms?project=tenant', { token: member, body });
      assert.equal(r.status, 403, r.text);
      answers.push(r.text.replace(/"(kernel|initrd|disk)"/, 'FIELD'));
    }
    assert.equal(new Set(answers.slice(1, 3)).size, 1, `an existing and a missing file get the same answer: ${answers.join('\n')}`);
    const left = await call(tcp(), 'GET', '/vms?project=tenant&all=true', { token: member });
    assert.deepEqual(left.body, [], 'nothing was created');
  });

  test('a member boots from kernel and initrd images it imported, and sees no host path', async () => {
    const guest = await buildTestGuest();
    for (const [name, type, file] of [['vmlinuz', 'kernel', guest.kernel], ['initramfs', 'initrd', guest.initrd]] as const) {
      const r = await call(tcp(), 'POST', `/disk-images?project=tenant&name=${name}&type=${type}`, { token: member, raw: readFileSync(file) });
      assert.equal(r.status, 201, r.text);
      assert.equal((r.body as { format: string }).format, type);
    }
    // a file that is not what it claims is refused by its content
    const bogus = await call(tcp(), 'POST', '/disk-images?project=tenant&name=bogus&type=kernel', { token: member, raw: Buffer.from('#!/bin/sh\necho not a kernel\n') });
    assert.equal(bogus.status, 400, bogus.text);
    assert.match(bogus.text, /not a kernel/);
    // a kernel is no root disk, nor an initrd a kernel
    const wrongKind = await call(tcp(), 'POST', '/vms?project=tenant', { token: member, body: { name: 'wrong', image: 'vmlinuz' } });
    assert.equal(wrongKind.status, 400, wrongKind.text);
    assert.match(wrongKind.text, /is a kernel, not a disk/);

    const created = await call(tcp(), 'POST', '/vms?project=tenant', { token: member, body: { name: 'tenant-vm', kernel: 'vmlinuz', initrd: 'initramfs', append: guest.append } });
    assert.equal(created.status, 201, created.text);
    const inspect = await call(tcp(), 'GET', '/vms/tenant-vm?project=tenant', { token: member });
    assert.equal(inspect.status, 200, inspect.text);
    const cfg = (inspect.body as { config: Record<string, unknown> }).config;
    assert.equal(cfg.kernel, 'vmlinuz');
    assert.equal(cfg.initrd, 'initramfs');
    assert.doesNotMatch(inspect.text, new RegExp(d.home.replaceAll('/', '\\/')), 'no path of the daemon\'s home is shown to a member');
    assert.doesNotMatch(inspect.text, /"argv"|qmpSocket|consoleLog/);
    // the administrator sees where it lives
    const asAdmin = await call(sock(), 'GET', `/vms/${(created.body as { id: string }).id}`);
    assert.match(asAdmin.text, /blobs\/sha256\//);
    // and QEMU boots the guest from the images' blobs
    assert.equal((await call(tcp(), 'POST', '/vms/tenant-vm/start?project=tenant', { token: member })).status, 200);
    await waitFor('the guest booted from the images', async () => ((await call(tcp(), 'GET', '/vms/tenant-vm/logs?project=tenant', { token: member })).text.includes(READY_MARKER) ? true : undefined), 90_000, 250);
    assert.equal((await call(tcp(), 'POST', '/vms/tenant-vm/kill?project=tenant', { token: member, body: {} })).status, 200);
    // an image a VM boots from stays until the VM goes
    const rm = await call(tcp(), 'DELETE', '/disk-images/vmlinuz?project=tenant', { token: member });
    assert.equal(rm.status, 409, rm.text);
    assert.equal((await call(tcp(), 'DELETE', '/vms/tenant-vm?project=tenant&force=true', { token: member })).status, 204);
    assert.equal((await call(tcp(), 'DELETE', '/disk-images/vmlinuz?project=tenant', { token: member })).status, 204);
  });

  test('an administrator\'s paths must resolve, symlinks and all, inside the allowed directories', async () => {
    const guest = await buildTestGuest();
    const ok = await call(sock(), 'POST', '/vms', { body: { name: 'admin-vm', kernel: guest.kernel, initrd: guest.initrd } });
    assert.equal(ok.status, 201, ok.text);
    assert.equal((await call(sock(), 'DELETE', '/vms/admin-vm')).status, 204);
    symlinkSync('/etc/shadow', link);
    const escapes = [
      { kernel: '/etc/shadow' },
      { kernel: '/etc/no-such-file' },
      { kernel: '/boot/../etc/shadow' },
      { kernel: link },
      { kernel: guest.kernel, disk: '/etc/shadow' },
      { kernel: '/boot' },
    ];
    const messages = new Set<string>();
    for (const body of escapes) {
      const r = await call(sock(), 'POST', '/vms', { body: { name: 'escape', ...body } });
      assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
      messages.add((r.body as { error: { message: string } }).error.message.replace(/"[^"]*"/, 'PATH').replace(/^\w+:/, 'FIELD:'));
    }
    assert.equal(messages.size, 1, `one answer whatever the reason: ${[...messages].join('\n')}`);
    assert.equal(((await call(sock(), 'GET', '/vms?all=true')).body as unknown[]).length, 0, 'nothing was created');
  });

  test('host facts and host-wide counts are for administrators only (finding 7)', async () => {
    // a VM of the administrator's on the embedded agent: a member must not count it
    const guest = await buildTestGuest();
    assert.equal((await call(sock(), 'POST', '/vms', { body: { name: 'admins-vm', kernel: guest.kernel, initrd: guest.initrd } })).status, 201);
    try {
      const info = await call(tcp(), 'GET', '/info', { token: member });
      assert.equal(info.status, 200, info.text);
      const body = info.body as { home?: string; agent: Record<string, unknown>; vms: { total: number } };
      assert.equal(body.home, undefined);
      for (const k of ['hostname', 'kernel', 'cgroupLayout', 'memoryBytes', 'warmPool', 'removals']) assert.equal(body.agent[k], undefined, `agent.${k} hidden`);
      assert.doesNotMatch(info.text, new RegExp(d.home.replaceAll('/', '\\/')));
      assert.equal(body.vms.total, 0, 'the member counts only VMs it can read');
      const adminInfo = (await call(sock(), 'GET', '/info')).body as { home: string; agent: { hostname: string }; vms: { total: number } };
      assert.equal(adminInfo.home, d.home);
      assert.ok(adminInfo.agent.hostname);
      assert.equal(adminInfo.vms.total, 1);
      const agents = (await call(tcp(), 'GET', '/agents', { token: member })).body as { name: string; vms: number }[];
      assert.equal(agents.find((a) => a.name === 'local')?.vms, 0);
      assert.equal(((await call(sock(), 'GET', '/agents')).body as { name: string; vms: number }[]).find((a) => a.name === 'local')?.vms, 1);
    } finally {
      assert.equal((await call(sock(), 'DELETE', '/vms/admins-vm')).status, 204);
    }
  });

  test('a daemon with no allowed directory refuses every host path, even to its administrator', async () => {
    const bare = await startDaemonProcess([], { NIMBUS_VM_HOST_DIRS: '' });
    try {
      const r = await call({ socketPath: bare.socket }, 'POST', '/vms', { body: { name: 'x', kernel: hostKernel().kernel } });
      assert.equal(r.status, 400, r.text);
      assert.match(r.text, /--vm-host-dir/);
    } finally {
      await bare.destroy();
    }
  });
});
