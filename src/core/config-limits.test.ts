import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileOptions, describeStore } from './config.js';

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

test('the container memory default: 512 MiB unless set; 0 turns it off; sizes below 6 MiB and non-sizes refused', () => {
  const home = '/var/lib/nimbus-test';
  assert.equal(compileOptions({ home }, {}).containerMemoryDefaultBytes, 512 * 1024 ** 2);
  assert.equal(compileOptions({ home }, { NIMBUS_CONTAINER_MEMORY_DEFAULT: '1g' }).containerMemoryDefaultBytes, 1024 ** 3);
  assert.equal(compileOptions({ home }, { NIMBUS_CONTAINER_MEMORY_DEFAULT: '0' }).containerMemoryDefaultBytes, 0);
  assert.equal(compileOptions({ home, containerMemoryDefaultBytes: 64 * 1024 ** 2 }, { NIMBUS_CONTAINER_MEMORY_DEFAULT: '1g' }).containerMemoryDefaultBytes, 64 * 1024 ** 2);
  for (const bad of ['1m', '-1', 'lots', '1.5g']) {
    assert.throws(() => compileOptions({ home }, { NIMBUS_CONTAINER_MEMORY_DEFAULT: bad }), { code: 'InvalidArgument', message: /container memory default/ }, bad);
  }
});

test('a PostgreSQL store location is shown without its password, a socket URL included', () => {
  assert.equal(describeStore('postgres://nimbus:s3cret@db.example:5432/nimbus'), 'postgres://nimbus:***@db.example:5432/nimbus');
  assert.equal(describeStore('postgresql://nimbus@/nimbus?host=/run/postgresql&password=s3cret&max=4'), 'postgresql://nimbus@/nimbus?host=/run/postgresql&password=***&max=4');
  assert.equal(describeStore('/var/lib/nimbus/nimbus.db'), '/var/lib/nimbus/nimbus.db');
  assert.throws(() => compileOptions({ home: '/h', store: 'mysql://x:pw@h/db' }), (e: Error) => /store must be/.test(e.message) && !e.message.includes('pw'));
  assert.equal(compileOptions({ home: '/h' }).storeLocation, '/h/nimbus.db');
  assert.equal(compileOptions({ home: '/h' }, { NIMBUS_STORE: 'postgres://n@/n?host=/s' }).storeLocation, 'postgres://n@/n?host=/s');
});
