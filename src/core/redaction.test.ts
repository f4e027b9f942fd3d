import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { Internal, logMessage, messageFor, toNimbusError } from './errors.js';
import { HOST_ADDRESS, HOST_PATH, addHostRoots, redactAbsolutePaths, redactHostPaths, redactHostPathsIn } from './redaction.js';

const ROOT = '/var/lib/nimbus-redaction-test';
addHostRoots([ROOT, `${ROOT}/`, 'relative/ignored', '/']);

test('paths under a host root are replaced, whole, at a path boundary only', () => {
  assert.equal(redactHostPaths(`open '${ROOT}/containers/c1/config.json': no such file`), `open '${HOST_PATH}': no such file`);
  assert.equal(redactHostPaths(`lowerdir=${ROOT}/s/1/fs:${ROOT}/s/2/fs,upperdir=${ROOT}/s/3/fs`), `lowerdir=${HOST_PATH}:${HOST_PATH},upperdir=${HOST_PATH}`);
  assert.equal(redactHostPaths(`error mounting \\"${ROOT}/v\\" to rootfs`), `error mounting \\"${HOST_PATH}\\" to rootfs`, 'an escape ends the path');
  assert.equal(redactHostPaths(`${ROOT}`), HOST_PATH);
  assert.equal(redactHostPaths(`${ROOT}-other/x and /var/lib/other and /app/data`), `${ROOT}-other/x and /var/lib/other and /app/data`, 'other directories stay');
  assert.deepEqual(redactHostPathsIn({ args: ['-t', 'overlay', `${ROOT}/t`], n: 3, nested: { cwd: `${ROOT}/s` } }), { args: ['-t', 'overlay', HOST_PATH], n: 3, nested: { cwd: HOST_PATH } });
});

test('every absolute path, for words that are all about the host', () => {
  assert.equal(redactAbsolutePaths('mount: /tmp/x/rootfs: special device /a:/b does not exist'), `mount: ${HOST_PATH}: special device ${HOST_PATH}:${HOST_PATH} does not exist`);
  assert.equal(redactAbsolutePaths('/usr/bin/conmon exit 1 (see https://example.com/x)'), `${HOST_PATH} exit 1 (see https://example.com/x)`, 'a URL is not a path');
});

test('a Node system error becomes Internal without its path or address; the administrator and the log read them', async () => {
  const missing = `${ROOT}/tmp/upload-1`;
  const enoent = await readFile('/nonexistent-redaction-test/upload-1').catch((e: unknown) => e as Error);
  let err = toNimbusError(enoent);
  assert.equal(err.code, 'Internal');
  assert.equal(err.message, `ENOENT: no such file or directory, open '${HOST_PATH}'`, 'the path its own fields name, under a root or not');
  assert.match(err.adminMessage ?? '', /open '\/nonexistent-redaction-test\/upload-1'/);
  assert.equal(messageFor(enoent, false), err.message);
  assert.equal(messageFor(enoent, true), err.adminMessage);
  assert.equal(logMessage(enoent), err.adminMessage);
  // a plain Error (no fields) under a root, and a string thrown
  err = toNimbusError(new Error(`bad record in ${missing}`));
  assert.equal(err.message, `bad record in ${HOST_PATH}`);
  assert.equal(err.adminMessage, `bad record in ${missing}`);
  assert.equal(toNimbusError('no path here').adminMessage, undefined, 'nothing hidden: no adminMessage');
  // a connection refused at an address
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  const refused = await new Promise<Error>((resolve) => net.connect(port, '127.0.0.1').on('error', resolve));
  err = toNimbusError(refused);
  assert.equal(err.message, `connect ECONNREFUSED ${HOST_ADDRESS}`);
  assert.equal(err.adminMessage, `connect ECONNREFUSED 127.0.0.1:${port}`);
});

test('the net under a NimbusError\'s message: a member never reads a path under a host root, an administrator reads it', () => {
  const e = new Internal(`umount ${ROOT}/containers/c1/rootfs failed`);
  assert.equal(messageFor(e, false), `umount ${HOST_PATH} failed`);
  assert.equal(messageFor(e, true), e.message);
});
