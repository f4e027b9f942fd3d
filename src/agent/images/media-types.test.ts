import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LAYER_TYPES, MANIFEST_ACCEPT, MT, isIndex, isSchema1, layerCompression, ociLayerType, platformMatches, platformString, sniffCompression } from './media-types.js';

test('media types: accept header, layer compression, schema 1 and index detection', () => {
  for (const t of [MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest]) assert.ok(MANIFEST_ACCEPT.includes(t));
  assert.ok(!MANIFEST_ACCEPT.includes(MT.dockerSchema1));
  assert.equal(layerCompression(MT.ociLayer), 'none');
  assert.equal(layerCompression(MT.ociLayerGzip), 'gzip');
  assert.equal(layerCompression(MT.dockerLayerGzip), 'gzip');
  assert.equal(layerCompression(MT.ociLayerZstd), 'zstd');
  assert.equal(layerCompression('application/json'), undefined);
  assert.ok(LAYER_TYPES.has(MT.ociLayerZstd) && !LAYER_TYPES.has(MT.ociConfig));
  assert.equal(sniffCompression(Buffer.from([0x1f, 0x8b, 8])), 'gzip');
  assert.equal(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), 'zstd');
  assert.equal(sniffCompression(Buffer.from('bin/')), 'none');
  assert.equal(ociLayerType('gzip'), MT.ociLayerGzip);
  assert.ok(isSchema1(MT.dockerSchema1Signed, {}));
  assert.ok(isSchema1('application/json', { schemaVersion: 1 }));
  assert.ok(!isSchema1(MT.ociManifest, { schemaVersion: 2 }));
  assert.ok(isIndex(MT.dockerList, {}));
  assert.ok(isIndex(undefined, { manifests: [] }));
  assert.ok(!isIndex(MT.ociManifest, { layers: [] }));
});

test('platform matching: os and architecture must match, variant only when both name one', () => {
  assert.ok(platformMatches({ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'amd64' }));
  assert.ok(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, { os: 'linux', architecture: 'arm64' }));
  assert.ok(!platformMatches({ os: 'linux', architecture: 'arm', variant: 'v6' }, { os: 'linux', architecture: 'arm', variant: 'v7' }));
  assert.ok(!platformMatches({ os: 'windows', architecture: 'amd64' }, { os: 'linux', architecture: 'amd64' }));
  assert.ok(!platformMatches(undefined, { os: 'linux', architecture: 'amd64' }));
  assert.equal(platformString({ os: 'linux', architecture: 'arm', variant: 'v7' }), 'linux/arm/v7');
  assert.equal(platformString(undefined), 'unknown');
});
