// The InstanceDriver conformance suite against secure containers: OCI rootfs in
// microVMs restored from a template, real QEMU (TCG here).
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buildTestImages } from '../../../../scripts/fixtures/images.js';
import { GUEST_CACHE_DIR, buildTestGuest } from '../../../../scripts/fixtures/guest.js';
import { applyLayer } from '../../layers/apply-layer.js';
import { mountsUnder } from '../../snapshots/mount.js';
import { instanceDriverConformance } from '../instance-driver-conformance.js';
import { qemuPidsUnder, testAccelerator } from '../vm/vm-test-env.js';
import { SecureDriver } from './secure-driver.js';

let base: string | undefined;
after(async () => {
  if (!base) return;
  const left = await qemuPidsUnder(base);
  for (const pid of left) process.kill(pid, 'SIGKILL');
  const mounts = await mountsUnder(base);
  await rm(base, { recursive: true, force: true });
  assert.deepEqual(left, [], 'no QEMU outlives the suite');
  assert.deepEqual(mounts, [], 'no mount outlives the suite');
});

instanceDriverConformance('secure (OCI rootfs in a microVM)', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-secure-conf-'));
  base = dir;
  const image = path.join(dir, 'image');
  await mkdir(image);
  for (const l of (await buildTestImages()).amd64.layers) await applyLayer(image, Readable.from([l.data]), { mediaType: l.mediaType, mode: 'native' });
  const accel = (await testAccelerator(await buildTestGuest(GUEST_CACHE_DIR))).accel;
  const open = () => new SecureDriver({ stateDir: path.join(dir, 'state'), accel, guestCacheDir: GUEST_CACHE_DIR });
  return {
    driver: open(),
    makeSpec: async (id, args, over = {}) => {
      const rw = path.join(dir, `rw-${id}`);
      await mkdir(path.join(rw, 'upper'), { recursive: true });
      await mkdir(path.join(rw, 'work'), { recursive: true });
      return {
        id, name: id,
        rootfs: [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${image}`, `upperdir=${rw}/upper`, `workdir=${rw}/work`] }],
        process: { args, env: [], cwd: '/', user: '0' },
        resources: {},
        ...over,
      };
    },
    reopen: async () => open(),
    teardown: async () => undefined,
    capabilities: { exec: false, signals: false, separateStderr: false, minMemoryBytes: 128 << 20, waitScale: 8 },
  };
});
