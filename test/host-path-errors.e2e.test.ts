/**
 * A host path is for system administrators, end to end: a real nimbusd (over TCP, with a
 * member's and an administrator's tokens) whose embedded agent cannot start a member's exited
 * container again (its runtime state is removed first, and something is still mounted in its
 * directory under the daemon's home). What the member reads of it on the Nimbus and the Docker
 * API names the container and why, never a path under the home; the administrator's answer and
 * the daemon's log carry the paths.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { call, type Reply } from './helpers/http.js';
import { waitFor } from './helpers/wait.js';
import { memberAndAdmin, testImageTar } from './helpers/member-and-admin.js';

const ADMIN_PASSWORD = 'host-path-admin-pw';

let d: DaemonProcess | undefined;
/** The tmpfs the test mounts in the container's directory, unmounted however the test ends. */
let extra: string | undefined;

after(async () => {
  if (extra) await run('umount', [extra]);
  await d?.destroy();
});

describe('a host path is for administrators', { concurrency: false }, () => {
  let port: number;
  let id: string;
  const tokens: Record<'alice' | 'admin', string> = { alice: '', admin: '' };
  const tcp = () => ({ port });

  before(async () => {
    process.env.NIMBUS_ADMIN_PASSWORD = ADMIN_PASSWORD; // read by the daemon on first start
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0']);
    delete process.env.NIMBUS_ADMIN_PASSWORD;
    port = Number(/tcp:127\.0\.0\.1:(\d+)/.exec(d.output())?.[1]);
    Object.assign(tokens, await memberAndAdmin(d, port, ADMIN_PASSWORD));
    let r = await call(tcp(), 'POST', '/images/import?project=A', { token: tokens.alice, raw: await testImageTar('paths/box:v1') });
    assert.equal(r.status, 201, r.text);
    const image = (r.body as { image: { digest: string } }[])[0]!.image.digest;
    r = await call(tcp(), 'POST', '/containers?project=A', { token: tokens.alice, body: { name: 'stuck-box', image, cmd: ['true'] } });
    assert.equal(r.status, 201, r.text);
    id = (r.body as { id: string }).id;
    r = await call(tcp(), 'POST', '/containers/stuck-box/start', { token: tokens.alice, body: {} });
    assert.equal(r.status, 200, r.text);
    await waitFor('the container exited', async () => {
      const st = (await call(tcp(), 'GET', '/containers/stuck-box', { token: tokens.alice })).body as { status: string };
      return st.status === 'exited' ? true : undefined;
    });
  });

  test('a start the host fails: the member reads why, never a path under the home; the administrator and the log read them', async () => {
    // something the host mounted in the container's directory and did not unmount: the start
    // again after the exit removes the old runtime state first, and refuses to
    extra = join(d!.home, 'containers', 'containers', id, 'extra');
    mkdirSync(extra);
    assert.equal((await run('mount', ['-t', 'tmpfs', 'tmpfs', extra])).code, 0);
    const member = (r: Reply, what: string) => {
      assert.ok(r.status >= 500, `${what}: ${r.status} ${r.text}`);
      assert.match(r.text, /still mounted/, `${what} says why: ${r.text}`);
      assert.ok(!r.text.includes(d!.home), `the member's ${what}: ${r.text}`);
    };
    member(await call(tcp(), 'POST', '/containers/stuck-box/start', { token: tokens.alice, body: {} }), 'start');
    member(await call({ socketPath: `${d!.home}/docker.sock` }, 'POST', `/containers/${id}/start`, { token: tokens.alice }), 'docker start');
    const r = await call(tcp(), 'POST', '/containers/stuck-box/start?project=A', { token: tokens.admin, body: {} });
    assert.ok(r.text.includes(extra), `the administrator's start names the mount: ${r.text}`);
    assert.ok(d!.output().includes(extra), 'the log keeps the path');
    // unmounted, it starts
    assert.equal((await run('umount', [extra])).code, 0);
    extra = undefined;
    assert.equal((await call(tcp(), 'POST', '/containers/stuck-box/start', { token: tokens.alice, body: {} })).status, 200);
  });
});
