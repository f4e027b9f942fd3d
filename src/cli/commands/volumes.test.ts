import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mountsFromFlags, parseMountFlag, parseTmpfsFlag, parseVolumeFlag } from './volumes.js';

test('-v: a named volume, a host path or an anonymous volume, ro or rw', () => {
  assert.deepEqual(parseVolumeFlag('data:/var/lib/data'), { type: 'volume', source: 'data', target: '/var/lib/data' });
  assert.deepEqual(parseVolumeFlag('data:/d:ro'), { type: 'volume', source: 'data', target: '/d', readonly: true });
  assert.deepEqual(parseVolumeFlag('/srv/www:/www:rw'), { type: 'bind', source: '/srv/www', target: '/www' });
  assert.deepEqual(parseVolumeFlag('/data'), { type: 'volume', target: '/data' }, 'no source: an anonymous volume');
  assert.throws(() => parseVolumeFlag('data:/d:z'), /the options are ro, rw and nocopy, got "z"/);
  assert.deepEqual(parseVolumeFlag('data:/d:ro,nocopy'), { type: 'volume', source: 'data', target: '/d', readonly: true, nocopy: true }, 'nocopy: a volume made now starts empty');
  assert.deepEqual(parseVolumeFlag('data:/d:nocopy'), { type: 'volume', source: 'data', target: '/d', nocopy: true });
  assert.throws(() => parseVolumeFlag('/srv:/d:nocopy'), /nocopy is for volumes, not host paths/);
  assert.throws(() => parseVolumeFlag('data:rel'), /must be absolute/);
  assert.throws(() => parseVolumeFlag('a:/b:ro:x'), /-v takes NAME:\/path/);
});

test('--mount: Docker\'s keys and aliases; tmpfs size and octal mode; what is not supported is named', () => {
  assert.deepEqual(parseMountFlag('type=volume,src=data,dst=/d,ro'), { type: 'volume', source: 'data', target: '/d', readonly: true });
  assert.deepEqual(parseMountFlag('source=data,target=/d,readonly=false'), { type: 'volume', source: 'data', target: '/d' });
  assert.deepEqual(parseMountFlag('type=bind,source=/srv,destination=/s'), { type: 'bind', source: '/srv', target: '/s' });
  assert.deepEqual(parseMountFlag('type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=700'), { type: 'tmpfs', target: '/t', sizeBytes: 64 * 1024 * 1024, mode: 0o700 });
  assert.throws(() => parseMountFlag('type=bind,source=rel,target=/s'), /absolute host path/);
  assert.deepEqual(parseMountFlag('type=volume,target=/s'), { type: 'volume', target: '/s' }, 'an anonymous volume');
  assert.throws(() => parseMountFlag('type=bind,target=/s'), /source= is required/);
  assert.throws(() => parseMountFlag('type=npipe,source=x,target=/s'), /type must be volume, bind or tmpfs/);
  assert.throws(() => parseMountFlag('source=x,target=/s,volume-driver=nfs'), /"volume-driver" is not supported/);
  assert.throws(() => parseMountFlag('source=x'), /target=\/path/);
  assert.deepEqual(parseMountFlag('type=volume,source=x,target=/s,volume-nocopy'), { type: 'volume', source: 'x', target: '/s', nocopy: true });
  assert.deepEqual(parseMountFlag('type=volume,target=/s,volume-nocopy=true'), { type: 'volume', target: '/s', nocopy: true });
  assert.deepEqual(parseMountFlag('type=volume,source=x,target=/s,volume-nocopy=false'), { type: 'volume', source: 'x', target: '/s' });
  assert.throws(() => parseMountFlag('type=bind,source=/srv,target=/s,volume-nocopy'), /volume-nocopy is for type=volume/);
});

test('--tmpfs and the three together, in order', () => {
  assert.deepEqual(parseTmpfsFlag('/run'), { type: 'tmpfs', target: '/run' });
  assert.deepEqual(parseTmpfsFlag('/scratch:size=1m,mode=1777,noexec'), { type: 'tmpfs', target: '/scratch', sizeBytes: 1024 * 1024, mode: 0o1777 });
  assert.throws(() => parseTmpfsFlag('/x:uid=1000'), /option "uid=1000" is not supported/);
  assert.deepEqual(mountsFromFlags({ volume: ['a:/a'], mount: ['type=tmpfs,target=/b'], tmpfs: ['/c'] }).map((m) => m.target), ['/a', '/b', '/c']);
  assert.deepEqual(mountsFromFlags({}), []);
});
