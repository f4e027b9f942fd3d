import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import { Unavailable } from '../../core/errors.js';
import { FakeAgent } from '../testing/fake-agent.js';
import type { AgentRecord } from '../../store/records.js';
import { AgentDirectory } from './agent-directory.js';
import { remoteAgentConnector } from './agent-connections.js';
import { HOST_UNKNOWN_AFTER_MS } from './host-reach.js';
import { AgentCa } from './agent-ca.js';
import { SPOKEN_PROTOCOL, describeRange } from '../../agent/remote/agent-protocol.js';
import { parseJoinToken, formatJoinToken } from '../../agent/remote/join-token.js';
import { certCommonName, issuedBy, makeKeyAndCsr } from '../../core/pki.js';

/** A host behind a URL, simulated: a fake agent answering as `name` (undefined: it does not answer) with these VMs. */
async function waitUntil(ok: () => boolean, ms = 2000): Promise<void> {
  for (const end = Date.now() + ms; !ok() && Date.now() < end;) await new Promise((r) => setTimeout(r, 5));
}

function stubAgent(name: string | undefined, vms: string[] = []) {
  const a = new FakeAgent({ name: name ?? 'nobody', cpus: 2, memoryBytes: 1 << 30 }).override('listVms', async () => vms);
  if (name === undefined) {
    a.override('info', async () => {
      throw new Unavailable('connect ECONNREFUSED');
    });
  }
  return { agent: a, exit: (id: string) => a.exitVm(id), closed: () => a.closed };
}

function setup(t: { after(fn: () => Promise<void>): void }, hosts: Record<string, ReturnType<typeof stubAgent>>, ca?: AgentCa) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-agents-'));
  const file = join(dir, 'nimbus.db');
  const stores: Store[] = [];
  t.after(async () => {
    for (const s of stores) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const open = async () => {
    const store = await openStore(file);
    stores.push(store);
    const connect = (rec: AgentRecord) => {
      const h = hosts[rec.url];
      if (!h) throw new Error(`no stub for ${rec.url}`);
      return h.agent;
    };
    return AgentDirectory.open(store, stubAgent('local').agent, 'local', connect, ca, { refreshIntervalMs: 0 });
  };
  return open;
}

const TOKEN = 't'.repeat(32);

test('agent directory: a registration is checked against the agent itself, stored, and reconnected after a restart', async (t) => {
  const b = stubAgent('b', ['vm1', 'vm2']);
  const hosts = { 'unix:/run/b1.sock': b, 'unix:/run/b2.sock': stubAgent(undefined), 'unix:/run/b3.sock': stubAgent('someone-else') };
  const open = setup(t, hosts);
  const dir = await open();
  const exits: string[] = [];
  dir.onVmExit((agent, id) => exits.push(`${agent}/${id}`));

  await assert.rejects(dir.register({ name: 'c', url: 'unix:/run/b2.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'Unreachable', message: /does not answer/ });
  await assert.rejects(dir.register({ name: 'c', url: 'unix:/run/b3.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'InvalidArgument', message: /calls itself "someone-else"/ });
  await assert.rejects(dir.register({ name: 'local', url: 'unix:/run/b1.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'Conflict' });
  await assert.rejects(dir.register({ name: 'b', url: 'ftp://x', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'InvalidArgument' });
  await assert.rejects(dir.register({ name: 'b', url: 'unix:/run/b1.sock', token: 'short', protocol: SPOKEN_PROTOCOL }), { code: 'InvalidArgument' });
  assert.deepEqual(dir.names(), ['local'], 'refused registrations leave nothing');

  await dir.register({ name: 'b', url: 'unix:/run/b1.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  assert.deepEqual(dir.names(), ['local', 'b']);
  assert.deepEqual(exits, ['b/vm1', 'b/vm2'], 'a (re)registered agent\'s VMs are re-checked');
  b.exit('vm3');
  assert.deepEqual(exits.at(-1), 'b/vm3', 'exits of a remote agent reach the listeners with its name');
  assert.throws(() => dir.get('nope'), { code: 'NotFound' });

  // the count comes from the store too: an asynchronous one is awaited
  const listed = await dir.list(async (n) => (n === 'b' ? 2 : 0), { admin: true });
  assert.deepEqual(listed.map((a) => [a.name, a.local, a.state, a.vms, a.url]), [['local', true, 'up', 0, undefined], ['b', false, 'up', 2, 'unix:/run/b1.sock']]);
  assert.ok(!JSON.stringify(listed).includes(TOKEN), 'the token is never listed');
  assert.deepEqual((await dir.list(() => 0)).map((a) => a.url), [undefined, undefined], 'its URL is an administrator\'s to see');

  const again = await open();
  assert.deepEqual(again.names(), ['local', 'b'], 'registrations survive a control-plane restart');
  await again.remove('b');
  assert.equal(b.closed(), true);
  await assert.rejects(again.remove('local'), { code: 'Conflict' });
  assert.deepEqual((await open()).names(), ['local'], 'a removal is stored');
});

test('agent directory: an agent that is down is listed down with the reason, not dropped', async (t) => {
  const flaky = stubAgent('b');
  const open = setup(t, { 'unix:/run/b.sock': flaky });
  const dir = await open();
  await dir.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  flaky.agent.override('info', async () => {
    throw new Unavailable('agent b at unix:/run/b.sock: connect ENOENT');
  });
  const b = (await dir.list(() => 0)).find((a) => a.name === 'b');
  assert.equal(b?.state, 'down');
  assert.match(b?.reason ?? '', /ENOENT/);
});

test('agent directory: a host whose events stream is lost is down at once, and up again when the stream is back', async (t) => {
  const b = stubAgent('b');
  let tell: ((up: boolean, reason?: string) => void) | undefined;
  // a remote agent's link signal (RemoteAgent.onLinkChange), which a FakeAgent lacks
  Object.assign(b.agent, { onLinkChange: (l: (up: boolean, reason?: string) => void) => (tell = l) });
  const dir = await setup(t, { 'unix:/run/b.sock': b })();
  await dir.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  assert.ok(tell, 'the directory watches the link');
  assert.equal(dir.isDown('b'), false);
  tell(false, 'no ping for 6000 ms');
  assert.equal(dir.isDown('b'), true, 'down at once, no refresh needed');
  assert.ok(!(await dir.candidates()).some((c) => c.name === 'b' && c.state === 'up'), 'not a candidate while down');
  tell(true);
  await waitUntil(() => !dir.isDown('b'));
  assert.equal(dir.isDown('b'), false, 'its facts answered again: up');
});

test('agent directory: registrations carry protocol versions; TCP agents are TLS only', async (t) => {
  const b = stubAgent('b');
  const dir = await setup(t, { 'unix:/run/b.sock': b })();
  await assert.rejects(dir.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN }), {
    code: 'Conflict', message: `agent b sent no protocol versions, so it speaks agent protocol 1; this control plane speaks ${describeRange(SPOKEN_PROTOCOL)}: upgrade the agent`,
  });
  const newer = { min: SPOKEN_PROTOCOL.max + 1, max: SPOKEN_PROTOCOL.max + 3 };
  await assert.rejects(dir.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: newer }), {
    code: 'Conflict', message: `agent b speaks agent protocol ${describeRange(newer)}, this control plane speaks ${describeRange(SPOKEN_PROTOCOL)}: no version in common`,
  });
  await assert.rejects(dir.register({ name: 'b', url: 'http://10.0.0.1:7000', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'InvalidArgument', message: /over TLS only/ });
  await assert.rejects(dir.register({ name: 'b', url: 'https://10.0.0.1:7000', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'Conflict', message: /no agent CA/ });
  await assert.rejects(dir.register({ name: 'nimbus-control-plane', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL }), { code: 'InvalidArgument' });
  assert.deepEqual(dir.names(), ['local'], 'no call reached the agent, nothing stored');
  await dir.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: { min: 1, max: 9 } });
  assert.deepEqual(dir.names(), ['local', 'b']);
});

test('agent directory: registrations without a credential are throttled per caller\'s address after 10 failures a minute (nothing dialled then); others still register', async (t) => {
  const dialled: string[] = [];
  const down = stubAgent(undefined);
  down.agent.override('info', async () => {
    dialled.push('down');
    throw new Unavailable('connect ECONNREFUSED');
  });
  const dir = await setup(t, { 'unix:/run/down.sock': down, 'unix:/run/b.sock': stubAgent('b') })();
  const probe = (source: string, url = 'unix:/run/down.sock', name = 'x') => dir.registerOverTls({ name, url, token: TOKEN, protocol: SPOKEN_PROTOCOL }, source);
  for (let i = 0; i < 10; i++) await assert.rejects(probe('192.0.2.9'), { code: 'Unreachable' });
  assert.equal(dialled.length, 10);
  await assert.rejects(probe('192.0.2.9'), (e: Error & { code?: string; details?: { retryAfterSeconds?: number } }) => {
    assert.equal(e.code, 'TooManyRequests');
    assert.ok((e.details?.retryAfterSeconds ?? 0) > 0 && (e.details?.retryAfterSeconds ?? 0) <= 60);
    return true;
  });
  assert.equal(dialled.length, 10, 'a throttled registration dials nothing');
  await dir.registerOverTls({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL }, '192.0.2.10');
  assert.deepEqual(dir.names(), ['local', 'b']);
});

test('agent directory: a stored plain-HTTP registration is listed down with the reason and can be removed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-agents-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await store.agents.put({ name: 'old', url: 'http://127.0.0.1:9', token: TOKEN, registeredAt: new Date().toISOString() });
  const d = await AgentDirectory.open(store, stubAgent('local').agent, 'local', remoteAgentConnector(undefined), undefined, { refreshIntervalMs: 0 });
  const old = (await d.list(() => 0, { admin: true })).find((a) => a.name === 'old');
  assert.equal(old?.state, 'down');
  assert.match(old?.reason ?? '', /over TLS only/);
  // anyone else: that it cannot be connected to, not the URL it is stored with
  const shown = (await d.list(() => 0)).find((a) => a.name === 'old');
  assert.equal(shown?.state, 'down');
  assert.match(shown?.reason ?? '', /^agent old cannot be connected to as registered/);
  assert.ok(!JSON.stringify(shown).includes('127.0.0.1:9'), JSON.stringify(shown));
  await d.remove('old');
  assert.deepEqual(d.names(), ['local']);
  await d.close();
});

test('agent directory: join tokens are one-time, short-lived, pinned to the CA, and stored as hashes only', async (t) => {
  const home = mkdtempSync(join(tmpdir(), 'nimbus-ca-'));
  t.after(() => rmSync(home, { recursive: true, force: true }));
  const ca = await AgentCa.open(join(home, 'agent-ca'));
  const open = setup(t, {}, ca);
  const dir = await open();
  const { key: _key, csr } = await makeKeyAndCsr('whatever-the-agent-says');
  void _key;

  const issued = await dir.issueJoinToken();
  const parsed = parseJoinToken(issued.token);
  assert.equal(parsed.caFingerprint, ca.fingerprint, 'the token pins the CA');
  const stored = await (dir as unknown as { store: Store }).store.joinTokens.list();
  assert.equal(stored.length, 1);
  assert.ok(!JSON.stringify(stored).includes(parsed.secret), 'the secret is not stored');

  // forged: a right id with a made-up secret, or the right token pinned to another CA
  const forged = formatJoinToken({ ...parsed, secret: 'A'.repeat(43) });
  await assert.rejects(dir.join({ joinToken: forged, name: 'b', csr, protocol: SPOKEN_PROTOCOL }), { code: 'Unauthenticated' });
  await assert.rejects(dir.join({ joinToken: formatJoinToken({ ...parsed, caFingerprint: 'f'.repeat(64) }), name: 'b', csr, protocol: SPOKEN_PROTOCOL }), { code: 'Unauthenticated' });
  await assert.rejects(dir.join({ joinToken: 'nonsense', name: 'b', csr, protocol: SPOKEN_PROTOCOL }), { code: 'Unauthenticated' });
  // a malformed CSR does not use the token up
  await assert.rejects(dir.join({ joinToken: issued.token, name: 'b', csr: 'not a csr', protocol: SPOKEN_PROTOCOL }), { code: 'InvalidArgument' });
  // an agent of another protocol is refused before the token is looked at
  const newer = SPOKEN_PROTOCOL.max + 1;
  await assert.rejects(dir.join({ joinToken: issued.token, name: 'b', csr, protocol: { min: newer, max: newer } }), { code: 'Conflict', message: new RegExp(`${newer}, this control plane speaks 2`) });

  const joined = await dir.join({ joinToken: issued.token, name: 'b', csr, protocol: SPOKEN_PROTOCOL });
  assert.equal(certCommonName(joined.certificate), 'b', 'the certificate names the agent, whatever its CSR said');
  assert.ok(issuedBy(joined.certificate, joined.caCertificate));
  assert.equal(joined.caCertificate, ca.certificate);
  await assert.rejects(dir.join({ joinToken: issued.token, name: 'c', csr, protocol: SPOKEN_PROTOCOL }), { code: 'Unauthenticated' }, 'reused');

  // expired: the same token after its time
  const short = await dir.issueJoinToken({ ttlMs: 1000 }, 1_000_000);
  await assert.rejects(dir.join({ joinToken: short.token, name: 'b', csr, protocol: SPOKEN_PROTOCOL }, 1_001_000), { code: 'Unauthenticated' }, 'expired');
  await assert.rejects(dir.issueJoinToken({ ttlMs: 25 * 3600_000 }), { code: 'InvalidArgument' });

  // the CA is kept: opened again it is the same one, its key private
  const again = await AgentCa.open(join(home, 'agent-ca'));
  assert.equal(again.fingerprint, ca.fingerprint);
  assert.equal(statSync(join(home, 'agent-ca', 'ca.key')).mode & 0o777, 0o600);
  assert.equal(statSync(join(home, 'agent-ca', 'control-plane.key')).mode & 0o777, 0o600);
  // without a CA there are no tokens
  const plain = await setup(t, {})();
  await assert.rejects(plain.issueJoinToken(), { code: 'Conflict' });
});

/** Two directories (control-plane processes) over one store, a clock the test moves. */
function hostsSetup(t: { after(fn: () => Promise<void>): void }, hosts: Record<string, ReturnType<typeof stubAgent>>) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-hosts-'));
  let now = 1_800_000_000_000;
  const stores: Store[] = [];
  const dirs: AgentDirectory[] = [];
  t.after(async () => {
    for (const d of dirs) await d.close();
    for (const s of stores) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const local = new FakeAgent({ name: 'local', cpus: 8, memoryBytes: 16 << 30, diskBytes: 500 << 30, runtimes: ['runc', 'crun'], accelerator: 'kvm' });
  const open = async () => {
    const store = await openStore(join(dir, 'nimbus.db'));
    stores.push(store);
    const connect = (rec: AgentRecord) => hosts[rec.url]!.agent;
    const d = await AgentDirectory.open(store, local, 'local', connect, undefined, { refreshIntervalMs: 0, now: () => now });
    dirs.push(d);
    return { d, store };
  };
  return { open, local, tick: (ms: number) => void (now += ms) };
}

test('hosts: the embedded agent is a host with a row; facts are cached by the refresh and candidates() calls no host', async (t) => {
  const b = stubAgent('b');
  const { open, local, tick } = hostsSetup(t, { 'unix:/run/b.sock': b });
  const { d, store } = await open();
  assert.equal((await store.agents.get('local'))?.url, 'embedded:', 'the embedded host has a row for its settings');
  assert.deepEqual((await d.candidates()).map((h) => [h.name, h.state]), [['local', 'unknown']], 'never asked, no facts: unknown');

  await d.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  await d.refresh();
  const asked = local.calls('info').length + b.agent.calls('info').length;
  const hosts = await d.candidates();
  assert.equal(local.calls('info').length + b.agent.calls('info').length, asked, 'candidates() asks no host');
  assert.deepEqual(hosts.find((h) => h.name === 'local'), {
    name: 'local', state: 'up', disabled: false, zone: 'default', labels: {}, cpus: 8, memoryBytes: 16 << 30, diskBytes: 500 << 30,
    accelerator: 'kvm', runtimes: ['runc', 'crun'], architecture: 'amd64', allocationRatios: { cpu: 4, memory: 1, disk: 1 },
  });
  assert.equal(hosts.find((h) => h.name === 'b')?.cpus, 2);
  assert.equal((await store.agents.get('local'))?.facts?.cpus, 8, 'facts are stored');

  // b stops answering: down with the reason, its facts kept; nothing is removed
  b.agent.failNext('info', new Unavailable('connect ENOENT'));
  tick(10_000);
  await d.refresh();
  const down = (await d.candidates()).find((h) => h.name === 'b');
  assert.deepEqual([down?.state, down?.cpus], ['down', 2]);
  assert.deepEqual(d.names(), ['local', 'b']);
  const listed = (await d.list({ vmsOn: () => 0 })).find((h) => h.name === 'b');
  assert.equal(listed?.state, 'up', 'a listing asks again: it answers now');
});

test('hosts: a placement right after open() waits for the first answer in flight instead of seeing the host unknown', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-dir-first-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const local = new FakeAgent({ name: 'local', cpus: 4, memoryBytes: 8 << 30, diskBytes: 100 << 30, runtimes: ['runc'] });
  // its first answer takes a while (a loaded host, the agent's probes)
  const slow = Object.create(local) as FakeAgent;
  slow.info = async () => {
    await new Promise((r) => setTimeout(r, 150));
    return local.info();
  };
  const d = await AgentDirectory.open(store, slow, 'local', () => { throw new Error('no remote hosts here'); }, undefined, { refreshIntervalMs: 60_000 });
  t.after(async () => {
    await d.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const started = Date.now();
  assert.deepEqual((await d.candidates()).map((h) => [h.name, h.state, h.cpus]), [['local', 'up', 4]]);
  assert.ok(Date.now() - started >= 100, 'it waited for the answer');
});

test('hosts: a host not heard from since this process started is unknown once its stored facts are old, up while they are recent', async (t) => {
  const b = stubAgent('b');
  const { open, tick } = hostsSetup(t, { 'unix:/run/b.sock': b });
  const first = await open();
  await first.d.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  // another process over the same store: it has not asked b, the facts b gave are recent
  const second = await open();
  tick(5_000);
  assert.equal((await second.d.candidates()).find((h) => h.name === 'b')?.state, 'up');
  tick(HOST_UNKNOWN_AFTER_MS);
  const stale = (await second.d.candidates()).find((h) => h.name === 'b');
  assert.equal(stale?.state, 'unknown');
  assert.equal(stale?.cpus, 2, 'its last facts are still what placement knows of it');
});

test('hosts: disable, enable, zone, labels and ratios are checked, stored, kept across a registration again, and seen by another process', async (t) => {
  const b = stubAgent('b');
  const { open, tick } = hostsSetup(t, { 'unix:/run/b.sock': b, 'unix:/run/b2.sock': b });
  const { d } = await open();
  await d.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  const other = await open();

  const off = await d.disable('b', { reason: 'disk swap', by: 'admin' });
  assert.deepEqual([off.disabled, off.disabledReason, off.disabledBy], [true, 'disk swap', 'admin']);
  await d.updateSettings('b', { zone: 'eu-1a', labels: { rack: 'r12', ssd: 'true' }, allocationRatios: { cpu: 2, disk: 1.5 } });
  const after = await d.updateSettings('b', { labels: { gpu: 'a100' }, unsetLabels: ['ssd'], allocationRatios: { disk: null } });
  assert.deepEqual([after.zone, after.labels, after.allocationRatios], ['eu-1a', { rack: 'r12', gpu: 'a100' }, { cpu: 2, memory: 1, disk: 1 }]);
  await d.updateSettings('local', { zone: 'home' });

  await assert.rejects(d.updateSettings('b', { zone: 'no spaces' }), { code: 'InvalidArgument', message: /invalid zone/ });
  await assert.rejects(d.updateSettings('b', { labels: { 'bad key!': 'x' } }), { code: 'InvalidArgument', message: /invalid label key/ });
  await assert.rejects(d.updateSettings('b', { labels: { ok: 'bad value' } }), { code: 'InvalidArgument', message: /invalid value/ });
  await assert.rejects(d.updateSettings('b', { allocationRatios: { cpu: 0 } }), { code: 'InvalidArgument', message: /above 0/ });
  await assert.rejects(d.updateSettings('b', { allocationRatios: { gpu: 2 } as never }), { code: 'InvalidArgument', message: /unknown allocation ratio/ });
  await assert.rejects(d.disable('nope', { by: 'admin' }), { code: 'NotFound' });
  await assert.rejects(d.remove('local'), { code: 'Conflict', message: /embedded agent cannot be removed/ });

  // the agent restarts at another address: the administrator's settings stay
  await d.register({ name: 'b', url: 'unix:/run/b2.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  // the other process reads the rows again within a second
  tick(1_000);
  const seen = await other.d.candidates();
  assert.deepEqual(seen.map((h) => [h.name, h.disabled, h.zone, h.labels, h.allocationRatios?.cpu]), [
    ['local', false, 'home', {}, 4],
    ['b', true, 'eu-1a', { rack: 'r12', gpu: 'a100' }, 2],
  ]);
  await d.enable('b');
  tick(1_000);
  assert.equal((await other.d.candidates()).find((h) => h.name === 'b')?.disabled, false);
  // a removal through one process is one through the other
  await d.remove('b');
  tick(1_000);
  assert.deepEqual((await other.d.candidates()).map((h) => h.name), ['local']);
  assert.deepEqual(other.d.names(), ['local']);
});

test('hosts: a control plane without an embedded agent (--no-agent) lists and offers only registered hosts', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-hosts-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const standIn = new FakeAgent({ name: 'local' });
  const b = stubAgent('b');
  const d = await AgentDirectory.open(store, standIn, 'local', () => b.agent, undefined, { refreshIntervalMs: 0, embedded: false });
  t.after(async () => {
    await d.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  assert.equal(await store.agents.get('local'), undefined, 'no row for the stand-in');
  await d.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  assert.deepEqual((await d.candidates()).map((h) => h.name), ['b']);
  assert.deepEqual((await d.list(() => 0)).map((h) => h.name), ['b']);
  assert.equal(standIn.calls('info').length, 0, 'the stand-in is never asked');
  await assert.rejects(d.disable('local', { by: 'admin' }), { code: 'NotFound' });
});

test('agent CA: processes sharing a store share its CA; one with another CA is refused, naming what to copy', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-ca-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  t.after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const first = await AgentCa.open(join(dir, 'a', 'agent-ca'), store);
  // the same directory again (a restart), and a copy of it (a second replica set up right)
  assert.equal((await AgentCa.open(join(dir, 'a', 'agent-ca'), store)).fingerprint, first.fingerprint);
  // a replica with a CA of its own: refused, and the store keeps the first one's
  await assert.rejects(AgentCa.open(join(dir, 'b', 'agent-ca'), store), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'Conflict');
    assert.match(e.message, /Copy HOME\/agent-ca from a replica already running on this store/);
    assert.ok(e.message.includes(first.fingerprint), 'names the CA the store expects');
    return true;
  });
  assert.equal(await store.settings.get('agent-ca-fingerprint'), first.fingerprint);
});

test('hosts: a slow answer is not a dead host: down after two missed answers in a row, at once on a refusal', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-hosts-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const b = stubAgent('b');
  const local = new FakeAgent({ name: 'local', cpus: 2, memoryBytes: 1 << 30 });
  const d = await AgentDirectory.open(store, local, 'local', () => b.agent, undefined, { refreshIntervalMs: 0, answerTimeoutMs: 50 });
  const keepAlive = setInterval(() => undefined, 1000); // the answer timeout's timer is unref'd (a daemon has its server)
  t.after(async () => {
    clearInterval(keepAlive);
    await d.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await d.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN, protocol: SPOKEN_PROTOCOL });
  await d.refresh();
  const stateOfB = async () => (await d.candidates()).find((h) => h.name === 'b')?.state;
  assert.equal(await stateOfB(), 'up');
  let hang = true;
  b.agent.override('info', () => (hang ? new Promise(() => undefined) : Promise.resolve(local.info())) as ReturnType<FakeAgent['info']>);
  await d.refresh(['b']);
  assert.equal(await stateOfB(), 'up', 'one missed answer: still up');
  await d.refresh(['b']);
  assert.equal(await stateOfB(), 'down', 'two in a row: down');
  assert.deepEqual([d.isDown('b'), d.isDown('local')], [true, false], 'what the instance views ask');
  hang = false;
  await d.refresh(['b']);
  assert.equal(await stateOfB(), 'up', 'answers again: up');
  assert.equal(d.isDown('b'), false);
  b.agent.failNext('info', new Unavailable('connect ECONNREFUSED'));
  await d.refresh(['b']);
  assert.equal(await stateOfB(), 'down', 'a refused connection: down at once');
});
