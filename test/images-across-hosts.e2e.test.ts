/**
 * Images carried between hosts, end to end: a real nimbusd (control plane and embedded agent
 * "local") and a second agent (`nimbusd agent` in a network namespace of its own, joined with a
 * token, as in hosts.e2e.test.ts). No registry: `nimbus image import` loads an archive on the
 * control plane, and a container pinned to the second host runs from it, its image carried there
 * blob by blob over the agent protocol and unpacked by that agent. A second image, tagged with a
 * registry nobody serves, is carried too once the pull fails. A VM whose kernel and initrd are
 * images of the image service boots on the second host from that host's copies.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { run } from '../src/core/exec.js';
import { startAgentInNamespace, removeAllInstances, secondHost, type NamespaceAgent, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { qemuUnder } from './helpers/qemu.js';
import { buildTestGuest, READY_MARKER } from '../scripts/fixtures/guest.js';
import { MEDIA, blobOf, buildTestImages, makeTar, manifestOf, writeOciLayoutTar, type TestImages } from '../scripts/fixtures/images.js';

const AGENT = 'host-b';

interface Container { id: string; name: string; status: string; host: string; pid: number | null }


/** An OCI layout tar of one image (a manifest straight from index.json), named `name` when given. */
async function singleImageTar(path: string, manifest: ReturnType<typeof blobOf>, blobs: Array<ReturnType<typeof blobOf>>, name?: string): Promise<void> {
  const index = {
    schemaVersion: 2, mediaType: MEDIA.index,
    manifests: [{ mediaType: MEDIA.manifest, digest: manifest.digest, size: manifest.size, ...(name ? { annotations: { 'io.containerd.image.name': name } } : {}) }],
  };
  await writeFile(path, await makeTar([
    { name: 'oci-layout', type: 'file', content: '{"imageLayoutVersion":"1.0.0"}' },
    { name: 'index.json', type: 'file', content: JSON.stringify(index) },
    ...[manifest, ...blobs].map((b) => ({ name: `blobs/sha256/${b.digest.slice(7)}`, type: 'file' as const, content: b.data })),
  ]));
}


let d: DaemonProcess | undefined;
let host2: SecondHost | undefined;
let b: NamespaceAgent | undefined;
let images: TestImages;
let work: string;

const cliOk = (args: string[]): Promise<string> => d!.cliOk(args);
const inspect = async (name: string): Promise<Container> => (JSON.parse(await cliOk(['inspect', name])) as Container[])[0]!;

before(async () => {
  images = await buildTestImages();
  work = mkdtempSync(join(tmpdir(), 'nimbus-carry-e2e-'));
  host2 = await secondHost({ ns: 'carry', link: 'nca' });
});
after(async () => {
  await host2?.remove();
  rmSync(work, { recursive: true, force: true });
});

describe('images carried to the host a container is placed on', { concurrency: false }, () => {
  before(async () => {
    d = await startDaemonProcess();
    b = await startAgentInNamespace(d, host2!, { homePrefix: 'nimbus-carry-agent' });
  });
  after(async () => {
    try {
      await removeAllInstances(d);
    } finally {
      const qemu = b ? qemuUnder(b.home) : [];
      for (const pid of qemu) process.kill(pid, 'SIGKILL');
      if (b) assert.deepEqual(await b.destroy(), [], 'no mounts left on the agent');
      await d?.destroy();
      assert.deepEqual(qemu, [], 'no QEMU left on the agent');
    }
  });

  test('an image imported from an archive (no name, no registry) runs on the second host: carried there, verified and unpacked by it', async () => {
    const archive = join(work, 'untagged.tar');
    await writeOciLayoutTar(images, archive, '');
    const loaded = await cliOk(['image', 'import', archive]);
    const id = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(loaded)?.[1];
    assert.equal(id, images.amd64.manifest.digest, loaded);

    await cliOk(['run', '-d', '--name', 'carried', '--host', AGENT, '--network', 'none', id!, 'sh', '-c', 'echo hello-from-a-carried-image; cat /etc/nimbus-release; exec sleep 600']);
    const c = await inspect('carried');
    assert.deepEqual([c.host, c.status], [AGENT, 'running']);
    const logs = await waitFor('its output', async () => {
      const out = await cliOk(['logs', 'carried']);
      return out.includes('nimbus test image 1') ? out : undefined;
    });
    assert.match(logs, /hello-from-a-carried-image/);
    // the blobs are in the agent's own content store, byte for byte, and the image is recorded there
    for (const x of [images.amd64.manifest, images.amd64.config, ...images.amd64.layers]) {
      const file = join(b!.home, 'content', 'blobs', 'sha256', x.digest.slice(7));
      assert.ok(existsSync(file), `${x.digest} on ${AGENT}`);
      assert.deepEqual(readFileSync(file), x.data);
    }
    assert.deepEqual((await d!.api<{ hosts: string[] }>('GET', `/images/${id!.slice(7)}`)).body.hosts, [AGENT, 'local']);
    assert.equal((await run('find', [join(b!.home, 'content', 'ingest'), '-type', 'f'])).stdout.trim(), '', 'nothing half-written on the agent');
  });

  test('an image tagged with a registry nobody serves: the pull fails on the second host, so it is carried', async () => {
    // one layer of the test image under another config: a new manifest, a layer the host has
    const layer = images.amd64.layers[0]!;
    const config = blobOf(Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', config: { Cmd: ['sh'], Env: ['CARRIED=yes', 'PATH=/bin'] }, rootfs: { type: 'layers', diff_ids: [images.amd64.diffIds[0]] },
    })), MEDIA.config);
    const manifest = manifestOf(config, [layer]);
    const archive = join(work, 'tagged.tar');
    await singleImageTar(archive, manifest, [config, layer], 'localhost:1/nimbus-test/carried:1');
    assert.match(await cliOk(['image', 'import', archive]), /Loaded image: localhost:1\/nimbus-test\/carried:1/);
    await cliOk(['run', '-d', '--name', 'tagged', '--host', AGENT, '--network', 'none', 'localhost:1/nimbus-test/carried:1', 'sh', '-c', 'echo carried=$CARRIED; exec sleep 600']);
    assert.equal((await inspect('tagged')).host, AGENT);
    await waitFor('its output', async () => ((await cliOk(['logs', 'tagged'])).includes('carried=yes') ? true : undefined));
    assert.ok(existsSync(join(b!.home, 'content', 'blobs', 'sha256', manifest.digest.slice(7))), 'the new manifest carried');
    await cliOk(['rm', '-f', 'tagged']);
    await cliOk(['rm', '-f', 'carried']);
  });

  const canBootVms = existsSync('/dev/kvm') || process.env.NIMBUS_E2E_TCG === '1';
  test('a VM from a kernel and initrd of the image service boots on the second host, from its own copies', { skip: !canBootVms && 'no /dev/kvm (set NIMBUS_E2E_TCG=1 to boot under TCG)' }, async () => {
    const guest = await buildTestGuest();
    await cliOk(['image', 'import-disk', '--type', 'kernel', 'guest-kernel', guest.kernel]);
    await cliOk(['image', 'import-disk', '--type', 'initrd', 'guest-initrd', guest.initrd]);
    await cliOk(['vm', 'run', '--name', 'far-vm', '--memory', '192m', '--host', AGENT, '--kernel', 'guest-kernel', '--initrd', 'guest-initrd', '--append', guest.append]);
    const vm = (JSON.parse(await cliOk(['vm', 'inspect', 'far-vm'])) as Array<{ agent: string; config: { kernel: string; initrd: string } }>)[0]!;
    assert.equal(vm.agent, AGENT);
    for (const [role, file] of [['kernel', guest.kernel], ['initrd', guest.initrd]] as const) {
      const path = vm.config[role];
      assert.ok(path.startsWith(join(b!.home, 'content', 'blobs', 'sha256')), `the ${role} is the second host's copy: ${path}`);
      assert.deepEqual(readFileSync(path), readFileSync(file), `the ${role} arrived intact`);
    }
    await waitFor('the readiness marker', async () => ((await cliOk(['vm', 'logs', 'far-vm'])).includes(READY_MARKER) ? true : undefined), 120_000);
    assert.equal(qemuUnder(b!.home).length, 1, 'its QEMU runs under the second host\'s agent');
    await cliOk(['vm', 'rm', '-f', 'far-vm']);
  });
});
