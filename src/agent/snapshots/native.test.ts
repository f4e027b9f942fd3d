import { NativeSnapshotter } from './native.js';
import { snapshotterConformance } from './snapshotter-conformance.js';

snapshotterConformance('native', async (root) => new NativeSnapshotter(root));
