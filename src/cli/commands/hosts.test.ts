import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { hostSetBody, hostTable, hostText, parseRatio, type HostRow } from './hosts.js';
import { ApiServer } from '../../api/server.js';
import { hostRoutes } from '../../api/routes/hosts.js';
import { openStore } from '../../store/open.js';
import type { Services } from '../../control/services.js';
import { AgentDirectory } from '../../control/agents/agent-directory.js';
import { SPOKEN_PROTOCOL } from '../../agent/remote/agent-protocol.js';
import { FakeAgent } from '../../control/testing/fake-agent.js';

const GiB = 1024 ** 3;
const row = (over: Partial<HostRow> = {}): HostRow => ({
  name: 'b', local: false, url: 'https://10.0.0.2:7443', registeredAt: '2026-01-01T00:00:00.000Z', state: 'up', zone: 'eu-1a', labels: { ssd: 'true', gpu: '' },
  disabled: false, allocationRatios: { cpu: 4, memory: 1, disk: 1 }, hostname: 'b.example', kernel: '6.1.0', architecture: 'amd64',
  cpus: 8, memoryBytes: 16 * GiB, diskBytes: 100 * GiB, accelerator: 'kvm', runtimes: ['runc', 'crun'], lastSeenAt: '2026-01-01T00:00:50.000Z', vms: 1, containers: 3,
  ...over,
});

test('host set: labels, unset labels, ratios (a number or "default") into one body; nothing to change is a usage error', () => {
  assert.deepEqual(hostSetBody({ zone: 'eu-1a', label: ['ssd=true', 'empty='], 'unset-label': ['old'], 'cpu-ratio': '8', 'disk-ratio': 'default' }), {
    zone: 'eu-1a', labels: { ssd: 'true', empty: '' }, unsetLabels: ['old'], allocationRatios: { cpu: 8, disk: null },
  });
  assert.deepEqual(hostSetBody({ 'memory-ratio': '1.5' }), { allocationRatios: { memory: 1.5 } });
  assert.throws(() => hostSetBody({}), { name: 'UsageError', message: /nothing to change/ });
  assert.throws(() => hostSetBody({ label: ['novalue'] }), { name: 'UsageError', message: /KEY=VALUE/ });
  assert.throws(() => hostSetBody({ label: ['=v'] }), { name: 'UsageError' });
  for (const bad of ['0', '-1', 'x', '1e3', '']) assert.throws(() => parseRatio('--cpu-ratio', bad), { name: 'UsageError' }, bad);
  assert.equal(parseRatio('--cpu-ratio', '.5'), 0.5);
});

test('host ls: state with disabled beside it, labels, capacity, claimed/allocatable once the scheduler reports claims', () => {
  const text = hostTable([
    row({ allocated: { vcpus: 6, memoryBytes: 4 * GiB, diskBytes: 0, instances: 4 } }),
    row({ name: 'c', state: 'down', disabled: true, labels: {}, accelerator: undefined, runtimes: [] }),
    row({ name: 'local', local: true, state: 'unknown', cpus: undefined, memoryBytes: undefined, diskBytes: undefined, containers: undefined }),
  ]);
  const lines = text.trimEnd().split('\n').map((l) => l.split(/\s{3,}/));
  assert.deepEqual(lines[0], ['NAME', 'STATE', 'ZONE', 'LABELS', 'CPUS', 'MEMORY', 'DISK', 'CPU ALLOC', 'MEM ALLOC', 'CTRS', 'VMS', 'ACCEL', 'RUNTIMES']);
  assert.deepEqual(lines[1], ['b', 'up', 'eu-1a', 'ssd=true,gpu', '8', '16.0GiB', '100.0GiB', '6/32', '4.0GiB/16.0GiB', '3', '1', 'kvm', 'runc,crun']);
  assert.deepEqual(lines[2], ['c', 'down, disabled', 'eu-1a', '-', '8', '16.0GiB', '100.0GiB', '-', '-', '3', '1', '-', '-']);
  assert.deepEqual(lines[3], ['local', 'unknown', 'eu-1a', 'ssd=true,gpu', '-', '-', '-', '-', '-', '-', '1', 'kvm', 'runc,crun']);
});

test('host show: why it is down, who disabled it, ratios and when it last answered', () => {
  const now = Date.parse('2026-01-01T00:01:00.000Z');
  const text = hostText(row({ state: 'down', reason: 'connect ECONNREFUSED', disabled: true, disabledReason: 'disk swap', disabledBy: 'root', disabledAt: '2026-01-01T00:00:00.000Z' }), now);
  assert.match(text, /^State: +down \(connect ECONNREFUSED\)$/m);
  assert.match(text, /^Disabled: +yes: disk swap \(by root, About a minute ago\)$/m);
  assert.match(text, /^CPUs: +8 \(ratio 4: 32 allocatable\)$/m);
  assert.match(text, /^Last seen: +2026-01-01T00:00:50.000Z \(10 seconds ago\)$/m);
  assert.match(hostText(row({ lastSeenAt: undefined })), /^Last seen: +never$/m);
});

test('host commands against a real API: ls, set, disable, enable, show, rm (the embedded host refused)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-host-cli-'));
  const store = await openStore(join(dir, 'nimbus.db'));
  const agents = await AgentDirectory.open(store, new FakeAgent({ name: 'local' }), 'local', () => new FakeAgent({ name: 'b', cpus: 16 }), undefined, { refreshIntervalMs: 0 });
  await agents.register({ name: 'b', url: 'unix:/run/b.sock', token: 't'.repeat(32), protocol: SPOKEN_PROTOCOL });
  // the unix socket's caller is the local administrator
  const services = { store, agents, vms: { countOn: async () => 0 }, identity: { localAdmin: () => undefined } } as unknown as Services;
  const server = new ApiServer(hostRoutes, services);
  const socket = join(dir, 'api.sock');
  await server.listenUnix(socket);
  t.after(async () => {
    await server.close();
    await agents.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  // the real CLI in a process of its own, as an operator runs it
  const cli = fileURLToPath(new URL('../../../../bin/nimbus', import.meta.url));
  const nimbus = (args: string[], output: 'json' | 'table' = 'json') =>
    new Promise<{ code: number; out: string; err: string }>((ok, fail) => {
      execFile(process.execPath, [cli, '--socket', socket, '-o', output, ...args], { env: { ...process.env, NIMBUS_TOKEN: '' } }, (e, out, err) => {
        if (e && typeof e.code !== 'number') fail(e);
        else ok({ code: e ? Number(e.code) : 0, out, err });
      });
    });

  let r = await nimbus(['host', 'set', 'b', '--zone', 'eu-1a', '--label', 'ssd=true', '--cpu-ratio', '2']);
  assert.equal(r.code, 0);
  assert.deepEqual((({ zone, labels, allocationRatios }) => ({ zone, labels, allocationRatios }))(JSON.parse(r.out) as HostRow), {
    zone: 'eu-1a', labels: { ssd: 'true' }, allocationRatios: { cpu: 2, memory: 1, disk: 1 },
  });
  r = await nimbus(['host', 'disable', '--reason', 'maintenance', 'b', 'nope']);
  assert.deepEqual([r.code, r.out], [1, 'b\n'], 'each host in turn; an unknown one fails the exit code');
  assert.match(r.err, /no such host: nope/);
  r = await nimbus(['host', 'ls'], 'table');
  assert.match(r.out, /^b +up, disabled +eu-1a +ssd=true +16 /m);
  assert.match(r.out, /^local +up +default +- /m);
  r = await nimbus(['host', 'show', 'b'], 'table');
  assert.match(r.out, /^Disabled: +yes: maintenance \(by /m);
  r = await nimbus(['host', 'enable', 'b']);
  assert.equal(r.code, 0);
  assert.equal((JSON.parse((await nimbus(['host', 'show', 'b'])).out) as HostRow).disabled, false);
  r = await nimbus(['host', 'rm', 'local']);
  assert.equal(r.code, 1);
  assert.match(r.err, /embedded agent cannot be removed/);
  r = await nimbus(['host', 'rm', 'b']);
  assert.deepEqual([r.code, r.out], [0, 'b\n']);
  r = await nimbus(['host', 'ls']);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual((JSON.parse(r.out) as HostRow[]).map((h) => h.name), ['local']);
});
