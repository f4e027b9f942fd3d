import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../store/sqlite.js';
import { Unavailable } from '../../core/errors.js';
import type { Agent } from '../../agent/agent.js';
import type { AgentRecord } from '../../store/records.js';
import { AgentDirectory } from './agent-directory.js';

/** What the directory uses of an agent: its name, its VMs, exits and close. Hosts behind URLs are simulated here. */
function stubAgent(name: string | undefined, vms: string[] = []) {
  const exit: Array<(id: string) => void> = [];
  let closed = false;
  const a = {
    info: async () => {
      if (name === undefined) throw new Unavailable('connect ECONNREFUSED');
      return { name, hostname: 'h', cpus: 2, memoryBytes: 1 << 30 };
    },
    listVms: async () => vms,
    onVmExit: (l: (id: string) => void) => exit.push(l),
    close: async () => {
      closed = true;
    },
  };
  return { agent: a as unknown as Agent & { close(): Promise<void> }, exit: (id: string) => exit.forEach((l) => l(id)), closed: () => closed };
}

function setup(t: { after(fn: () => void): void }, hosts: Record<string, ReturnType<typeof stubAgent>>) {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-agents-'));
  const file = join(dir, 'nimbus.db');
  const stores: SqliteStore[] = [];
  t.after(() => {
    for (const s of stores) s.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const open = () => {
    const store = new SqliteStore(file);
    stores.push(store);
    const connect = (rec: AgentRecord) => {
      const h = hosts[rec.url];
      if (!h) throw new Error(`no stub for ${rec.url}`);
      return h.agent;
    };
    return new AgentDirectory(store, stubAgent('local').agent, 'local', connect);
  };
  return open;
}

const TOKEN = 't'.repeat(32);

test('agent directory: a registration is checked against the agent itself, stored, and reconnected after a restart', async (t) => {
  const b = stubAgent('b', ['vm1', 'vm2']);
  const hosts = { 'http://127.0.0.1:1': b, 'http://127.0.0.1:2': stubAgent(undefined), 'http://127.0.0.1:3': stubAgent('someone-else') };
  const open = setup(t, hosts);
  const dir = open();
  const exits: string[] = [];
  dir.onVmExit((agent, id) => exits.push(`${agent}/${id}`));

  await assert.rejects(dir.register({ name: 'c', url: 'http://127.0.0.1:2', token: TOKEN }), { code: 'Unreachable', message: /does not answer/ });
  await assert.rejects(dir.register({ name: 'c', url: 'http://127.0.0.1:3', token: TOKEN }), { code: 'InvalidArgument', message: /calls itself "someone-else"/ });
  await assert.rejects(dir.register({ name: 'local', url: 'http://127.0.0.1:1', token: TOKEN }), { code: 'Conflict' });
  await assert.rejects(dir.register({ name: 'b', url: 'ftp://x', token: TOKEN }), { code: 'InvalidArgument' });
  await assert.rejects(dir.register({ name: 'b', url: 'http://127.0.0.1:1', token: 'short' }), { code: 'InvalidArgument' });
  assert.deepEqual(dir.names(), ['local'], 'refused registrations leave nothing');

  await dir.register({ name: 'b', url: 'http://127.0.0.1:1', token: TOKEN });
  assert.deepEqual(dir.names(), ['local', 'b']);
  assert.deepEqual(exits, ['b/vm1', 'b/vm2'], 'a (re)registered agent\'s VMs are re-checked');
  b.exit('vm3');
  assert.deepEqual(exits.at(-1), 'b/vm3', 'exits of a remote agent reach the listeners with its name');
  assert.throws(() => dir.get('nope'), { code: 'NotFound' });

  const listed = await dir.list((n) => (n === 'b' ? 2 : 0));
  assert.deepEqual(listed.map((a) => [a.name, a.local, a.state, a.vms, a.url]), [['local', true, 'up', 0, undefined], ['b', false, 'up', 2, 'http://127.0.0.1:1']]);
  assert.ok(!JSON.stringify(listed).includes(TOKEN), 'the token is never listed');

  const again = open();
  assert.deepEqual(again.names(), ['local', 'b'], 'registrations survive a control-plane restart');
  await again.remove('b');
  assert.equal(b.closed(), true);
  await assert.rejects(again.remove('local'), { code: 'Conflict' });
  assert.deepEqual(open().names(), ['local']);
});

test('agent directory: an agent that is down is listed down with the reason, not dropped', async (t) => {
  const flaky = stubAgent('b');
  const open = setup(t, { 'unix:/run/b.sock': flaky });
  const dir = open();
  await dir.register({ name: 'b', url: 'unix:/run/b.sock', token: TOKEN });
  (flaky.agent as unknown as { info: () => Promise<never> }).info = async () => {
    throw new Unavailable('agent b at unix:/run/b.sock: connect ENOENT');
  };
  const b = (await dir.list(() => 0)).find((a) => a.name === 'b');
  assert.equal(b?.state, 'down');
  assert.match(b?.reason ?? '', /ENOENT/);
});
