import { test } from 'node:test';
import assert from 'node:assert/strict';
import { goFileMode, pathStatHeader } from './container-archive.js';

test('st_mode becomes Go\'s os.FileMode, which the docker CLI reads (IsDir, symlinks, devices)', () => {
  assert.equal(goFileMode(0o100644), 0o644);
  assert.equal(goFileMode(0o040755), 2 ** 31 + 0o755);
  assert.equal(goFileMode(0o120777), 2 ** 27 + 0o777);
  assert.equal(goFileMode(0o104755), 2 ** 23 + 0o755, 'setuid');
  assert.equal(goFileMode(0o041777), 2 ** 31 + 2 ** 20 + 0o777, 'sticky directory');
  assert.equal(goFileMode(0o020666), 2 ** 26 + 2 ** 21 + 0o666, 'a character device');
  assert.equal(goFileMode(0o010644), 2 ** 25 + 0o644, 'a fifo');
});

test('X-Docker-Container-Path-Stat is base64 of dockerd\'s JSON', () => {
  const h = pathStatHeader({ name: 'etc', size: 4096, mode: 0o040755, mtime: '2026-12-04T16:00:00.000Z', linkTarget: '' });
  assert.deepEqual(JSON.parse(Buffer.from(h, 'base64').toString()), { name: 'etc', size: 4096, mode: 2147484141, mtime: '2026-12-04T16:00:00.000Z', linkTarget: '' });
});
