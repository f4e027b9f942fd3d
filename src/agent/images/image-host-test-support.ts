// A real image host for tests: its own content store and snapshots in a directory, the native
// snapshotter (no mounts), no containers.
import path from 'node:path';
import { DiskSpace } from '../content/disk-space.js';
import { LocalContentStore } from '../content/local-content-store.js';
import { NativeSnapshotter } from '../snapshots/native.js';
import { LocalImageHost } from './image-host.js';

export interface TestImageHost {
  host: LocalImageHost;
  content: LocalContentStore;
  snapshotter: NativeSnapshotter;
}

/** `prepare` sees the content store and snapshotter before the host is made (to wrap their methods). */
export function testImageHost(dir: string, o: { warmUp?: boolean; prepare?: (parts: Omit<TestImageHost, 'host'>) => void } = {}): TestImageHost {
  const content = new LocalContentStore(path.join(dir, 'content'));
  const snapshotter = new NativeSnapshotter(path.join(dir, 'snapshots'));
  o.prepare?.({ content, snapshotter });
  const host = new LocalImageHost({
    options: { agentName: 'local', home: dir, tmpDir: dir, containersDir: dir, imageMaxBytes: 1 << 30, layerMaxBytes: 1 << 30, allowedRegistries: [] },
    content, snapshotter,
    room: () => new DiskSpace({ content: dir, snapshots: dir }),
    releaseLayers: async () => undefined,
    withWritableLayer: () => Promise.reject(new Error('no containers here')),
  }, { warmUp: o.warmUp ?? false });
  return { host, content, snapshotter };
}
