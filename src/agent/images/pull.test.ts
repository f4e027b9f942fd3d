/**
 * pullImage against an in-process fake registry (node:http on loopback) that
 * serves manifests and blobs from memory: index selection, digest checks,
 * limits, progress, parallelism and what is left in the content store.
 * The real docker-registry is exercised in test/images-pull.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgument, hasCode } from '../../core/errors.js';
import { DiskSpace } from '../content/disk-space.js';
import { LocalContentStore } from '../content/local-content-store.js';
import { MT } from './media-types.js';
import { pullImage, type LayerProgress } from './pull.js';

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Doc {
  body: Buffer;
  type: string;
}

class FakeRegistry {
  manifests = new Map<string, Doc>(); // "repo|ref" → doc (ref = tag or digest)
  blobs = new Map<string, Buffer>();
  blobGets: string[] = [];
  inFlight = 0;
  maxInFlight = 0;
  blobDelayMs = 0;
  /** Serve these bytes instead of the real blob. */
  override = new Map<string, Buffer>();
  host = '';
  private server: Server | undefined;

  blob(data: Buffer | string, mediaType: string) {
    const b = Buffer.from(data);
    const digest = digestOf(b);
    this.blobs.set(digest, b);
    return { mediaType, digest, size: b.length };
  }
  manifest(repo: string, doc: unknown, type: string, tags: string[] = []) {
    const body = Buffer.from(JSON.stringify(doc));
    const digest = digestOf(body);
    for (const ref of [digest, ...tags]) this.manifests.set(`${repo}|${ref}`, { body, type });
    return { mediaType: type, digest, size: body.length };
  }
  image(repo: string, layers: { data: Buffer; mediaType?: string }[], tags: string[] = [], arch = 'amd64') {
    const ls = layers.map((l) => this.blob(l.data, l.mediaType ?? MT.ociLayerGzip));
    const config = this.blob(JSON.stringify({ architecture: arch, os: 'linux', config: { Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: ls.map((l) => l.digest) } }), MT.ociConfig);
    const m = this.manifest(repo, { schemaVersion: 2, mediaType: MT.ociManifest, config, layers: ls }, MT.ociManifest, tags);
    return { manifest: m, config, layers: ls };
  }

  async start() {
    this.server = createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
      if (!m) return void res.writeHead(url.pathname === '/v2/' ? 200 : 404).end();
      const [, repo, kind, ref] = m as unknown as [string, string, string, string];
      if (kind === 'manifests') {
        const d = this.manifests.get(`${repo}|${ref}`);
        if (!d) return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
        res.writeHead(200, { 'content-type': d.type, 'docker-content-digest': digestOf(d.body), 'content-length': d.body.length });
        return void res.end(req.method === 'HEAD' ? undefined : d.body);
      }
      const data = this.override.get(ref) ?? this.blobs.get(ref);
      if (!data) return void res.writeHead(404).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}');
      this.blobGets.push(ref);
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length });
        res.end(data, () => this.inFlight--);
      }, this.blobDelayMs);
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    const a = this.server.address();
    this.host = `127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
    return this;
  }
  stop() {
    return new Promise<void>((r) => {
      this.server?.close(() => r());
      this.server?.closeAllConnections();
    });
  }
}

function setup(t: { after(fn: () => unknown): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-pull-'));
  const reg = new FakeRegistry();
  t.after(async () => {
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, reg, store: new LocalContentStore(dir) };
}

const layerData = (i: number, size = 50_000) => {
  const b = Buffer.alloc(size);
  for (let j = 0; j < size; j++) b[j] = (j * (i + 7)) & 0xff;
  return b;
};

test('pull by tag: index → linux/amd64; everything stored; progress and onLayerReady per layer; a second pull fetches nothing the caller may reuse, and checks the rest', async (t) => {
  const { reg, store } = setup(t);
  const amd = reg.image('app/x', [{ data: layerData(1) }, { data: layerData(2), mediaType: MT.ociLayer }, { data: layerData(3), mediaType: MT.ociLayerZstd }]);
  const arm = reg.image('app/x', [{ data: layerData(9) }], [], 'arm64');
  const idx = reg.manifest('app/x', {
    schemaVersion: 2, mediaType: MT.ociIndex,
    manifests: [{ ...arm.manifest, platform: { os: 'linux', architecture: 'arm64' } }, { ...amd.manifest, platform: { os: 'linux', architecture: 'amd64' } }],
  }, MT.ociIndex, ['latest']);
  await reg.start();

  const events: LayerProgress[] = [];
  const ready: number[] = [];
  let configSeen = false;
  const img = await pullImage(`${reg.host}/app/x`, { allowedRegistries: [reg.host],
    store,
    onProgress: (e) => events.push(e),
    onConfig: (c, layers) => {
      configSeen = true;
      assert.equal(layers.length, 3);
      assert.equal(c.architecture, 'amd64');
    },
    onLayerReady: (i, d) => {
      assert.equal(d.digest, amd.layers[i]!.digest);
      ready.push(i);
    },
  });
  assert.ok(configSeen);
  assert.equal(img.reference, `${reg.host}/app/x:latest`);
  assert.equal(img.indexDigest, idx.digest);
  assert.equal(img.manifestDigest, amd.manifest.digest);
  assert.equal(img.configDigest, amd.config.digest);
  assert.deepEqual(img.layers.map((l) => l.digest), amd.layers.map((l) => l.digest));
  assert.deepEqual(ready.sort(), [0, 1, 2]);
  for (const d of [idx.digest, amd.manifest.digest, amd.config.digest, ...amd.layers.map((l) => l.digest)]) assert.ok(await store.info(d), `${d} stored`);
  assert.equal(await store.info(arm.layers[0]!.digest), undefined, 'other platform not fetched');
  for (const l of amd.layers) {
    const mine = events.filter((e) => e.digest === l.digest).map((e) => e.status);
    assert.equal(mine[0], 'waiting');
    assert.equal(mine.at(-1), 'done');
    assert.ok(mine.includes('verifying'));
    assert.equal(events.filter((e) => e.digest === l.digest).at(-1)!.bytesDone, l.size);
  }

  reg.blobGets = [];
  const again: LayerProgress[] = [];
  const held = new Set([amd.config.digest, ...amd.layers.map((l) => l.digest)]);
  await pullImage(`${reg.host}/app/x:latest`, { allowedRegistries: [reg.host], store, onProgress: (e) => again.push(e), mayReuse: (d) => held.has(d) });
  assert.deepEqual(reg.blobGets, [], 'nothing downloaded twice');
  assert.deepEqual(new Set(again.filter((e) => e.status !== 'waiting').map((e) => e.status)), new Set(['exists']));

  // a caller that does not hold them (another project): the registry sends them again, checked, not stored twice
  reg.blobGets = [];
  const listed = (await store.list()).length;
  await pullImage(`${reg.host}/app/x:latest`, { allowedRegistries: [reg.host], store, mayReuse: (d) => d === amd.layers[0]!.digest });
  assert.deepEqual(reg.blobGets.sort(), [amd.config.digest, amd.layers[1]!.digest, amd.layers[2]!.digest].sort());
  assert.equal((await store.list()).length, listed);
});

test('a blob the host holds is not taken by naming its digest: the registry must send it (a manifest of another\'s layers, served without them, fails)', async (t) => {
  const { reg, store } = setup(t);
  const victim = reg.image('victim/private', [{ data: layerData(21) }, { data: layerData(22) }], ['v1']);
  await reg.start();
  await pullImage(`${reg.host}/victim/private:v1`, { allowedRegistries: [reg.host], store });
  // the attacker's registry: a manifest naming the victim's config and layers, whose bytes it does not have
  for (const d of [victim.config, ...victim.layers]) reg.blobs.delete(d.digest);
  reg.manifest('attacker/x', { schemaVersion: 2, mediaType: MT.ociManifest, config: victim.config, layers: victim.layers }, MT.ociManifest, ['latest']);
  await assert.rejects(pullImage(`${reg.host}/attacker/x:latest`, { allowedRegistries: [reg.host], store }), (e: unknown) => {
    assert.ok(hasCode(e, 'NotFound'), String(e));
    assert.match((e as Error).message, new RegExp(victim.config.digest));
    return true;
  });
  // naming only the layers, with a config of its own: the layers are asked for too
  const own = reg.blob(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: victim.layers.map((l) => l.digest) } }), MT.ociConfig);
  reg.manifest('attacker/y', { schemaVersion: 2, mediaType: MT.ociManifest, config: own, layers: victim.layers }, MT.ociManifest, ['latest']);
  await assert.rejects(pullImage(`${reg.host}/attacker/y:latest`, { allowedRegistries: [reg.host], store }), (e: unknown) => {
    assert.ok(hasCode(e, 'NotFound'), String(e));
    assert.match((e as Error).message, /sha256:[0-9a-f]{64}/);
    return true;
  });
});

test('pull by digest verifies the manifest digest; platform missing lists what there is', async (t) => {
  const { reg, store } = setup(t);
  const img = reg.image('app/y', [{ data: layerData(4) }], ['v1']);
  const arm = reg.image('app/y', [{ data: layerData(5) }], [], 'arm64');
  reg.manifest('app/y', { schemaVersion: 2, mediaType: MT.ociIndex, manifests: [{ ...arm.manifest, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }] }, MT.ociIndex, ['armonly']);
  const liar = `sha256:${'e'.repeat(64)}`;
  reg.manifests.set(`app/y|${liar}`, reg.manifests.get(`app/y|${img.manifest.digest}`)!);
  await reg.start();

  const pulled = await pullImage(`${reg.host}/app/y@${img.manifest.digest}`, { allowedRegistries: [reg.host], store });
  assert.equal(pulled.manifestDigest, img.manifest.digest);
  assert.equal(pulled.indexDigest, undefined);
  assert.equal(pulled.reference, `${reg.host}/app/y@${img.manifest.digest}`);
  await assert.rejects(pullImage(`${reg.host}/app/y@${liar}`, { allowedRegistries: [reg.host], store }), { code: 'DataLoss', message: new RegExp(liar) });
  assert.equal(await store.info(liar), undefined);
  await assert.rejects(pullImage(`${reg.host}/app/y:armonly`, { allowedRegistries: [reg.host], store }), { code: 'NotFound', message: /no linux\/amd64 image \(available: linux\/arm64\/v8\)/ });
  await assert.rejects(pullImage(`${reg.host}/app/y:nope`, { allowedRegistries: [reg.host], store }), { code: 'NotFound', message: /app\/y nope/ });
});

test('refused: schema 1, oversized manifest, unknown layer type, non-sha256 digest; tampered layer → DataLoss, nothing kept', async (t) => {
  const { dir, reg, store } = setup(t);
  reg.manifest('old/one', { schemaVersion: 1, name: 'old/one', fsLayers: [] }, MT.dockerSchema1Signed, ['latest']);
  reg.manifest('old/two', { schemaVersion: 1, name: 'old/two', fsLayers: [] }, 'application/json', ['latest']);
  reg.manifest('big/one', { schemaVersion: 2, mediaType: MT.ociManifest, pad: 'x'.repeat(4 * 1024 * 1024 + 10) }, MT.ociManifest, ['latest']);
  const weird = reg.blob('w', 'application/vnd.example.weird');
  const cfg = reg.blob('{}', MT.ociConfig);
  reg.manifest('weird/one', { schemaVersion: 2, mediaType: MT.ociManifest, config: cfg, layers: [weird] }, MT.ociManifest, ['latest']);
  reg.manifest('weird/two', { schemaVersion: 2, mediaType: MT.ociManifest, config: cfg, layers: [{ ...weird, mediaType: MT.ociLayer, digest: 'sha512:' + 'a'.repeat(128) }] }, MT.ociManifest, ['latest']);
  const good = reg.image('app/t', [{ data: layerData(6) }, { data: layerData(7, 400_000) }], ['latest']);
  const bad = Buffer.from(reg.blobs.get(good.layers[1]!.digest)!);
  bad[1000] = bad[1000]! ^ 0xff;
  reg.override.set(good.layers[1]!.digest, bad);
  await reg.start();

  await assert.rejects(pullImage(`${reg.host}/old/one`, { allowedRegistries: [reg.host], store }), { code: 'InvalidArgument', message: /schema 1/ });
  await assert.rejects(pullImage(`${reg.host}/old/two`, { allowedRegistries: [reg.host], store }), { code: 'InvalidArgument', message: /schema 1/ });
  await assert.rejects(pullImage(`${reg.host}/big/one`, { allowedRegistries: [reg.host], store }), { code: 'InvalidArgument', message: /4194304/ });
  await assert.rejects(pullImage(`${reg.host}/weird/one`, { allowedRegistries: [reg.host], store }), { code: 'InvalidArgument', message: /unsupported layer media type application\/vnd\.example\.weird/ });
  await assert.rejects(pullImage(`${reg.host}/weird/two`, { allowedRegistries: [reg.host], store }), { code: 'InvalidArgument', message: /sha512/ });

  await assert.rejects(pullImage(`${reg.host}/app/t`, { allowedRegistries: [reg.host], store }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'DataLoss');
    assert.match(e.message, /digest mismatch/);
    assert.match(e.message, new RegExp(good.layers[1]!.digest));
    assert.match(e.message, new RegExp(reg.host.replace(/\./g, '\\.')));
    return true;
  });
  assert.equal(await store.info(good.layers[1]!.digest), undefined, 'tampered layer not stored');
  assert.deepEqual(readdirSync(join(dir, 'ingest')), [], 'no partial download left');
});

test('layers download in parallel up to the concurrency limit', async (t) => {
  const { dir, reg, store } = setup(t);
  reg.image('app/p', Array.from({ length: 6 }, (_, i) => ({ data: layerData(10 + i, 10_000) })), ['latest']);
  reg.blobDelayMs = 40;
  await reg.start();
  await pullImage(`${reg.host}/app/p`, { allowedRegistries: [reg.host], store, concurrency: 3 });
  assert.equal(reg.maxInFlight, 3);
  reg.maxInFlight = 0;
  await pullImage(`${reg.host}/app/p`, { allowedRegistries: [reg.host], store: new LocalContentStore(join(dir, 'second-store')), concurrency: 1 });
  assert.equal(reg.maxInFlight, 1);
});

test('a disk without room refuses the pull before any blob is fetched (a real 16 MiB tmpfs); blobs already stored do not count', async (t) => {
  const { reg } = setup(t);
  const mnt = mkdtempSync(join(tmpdir(), 'nimbus-pull-tmpfs-'));
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'nimbus-test', mnt]);
  t.after(() => {
    spawnSync('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  });
  assert.equal(m.status, 0, `mount tmpfs: ${m.stderr}`);
  const MiB = 1024 ** 2;
  const big = randomBytes(9 * MiB); // incompressible: 9 MiB stored + at least 9 MiB unpacked > 16 MiB
  const img = reg.image('app/big', [{ data: big }], ['latest']);
  await reg.start();
  const store = new LocalContentStore(join(mnt, 'content'));
  const room = new DiskSpace({ content: join(mnt, 'content'), snapshots: join(mnt, 'snapshots') });
  await assert.rejects(pullImage(`${reg.host}/app/big`, { allowedRegistries: [reg.host], store, room }), (e: unknown) => {
    assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
    assert.match((e as Error).message, new RegExp(`^not enough disk space for pulling ${reg.host}/app/big:latest: needs at least 18 MiB, 15 MiB free`));
    return true;
  });
  assert.deepEqual(reg.blobGets, [], 'neither the config nor a layer fetched');
  assert.deepEqual((await store.list()).map((b) => b.digest), [img.manifest.digest], 'only the manifest, which gave the sizes');

  // with the layer already in the store only the config is needed
  await store.ingest(img.layers[0]!, (async function* () {
    yield big;
  })());
  const pulled = await pullImage(`${reg.host}/app/big`, { allowedRegistries: [reg.host], store, room, mayReuse: (d) => d === img.layers[0]!.digest });
  assert.equal(pulled.manifestDigest, img.manifest.digest);
  assert.deepEqual(reg.blobGets, [img.config.digest]);
});

test('a failed unpack (the promise onConfig returns) aborts the downloads and fails the pull with its error', async (t) => {
  const { dir, reg, store } = setup(t);
  reg.image('app/slow', Array.from({ length: 6 }, (_, i) => ({ data: layerData(i) })), ['latest']);
  await reg.start();
  const refused = new InvalidArgument('layer sha256:x: unpacks to more than the per-layer limit of 1 MiB');
  let started = 0;
  await assert.rejects(
    pullImage(`${reg.host}/app/slow`, { allowedRegistries: [reg.host],
      store,
      concurrency: 2,
      onConfig: () => {
        started = Date.now();
        reg.blobDelayMs = 3000; // layers answer slowly: the refusal comes while they are in flight
        return new Promise((_, reject) => setTimeout(() => reject(refused), 50));
      },
    }),
    (e: unknown) => e === refused,
  );
  assert.ok(Date.now() - started < 2500, `downloads in flight aborted, not waited for (${Date.now() - started} ms)`);
  const layersFetched = reg.blobGets.length - 1; // the config first
  assert.ok(layersFetched <= 2, `downloads stopped (${layersFetched} of 6 layers asked for)`);
  assert.deepEqual(readdirSync(join(dir, 'ingest')), [], 'the aborted downloads left no partial blob');
});
