import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileOptions } from './config.js';

test('image unpack limits: unset by default (the agent applies 16 GiB / 64 GiB), sizes with suffixes from env or overrides, bad values refused', () => {
  const home = '/var/lib/nimbus-test';
  const none = compileOptions({ home }, {});
  assert.equal(none.layerMaxBytes, undefined);
  assert.equal(none.imageMaxBytes, undefined);
  const env = compileOptions({ home }, { NIMBUS_LAYER_MAX_BYTES: '2g', NIMBUS_IMAGE_MAX_BYTES: '1048576' });
  assert.equal(env.layerMaxBytes, 2 * 1024 ** 3);
  assert.equal(env.imageMaxBytes, 1024 ** 2);
  assert.equal(compileOptions({ home, layerMaxBytes: 4096 }, { NIMBUS_LAYER_MAX_BYTES: '1t' }).layerMaxBytes, 4096, 'an override wins over the environment');
  for (const bad of ['0', '-1', '1.5g', '12x', 'g', '99999999999t']) {
    assert.throws(() => compileOptions({ home }, { NIMBUS_IMAGE_MAX_BYTES: bad }), { code: 'InvalidArgument', message: /NIMBUS_IMAGE_MAX_BYTES/ }, bad);
  }
});
