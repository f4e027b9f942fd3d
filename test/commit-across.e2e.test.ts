/**
 * docker commit of a container on another host: a real nimbusd (control plane and embedded agent
 * "local") and a second agent (`nimbusd agent` in a network namespace of its own, joined with a
 * token). The container runs on host-b; `nimbus commit` makes the image there over agent protocol
 * 9 (commitContainer) and carries it to the embedded agent, so it runs on "local" too; `nimbus
 * export` of the container on host-b is its merged filesystem.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startAgentInNamespace, removeAllInstances, secondHost, type NamespaceAgent, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { buildTestImages, writeOciLayoutTar, type TestImages } from '../scripts/fixtures/images.js';

const AGENT = 'host-b';

let d: DaemonProcess | undefined;
let host2: SecondHost | undefined;
let b: NamespaceAgent | undefined;
let images: TestImages;
let work: string;

const cliOk = (args: string[]): Promise<string> => d!.cliOk(args);
const inspect = async (name: string) => (JSON.parse(await cliOk(['inspect', name])) as Array<{ host: string; status: string }>)[0]!;

before(async () => {
  images = await buildTestImages();
  work = mkdtempSync(join(tmpdir(), 'nimbus-commit-across-'));
  host2 = await secondHost({ ns: 'commit', link: 'ncm' });
});
after(async () => {
  await host2?.remove();
  rmSync(work, { recursive: true, force: true });
});

describe('docker commit of a container on another host', { concurrency: false, timeout: 300_000 }, () => {
  before(async () => {
    d = await startDaemonProcess();
    b = await startAgentInNamespace(d, host2!, { homePrefix: 'nimbus-commit-agent' });
  });
  after(async () => {
    try {
      await removeAllInstances(d);
    } finally {
      if (b) assert.deepEqual(await b.destroy(), [], 'no mounts left on the agent');
      await d?.destroy();
    }
  });

  test('committed on host-b over protocol 9, carried to the embedded agent: it runs on both; exported from host-b', async () => {
    const archive = join(work, 'base.tar');
    await writeOciLayoutTar(images, archive, 'docker.io/nimbus-test/base:1');
    await cliOk(['image', 'import', archive]);
    await cliOk(['run', '-d', '--name', 'far', '--host', AGENT, '--network', 'none', 'nimbus-test/base:1', 'sh', '-c',
      'echo far > /far.txt && rm /etc/nimbus-release && exec sleep 600']);
    assert.equal((await inspect('far')).host, AGENT);
    await waitFor('its changes', async () => ((await d!.cli(['exec', 'far', 'cat', '/far.txt'])).stdout.includes('far') ? true : undefined));

    const id = (await cliOk(['commit', '-c', 'CMD ["cat", "/far.txt"]', 'far', 'nimbus-test/far:1'])).trim();
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    assert.equal((await inspect('far')).status, 'running', 'thawed on host-b');
    const img = await d!.api<{ hosts: string[] }>('GET', `/images/${id.slice(7)}`);
    assert.deepEqual([...img.body.hosts].sort(), [AGENT, 'local'], 'made on host-b, carried to the embedded agent');
    for (const host of ['local', AGENT]) {
      await cliOk(['run', '--name', `from-${host}`, '--host', host, '--network', 'none', 'nimbus-test/far:1']);
      const logs = await waitFor(`the run on ${host}`, async () => {
        const out = await cliOk(['logs', `from-${host}`]);
        return out.includes('far') ? out : undefined;
      });
      assert.equal(logs.trim(), 'far');
      await cliOk(['run', '--name', `gone-${host}`, '--host', host, '--network', 'none', 'nimbus-test/far:1', 'sh', '-c', 'test -e /etc/nimbus-release && echo present || echo deleted']);
      assert.equal((await waitFor('its output', async () => (await cliOk(['logs', `gone-${host}`])).trim() || undefined)), 'deleted');
    }

    const out = join(work, 'far.tar');
    await cliOk(['export', 'far', '-o', out]);
    const names = (await run('tar', ['-tf', out])).stdout.split('\n').map((n) => n.replace(/^\.\//, ''));
    assert.ok(names.includes('far.txt') && names.includes('bin/busybox') && !names.includes('etc/nimbus-release'), names.slice(0, 30).join(' '));
  });
});
