/**
 * A nimbusd with the loopback registry's busybox image and two docker CLIs on its Docker API:
 * the administrator in the default project, and the administrator acting in project "other".
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './daemon-process.js';
import { dockerCli, type DockerCli } from './docker-cli.js';
import { startTestRegistryWithImages, type TestRegistry } from './registry-images.js';

export interface DockerTenants {
  d: DaemonProcess;
  registry: TestRegistry;
  /** The busybox test image's reference, pulled by admin. */
  image: string;
  /** A scratch directory of the test's (the clients' configs are in it). */
  home: string;
  admin: DockerCli;
  other: DockerCli;
  /** Destroys the daemon (and what it ran), stops the registry, removes home. */
  stop(): Promise<void>;
}

export async function startDockerTenants(homePrefix: string): Promise<DockerTenants> {
  const home = mkdtempSync(join(tmpdir(), homePrefix));
  let registry: TestRegistry | undefined;
  let d: DaemonProcess | undefined;
  const stop = async () => {
    try {
      await d?.destroy();
    } finally {
      await registry?.stop();
      rmSync(home, { recursive: true, force: true });
    }
  };
  try {
    registry = await startTestRegistryWithImages();
    const image = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
    assert.equal((await d.api('POST', '/projects', { name: 'other' })).status, 201);
    const admin = dockerCli(`${d.home}/docker.sock`, join(home, 'admin'));
    const other = dockerCli(`${d.home}/docker.sock`, join(home, 'other'), { 'X-Nimbus-Project': 'other' });
    await admin.ok(['pull', image]);
    return { d, registry, image, home, admin, other, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
