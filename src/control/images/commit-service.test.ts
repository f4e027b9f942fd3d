/**
 * docker commit in the control plane (commit-service.ts): the config the host is sent is the
 * container's over its image's, then the --change lines; a bad change or a secure container is
 * refused before the host is asked; the image is recorded on the container's host.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hasCode } from '../../core/errors.js';
import type { AgentImage, CommitRequest } from '../../agent/agent.js';
import type { ContainerRecord, ImageRecord } from '../../store/records.js';
import { CommitService, containerRuntimeConfig } from './commit-service.js';

const IMAGE: ImageRecord = {
  digest: `sha256:${'a'.repeat(64)}`, projectId: 'p1', indexDigest: null, configDigest: `sha256:${'b'.repeat(64)}`,
  config: { config: { Cmd: ['sh'], Env: ['PATH=/bin', 'MODE=image'], Labels: { from: 'image' }, WorkingDir: '/' } },
  layers: [], chainId: `sha256:${'c'.repeat(64)}`, size: 1, createdAt: new Date(0).toISOString(),
};

function container(over: Partial<ContainerRecord['config']> = {}, runtime = 'runc'): ContainerRecord {
  return {
    id: 'c'.repeat(64), name: 'box', projectId: 'p1', imageDigest: IMAGE.digest, status: 'running', runtime, pid: 1, exitCode: null, oomKilled: false,
    restartCount: 0, stoppedByUser: false, createdAt: '', startedAt: null, finishedAt: null, warnings: [], host: 'host-b',
    config: { image: 'busybox', env: ['MODE=run', 'EXTRA=1'], restart: { name: 'no' }, autoRemove: false, labels: { team: 'a' }, ...over },
  };
}

test('the container\'s settings over its image\'s: env merged by key, its command, labels added', () => {
  const cfg = containerRuntimeConfig(IMAGE, container({ cmd: ['sleep', '600'], workdir: '/srv', user: '1000' }));
  assert.deepEqual(cfg.Env, ['PATH=/bin', 'MODE=run', 'EXTRA=1']);
  assert.deepEqual(cfg.Cmd, ['sleep', '600']);
  assert.deepEqual(cfg.Labels, { from: 'image', team: 'a' });
  assert.equal(cfg.WorkingDir, '/srv');
  assert.equal(cfg.User, '1000');
  // --entrypoint without a command clears the image's CMD, as docker run does
  const ep = containerRuntimeConfig(IMAGE, container({ entrypoint: ['/app'] }));
  assert.deepEqual([ep.Entrypoint, ep.Cmd], [['/app'], null]);
  assert.deepEqual(IMAGE.config.config?.Env, ['PATH=/bin', 'MODE=image'], 'the image record is not modified');
});

function service(c: ContainerRecord) {
  const sent: Array<[string, CommitRequest]> = [];
  const recorded: Array<{ tag: string | undefined; host: string }> = [];
  const agent = {
    commitContainer: async (id: string, req: CommitRequest): Promise<AgentImage> => {
      sent.push([id, req]);
      return { manifestDigest: `sha256:${'d'.repeat(64)}`, configDigest: `sha256:${'e'.repeat(64)}`, config: { config: req.config }, layers: [], chainId: `sha256:${'f'.repeat(64)}`, size: 2 };
    },
  };
  const store = { images: { ref: async () => IMAGE, list: async () => [IMAGE] } };
  const containers = { get: async (ref: string, scope: { projectId: string }) => {
    if (ref !== 'box' || scope.projectId !== 'p1') throw Object.assign(new Error(`no such container: ${ref}`), { code: 'NotFound' });
    return c;
  } };
  const images = {
    normalize: (r: string) => `docker.io/library/${r.includes(':') ? r : `${r}:latest`}`,
    recordCommitted: async (img: AgentImage, _p: string, tag: string | undefined, host: string) => {
      recorded.push({ tag, host });
      return { ...img, id: img.manifestDigest, digest: img.manifestDigest, tags: tag ? [tag] : [] };
    },
  };
  const hosts = { localName: 'local', names: () => ['local', 'host-b'], has: () => true, get: (h: string) => {
    assert.equal(h, 'host-b', 'the container\'s own host');
    return agent;
  } };
  const events = { publish: () => undefined };
  type Args = ConstructorParameters<typeof CommitService>;
  const svc = new CommitService(store as unknown as Args[0], containers as unknown as Args[1], images as unknown as Args[2], hosts as unknown as Args[3], events as unknown as Args[4]);
  return { svc, sent, recorded };
}

test('commit: the host gets the config with the changes, pause on by default; the image is recorded on that host, tagged', async () => {
  const { svc, sent, recorded } = service(container({ cmd: ['sleep', '600'] }));
  await svc.commit({ container: 'box', projectId: 'p1', reference: 'mine', changes: ['CMD ["cat"]', 'ENV MODE=commit'], comment: 'm', author: 'a' });
  assert.equal(sent.length, 1);
  const [id, req] = sent[0]!;
  assert.equal(id, 'c'.repeat(64));
  assert.equal(req.parentManifest, IMAGE.digest);
  assert.deepEqual(req.config.Cmd, ['cat']);
  assert.deepEqual(req.config.Env, ['PATH=/bin', 'MODE=commit', 'EXTRA=1']);
  assert.equal(req.pause, true);
  assert.deepEqual([req.comment, req.author, req.createdBy], ['m', 'a', 'sleep 600']);
  assert.deepEqual(recorded, [{ tag: 'docker.io/library/mine:latest', host: 'host-b' }]);
});

test('commit: a bad change, a secure container or another project\'s container is refused before the host is asked', async () => {
  const a = service(container());
  await assert.rejects(a.svc.commit({ container: 'box', projectId: 'p1', changes: ['RUN rm -rf /'] }), (e: unknown) => hasCode(e, 'InvalidArgument'));
  await assert.rejects(a.svc.commit({ container: 'box', projectId: 'p2' }), /no such container/);
  const b = service(container({ runtime: 'vm' }, 'vm'));
  await assert.rejects(b.svc.commit({ container: 'box', projectId: 'p1' }), (e: unknown) => hasCode(e, 'Conflict') && /secure container/.test(String(e)));
  assert.equal(a.sent.length + b.sent.length, 0);
});
