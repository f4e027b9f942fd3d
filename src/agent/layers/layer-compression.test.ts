import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hasCode } from '../../core/errors.js';
import { LAYER_TYPES, MT } from '../images/media-types.js';
import { layerCompression } from './layer-compression.js';

test('every layer media type a pull accepts can be unpacked (docker zstd layers were refused at unpack); others are InvalidArgument', () => {
  for (const mt of LAYER_TYPES) assert.doesNotThrow(() => layerCompression(mt), mt);
  assert.equal(layerCompression(MT.dockerLayerZstd), 'zstd');
  assert.equal(layerCompression(MT.ociLayerGzip), 'gzip');
  assert.equal(layerCompression(' Application/X-Tar '), 'none');
  assert.throws(() => layerCompression('application/vnd.oci.image.config.v1+json'), (e: unknown) => hasCode(e, 'InvalidArgument'));
});
