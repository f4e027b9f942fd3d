/** A test daemon with the busybox test image pulled from a loopback registry of its own. */
import assert from 'node:assert/strict';
import { startDaemonProcess, type DaemonProcess } from './daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './registry-images.js';

export interface DaemonWithImage {
  d: DaemonProcess;
  registry: TestRegistry;
  /** The pulled image's reference. */
  image: string;
  /** Destroys the daemon (and what it ran), then stops the registry. */
  stop(): Promise<void>;
}

/** `env`: added to the daemon's environment. */
export async function startDaemonWithImage(env: Record<string, string> = {}): Promise<DaemonWithImage> {
  const registry = await startTestRegistryWithImages();
  const image = `${registry.host}/nimbus-test/busybox:latest`;
  let d: DaemonProcess | undefined;
  const stop = async () => {
    await d?.destroy();
    await registry.stop();
  };
  try {
    d = await startDaemonProcess([], env);
    const r = await d.cli(['image', 'pull', image]);
    assert.equal(r.code, 0, r.stderr);
    return { d, registry, image, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
