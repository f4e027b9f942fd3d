/**
 * `nimbus run --runtime vm`: an OCI image in its own microVM, through a real
 * nimbusd, the CLI, QEMU (TCG here) and the image from the loopback registry:
 * output streamed, exit code returned, the container listed with runtime vm,
 * removed without leftovers.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { qemuPidsUnder } from '../src/agent/drivers/vm/vm-test-env.js';

let registry: TestRegistry;
let d: DaemonProcess;
let IMAGE: string;

describe('secure containers end to end', { concurrency: false }, () => {
  before(async () => {
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
    assert.equal((await d.cli(['image', 'pull', '-q', IMAGE])).code, 0);
  });
  after(async () => {
    const home = d?.home;
    await d?.destroy();
    await registry?.stop();
    if (home) assert.deepEqual(await qemuPidsUnder(home), [], 'no QEMU left');
  });

  test('run --runtime vm streams the output and exits with the code; env and workdir honoured', async () => {
    const r = await d.cli(['run', '--name', 'sealed', '--runtime', 'vm', '--env', 'WHO=microvm', '--workdir', '/tmp', IMAGE, 'sh', '-c', 'echo "hello from $WHO in $(pwd)"; cat /etc/nimbus-release; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /hello from microvm in \/tmp\nnimbus test image 1\n/);
    const c = (await d.api<{ runtime: string; status: string; exitCode: number }>('GET', '/containers/sealed')).body;
    assert.deepEqual([c.runtime, c.status, c.exitCode], ['vm', 'exited', 3]);
    assert.equal((await d.cli(['rm', 'sealed'])).code, 0);
    // removal finishes in the background; then nothing of it is left
    for (let i = 0; i < 100 && readdirSync(join(d.home, 'containers/secure')).some((n) => n !== 'vms' && n !== 'guest'); i++) await new Promise((res) => setTimeout(res, 100));
    assert.deepEqual(readdirSync(join(d.home, 'containers/secure')).filter((n) => n !== 'vms' && n !== 'guest'), []);
  });
});
