import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { AgentImage } from '../agent.js';
import { testImageHost } from './image-host-test-support.js';
import { warmPullPath, type ScratchPuller } from './pull-warmup.js';

/** Pulls with a real image host on the scratch directory, keeping what it pulled. */
function recordingPuller(pulled: AgentImage[], dirs: string[]): ScratchPuller {
  return (dir) => {
    dirs.push(dir);
    const { host } = testImageHost(dir);
    return { pull: async (ref) => pulled.push(await host.pullImage(ref, { allowedRegistries: [ref.split('/')[0]!] }, () => undefined)), close: () => host.close() };
  };
}

describe('warmPullPath', () => {
  it('pulls a sample image from a loopback server of its own through a scratch image host, then leaves nothing in the tmp dir; an earlier run\'s scratch dir is swept', async () => {
    const tmp = await mkdtemp(path.join(tmpdir(), 'nimbus-warmup-'));
    try {
      // what a daemon killed during its warm-up leaves; and a file of someone else's that must stay
      await mkdir(path.join(tmp, '.pull-warmup-left'));
      await writeFile(path.join(tmp, '.pull-warmup-left', 'f'), 'x');
      await writeFile(path.join(tmp, 'other'), 'kept');
      const pulled: AgentImage[] = [];
      const dirs: string[] = [];
      const steps = await warmPullPath(tmp, recordingPuller(pulled, dirs));
      assert.deepEqual(steps.map((s) => [s.step, s.ok, s.error]), [['probe layer tools', true, undefined], ['hash on the digest thread', true, undefined], ['pull a sample image', true, undefined]]);
      assert.equal(pulled.length, 1, 'one pull');
      assert.match(pulled[0]!.reference ?? '', /^127\.0\.0\.1:\d+\/nimbus\/pull-warm-up:latest$/);
      assert.equal(pulled[0]!.layers.length, 2, 'its two layers unpacked (a gzip one, an uncompressed one)');
      assert.equal(dirs.length, 1);
      assert.ok(dirs[0]!.startsWith(path.join(tmp, '.pull-warmup-')), `scratch under the tmp dir: ${dirs[0]}`);
      assert.deepEqual(await readdir(tmp), ['other']);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });

  it('never throws: a pull that fails is one failed step, and its scratch dir goes too', async () => {
    const tmp = await mkdtemp(path.join(tmpdir(), 'nimbus-warmup-'));
    try {
      const steps = await warmPullPath(tmp, () => ({ pull: () => Promise.reject(new Error('no room')), close: async () => undefined }));
      assert.deepEqual(steps.map((s) => [s.step, s.ok, s.error]), [['probe layer tools', true, undefined], ['hash on the digest thread', true, undefined], ['pull a sample image', false, 'no room']]);
      assert.deepEqual(await readdir(tmp), []);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });

  it('never throws: a tmp dir that cannot be used only fails the pull step', async () => {
    const steps = await warmPullPath('/nonexistent/nimbus-warmup', recordingPuller([], []));
    assert.equal(steps.find((s) => s.step === 'pull a sample image')?.ok, false);
  });

  it('an image host warms its pull path as it is made, and close() waits for it: the scratch dir is gone', async () => {
    const tmp = await mkdtemp(path.join(tmpdir(), 'nimbus-warmup-'));
    try {
      await testImageHost(tmp, { warmUp: true }).host.close();
      assert.deepEqual((await readdir(tmp)).filter((n) => n.startsWith('.pull-warmup-')), []);
      // the host's own content store got nothing from it
      assert.deepEqual(await readdir(path.join(tmp, 'content')).catch(() => []), []);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});
