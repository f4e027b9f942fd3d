/**
 * An agent's address is for system administrators, end to end: a real nimbusd (over TCP, with a
 * member's and an administrator's tokens) and a second agent (`nimbusd agent` in a network
 * namespace of its own, reached at https://ITS-ADDRESS:PORT, as in hosts.e2e.test.ts). A VM and
 * a container of the member's project are placed there; the agent is stopped. What the member
 * reads of them (inspect, an action's error on the Nimbus and the Docker API, the host
 * listing) names the host, never that address; the administrator's answers and the daemon's log
 * carry it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { call, type Reply } from './helpers/http.js';
import { secondHost, startAgentInNamespace, tearDownTwoHosts, type NamespaceAgent, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { memberAndAdmin, testImageTar } from './helpers/member-and-admin.js';

const AGENT = 'host-b';
const ADMIN_PASSWORD = 'agent-address-admin-pw';

let d: DaemonProcess | undefined;
let host2: SecondHost | undefined;
let b: NamespaceAgent | undefined;

before(async () => {
  host2 = await secondHost({ ns: 'addr', link: 'nad' });
});
after(async () => {
  // the agent back, so what it holds is removed through it; then everything goes
  if (d && b && !b.pid()) await b.start().catch(() => undefined);
  await tearDownTwoHosts(d, b, host2);
});

describe('an agent\'s address is for administrators', { concurrency: false }, () => {
  let port: number;
  const tokens: Record<'alice' | 'admin', string> = { alice: '', admin: '' };
  const tcp = () => ({ port });
  const sock = () => ({ socketPath: d!.socket });

  before(async () => {
    process.env.NIMBUS_ADMIN_PASSWORD = ADMIN_PASSWORD; // read by the daemon on first start
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0']);
    delete process.env.NIMBUS_ADMIN_PASSWORD;
    port = Number(/tcp:127\.0\.0\.1:(\d+)/.exec(d.output())?.[1]);
    b = await startAgentInNamespace(d, host2!, { homePrefix: 'nimbus-addr-agent', name: AGENT });
    Object.assign(tokens, await memberAndAdmin(d, port, ADMIN_PASSWORD));
    // the member's instances, placed on host-b by the administrator (nothing is started)
    let r = await call(sock(), 'POST', '/disk-images?project=A&name=disk-A', { raw: Buffer.alloc(64 * 1024) });
    assert.equal(r.status, 201, r.text);
    r = await call(sock(), 'POST', '/vms?project=A', { body: { name: 'far-vm', image: 'disk-A', host: AGENT } });
    assert.equal(r.status, 201, r.text);
    r = await call(sock(), 'POST', '/images/import?project=A', { raw: await testImageTar('addr/box:v1') });
    assert.equal(r.status, 201, r.text);
    const image = (r.body as { image: { digest: string } }[])[0]!.image.digest;
    r = await call(sock(), 'POST', '/containers?project=A', { body: { name: 'far-box', image, host: AGENT, cmd: ['sleep', '600'] } });
    assert.equal(r.status, 201, r.text);
  });
  after(async () => {
    // the agent back and answering, so the instances it holds (a created container's runc init) go through it
    if (b && !b.pid()) await b.start();
    await waitFor('host-b up again', async () => {
      const hosts = (await call(sock(), 'GET', '/hosts')).body as Array<{ name: string; state: string }>;
      return hosts.find((h) => h.name === AGENT)?.state === 'up' ? true : undefined;
    });
    for (const path of ['/vms/far-vm?project=A&force=true', '/containers/far-box?project=A&force=true']) {
      const r = await call(sock(), 'DELETE', path);
      assert.equal(r.status, 204, `${path}: ${r.text}`);
    }
  });

  test('its instances\' host is stopped: the member reads its name, never its address; the administrator and the log read both', async () => {
    const address = host2!.agentAddress;
    const hosts = (await call(sock(), 'GET', '/hosts')).body as Array<{ name: string; url?: string }>;
    const url = hosts.find((h) => h.name === AGENT)?.url ?? '';
    assert.ok(url.startsWith(`https://${address}:`), `the agent is reached at ${url}`);
    await b!.stop();

    const member = (r: Reply, what: string) => {
      assert.ok(!r.text.includes(address) && !/https?:\/\//.test(r.text), `the member's ${what}: ${r.text}`);
      assert.match(r.text, /host-b/, `the member's ${what} names the host`);
    };
    const administrator = (r: Reply, what: string) => assert.ok(r.text.includes(url), `the administrator's ${what}: ${r.text}`);

    let r = await call(tcp(), 'GET', '/vms/far-vm', { token: tokens.alice });
    assert.equal(r.status, 200, r.text);
    assert.ok((r.body as { hostError?: string }).hostError, r.text);
    member(r, 'VM inspect');
    administrator(await call(tcp(), 'GET', '/vms/far-vm?project=A', { token: tokens.admin }), 'VM inspect');

    r = await call(tcp(), 'POST', '/vms/far-vm/start', { token: tokens.alice });
    assert.equal(r.status, 503, r.text);
    member(r, 'VM start');
    administrator(await call(tcp(), 'POST', '/vms/far-vm/start?project=A', { token: tokens.admin }), 'VM start');

    r = await call(tcp(), 'POST', '/containers/far-box/start', { token: tokens.alice, body: {} });
    assert.ok(r.status >= 500, r.text);
    member(r, 'container start');
    r = await call({ socketPath: `${d!.home}/docker.sock` }, 'POST', '/containers/far-box/start', { token: tokens.alice });
    assert.ok(r.status >= 500, r.text);
    member(r, 'docker start');

    r = await call(tcp(), 'GET', '/hosts', { token: tokens.alice });
    assert.equal(r.status, 200, r.text);
    assert.ok(!r.text.includes(address), `the member's host listing: ${r.text}`);
    r = await call(tcp(), 'GET', '/hosts', { token: tokens.admin });
    assert.equal((r.body as Array<{ name: string; url?: string }>).find((h) => h.name === AGENT)?.url, url);

    assert.ok(d!.output().includes(`agent ${AGENT} at ${url}`), 'the log keeps the agent\'s URL');
  });
});
