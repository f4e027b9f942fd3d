/** Every filter and weigher on hand-made hosts, and the words of an explanation. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_FILTERS, acceleratorFilter, beyondCapacity, architectureFilter, constraintsFilter, cpuFilter, diskFilter, enabledFilter, firstRejection, formatBytes,
  instancesFilter, memoryFilter, pinnedHostFilter, runtimeFilter, serverGroupFilter, upFilter, zoneFilter, type FilterInput, type HostState,
} from './filters.js';
import {
  DEFAULT_MULTIPLIERS, DEFAULT_WEIGHERS, cpuWeigher, imageLocalityWeigher, memoryWeigher, normalise, projectSpreadWeigher, serverGroupWeigher, weigh,
  weighTotals, type WeighInput,
} from './weighers.js';
import { noHostError, noHostMessage, summarise } from './explain.js';
import { limitsOf, needOf } from './filter-scheduler.js';
import type { HostCandidate, PlacementRequest } from './types.js';
import type { ServerGroupRecord } from '../../store/repos/placement.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function candidate(name: string, over: Partial<HostCandidate> = {}): HostCandidate {
  return {
    name, state: 'up', disabled: false, zone: 'z1', labels: { ssd: 'yes' }, cpus: 4, memoryBytes: 8 * GiB, diskBytes: 100 * GiB,
    accelerator: 'kvm', runtimes: ['runc'], architecture: 'amd64', ...over,
  };
}

function host(name: string, over: Partial<HostCandidate> = {}, used: Partial<HostState['usage']> = {}, counts: { project?: number; group?: number } = {}): HostState {
  const c = candidate(name, over);
  return {
    candidate: c, limits: limitsOf(c),
    usage: { host: name, millicpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0, generation: 0, ...used },
    projectInstances: counts.project ?? 0, groupMembers: counts.group ?? 0,
  };
}

function request(over: Partial<PlacementRequest> = {}): PlacementRequest {
  return { consumerId: 'c1', projectId: 'p1', kind: 'container', vcpus: 1, memoryBytes: GiB, diskBytes: 0, ...over };
}

function input(req: Partial<PlacementRequest> = {}, group?: ServerGroupRecord, groupHosts: string[] = []): FilterInput {
  const r = request(req);
  return { req: r, need: needOf(r), groupHosts: new Set(groupHosts), ...(group ? { group } : {}) };
}

const group = (policy: ServerGroupRecord['policy']): ServerGroupRecord => ({ id: 'g1', projectId: 'p1', name: 'web', policy, createdAt: 'then' });

test('filters: pinned host, enabled (skipped when pinned), up', () => {
  assert.equal(pinnedHostFilter.reject(host('h1'), input()), undefined);
  assert.equal(pinnedHostFilter.reject(host('h1'), input({ host: 'h2' })), 'not the requested host h2');
  assert.equal(pinnedHostFilter.reject(host('h2'), input({ host: 'h2' })), undefined);
  assert.equal(enabledFilter.reject(host('h1', { disabled: true }), input()), 'disabled');
  assert.equal(enabledFilter.reject(host('h1', { disabled: true }), input({ host: 'h1' })), undefined, 'an administrator may pin to a disabled host');
  assert.equal(enabledFilter.reject(host('h1'), input()), undefined);
  assert.equal(upFilter.reject(host('h1'), input()), undefined);
  assert.equal(upFilter.reject(host('h1', { state: 'down' }), input()), 'down (not answering)');
  assert.equal(upFilter.reject(host('h1', { state: 'unknown' }), input({ host: 'h1' })), 'state unknown (not heard from yet)');
});

test('filters: zone, constraints (labels), architecture, runtime', () => {
  assert.equal(zoneFilter.reject(host('h1'), input()), undefined);
  assert.equal(zoneFilter.reject(host('h1'), input({ zone: 'z1' })), undefined);
  assert.equal(zoneFilter.reject(host('h1', { zone: 'z2' }), input({ zone: 'z1' })), 'zone is z2, not z1');
  assert.equal(constraintsFilter.reject(host('h1'), input({ constraints: { ssd: 'yes' } })), undefined);
  assert.equal(constraintsFilter.reject(host('h1'), input({ constraints: { ssd: 'no' } })), 'label ssd is yes, not no');
  assert.equal(constraintsFilter.reject(host('h1'), input({ constraints: { ssd: 'yes', gpu: 'a100' } })), 'no label gpu (gpu=a100 required)');
  assert.equal(architectureFilter.reject(host('h1'), input({ architecture: 'amd64' })), undefined);
  assert.equal(architectureFilter.reject(host('h1', { architecture: 'arm64' }), input({ architecture: 'amd64' })), 'architecture is arm64, not amd64');
  assert.equal(architectureFilter.reject(host('h1', { architecture: 'arm64' }), input()), undefined);
  assert.equal(runtimeFilter.reject(host('h1'), input({ runtime: 'runc' })), undefined);
  assert.equal(runtimeFilter.reject(host('h1'), input({ runtime: 'runsc' })), 'no runtime runsc (has runc)');
  assert.equal(runtimeFilter.reject(host('h1', { runtimes: [] }), input({ runtime: 'crun' })), 'no runtime crun (has none)');
});

test('filters: accelerator: VMs need one, a request may name one', () => {
  const noVm = host('h1', { accelerator: undefined });
  assert.equal(acceleratorFilter.reject(noVm, input()), undefined, 'containers need none');
  assert.equal(acceleratorFilter.reject(noVm, input({ kind: 'vm' })), 'runs no VMs (no kvm or tcg)');
  assert.equal(acceleratorFilter.reject(host('h1', { accelerator: 'tcg' }), input({ kind: 'vm' })), undefined);
  assert.equal(acceleratorFilter.reject(host('h1', { accelerator: 'tcg' }), input({ kind: 'vm', accelerator: 'kvm' })), 'accelerator is tcg, not kvm');
  assert.equal(acceleratorFilter.reject(noVm, input({ accelerator: 'kvm' })), 'no accelerator (kvm required)');
});

test('filters: free cpu, memory, disk and instances, with allocation ratios', () => {
  // 4 CPUs × 2.0 = 8, 7.5 used: 0.5 free
  const h = host('h1', { allocationRatios: { cpu: 2, memory: 1, disk: 1 } }, { millicpus: 7500 });
  assert.equal(cpuFilter.reject(h, input({ vcpus: 0.5 })), undefined);
  assert.equal(cpuFilter.reject(h, input({ vcpus: 1 })), 'cpu 0.5 vCPUs free of 1 needed');
  const m = host('h2', { memoryBytes: 4 * GiB }, { memoryBytes: 0.1 * GiB });
  assert.equal(memoryFilter.reject(m, input({ memoryBytes: 4 * GiB })), 'memory 3.9 GiB free of 4 GiB needed');
  assert.equal(memoryFilter.reject(m, input({ memoryBytes: 3.8 * GiB })), undefined);
  assert.equal(memoryFilter.reject(host('h3', { memoryBytes: 4 * GiB, allocationRatios: { cpu: 1, memory: 1.5, disk: 1 } }), input({ memoryBytes: 6 * GiB })), undefined);
  assert.equal(diskFilter.reject(host('h4', { diskBytes: 0 }), input({ diskBytes: 512 * 1024 ** 2 })), 'disk 0 B free of 512 MiB needed');
  assert.equal(diskFilter.reject(host('h4'), input({ diskBytes: 100 * GiB })), undefined);
  assert.equal(instancesFilter.reject(host('h5', { maxInstances: 2 }, { instances: 2 }), input()), 'instances: holds 2 of at most 2');
  assert.equal(instancesFilter.reject(host('h5', { maxInstances: 3 }, { instances: 2 }), input()), undefined);
  assert.equal(instancesFilter.reject(host('h5', {}, { instances: 2000 }), input()), undefined, 'no limit unless the host has one');
});

test('filters: server group: hard anti-affinity keeps members apart, hard affinity together, soft ones never refuse', () => {
  assert.equal(serverGroupFilter.reject(host('h1'), input({}, group('anti-affinity'), ['h1'])), 'holds a member of server group web (anti-affinity)');
  assert.equal(serverGroupFilter.reject(host('h2'), input({}, group('anti-affinity'), ['h1'])), undefined);
  assert.equal(serverGroupFilter.reject(host('h2'), input({}, group('affinity'), ['h1'])), "server group web's members are on h1 (affinity)");
  assert.equal(serverGroupFilter.reject(host('h1'), input({}, group('affinity'), ['h1'])), undefined);
  assert.equal(serverGroupFilter.reject(host('h2'), input({}, group('affinity'), [])), undefined, 'the first member goes anywhere');
  assert.equal(serverGroupFilter.reject(host('h1'), input({}, group('soft-anti-affinity'), ['h1'])), undefined);
  assert.equal(serverGroupFilter.reject(host('h2'), input({}, group('soft-affinity'), ['h1'])), undefined);
});

test('filters: the first rejecting filter is named, in order', () => {
  const h = host('h1', { disabled: true, zone: 'z2' }, { memoryBytes: 8 * GiB });
  assert.deepEqual(firstRejection(DEFAULT_FILTERS, h, input({ zone: 'z1' })), { filter: 'enabled', reason: 'disabled' });
  assert.deepEqual(firstRejection(DEFAULT_FILTERS, h, input({ zone: 'z1', host: 'h1' })), { filter: 'zone', reason: 'zone is z2, not z1' });
  assert.deepEqual(firstRejection(DEFAULT_FILTERS, h, input({ host: 'h1' })), { filter: 'memory', reason: 'memory 0 B free of 1 GiB needed' });
  assert.equal(firstRejection(DEFAULT_FILTERS, host('h2'), input()), undefined);
});

test('request and host units: CPUs in thousandths rounded against the request, ratios floored, bad numbers refused', () => {
  assert.deepEqual(needOf(request({ vcpus: 0.3333, memoryBytes: 10.5 })), { millicpus: 334, memoryBytes: 11, diskBytes: 0 });
  assert.deepEqual(limitsOf(candidate('h', { cpus: 3, allocationRatios: { cpu: 1.5, memory: 0.9, disk: 1 }, maxInstances: 7 })),
    { millicpus: 4500, memoryBytes: Math.floor(8 * GiB * 0.9), diskBytes: 100 * GiB, instances: 7 });
  assert.throws(() => needOf(request({ vcpus: -1 })), /vcpus must be a non-negative number/);
  assert.throws(() => needOf(request({ memoryBytes: Number.NaN })), /memoryBytes/);
  assert.equal(formatBytes(4 * GiB, 'up'), '4 GiB');
  assert.equal(formatBytes(4 * GiB - 1), '4 GiB', 'a few bytes short reads as a person would say it');
  assert.equal(formatBytes(3.95 * GiB), '3.9 GiB');
  assert.equal(memoryFilter.reject(host('m', { memoryBytes: 4 * GiB - 1 }), input({ memoryBytes: 4 * GiB })), 'memory 4294967295 B free of 4294967296 B needed', 'never "4 GiB free of 4 GiB needed"');
  assert.equal(memoryFilter.reject(host('m', { memoryBytes: 4 * GiB - 2 * MiB }), input({ memoryBytes: 4 * GiB })), 'memory 3.9 GiB free of 4 GiB needed');
  assert.equal(formatBytes(4 * GiB + 1, 'up'), '4.1 GiB');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(-5), '0 B');
});

test('weighers: normalised as Nova does, times their multipliers', () => {
  assert.deepEqual(normalise([2, 4, 6]), [0, 0.5, 1]);
  assert.deepEqual(normalise([3, 3]), [0, 0]);
  assert.deepEqual(normalise([]), []);
  const hosts = [host('a', {}, { memoryBytes: 6 * GiB, millicpus: 1000 }), host('b', {}, { memoryBytes: 2 * GiB, millicpus: 3000 }), host('c', {}, { memoryBytes: 4 * GiB, millicpus: 2000 })];
  const need = needOf(request());
  const spread: WeighInput = { need, strategy: 'spread' };
  assert.deepEqual(hosts.map((h) => memoryWeigher.raw(h, spread)), [GiB, 5 * GiB, 3 * GiB]);
  assert.deepEqual(hosts.map((h) => cpuWeigher.raw(h, spread)), [2000, 0, 1000]);
  const only = (w: typeof memoryWeigher, i: WeighInput) => weigh(hosts, i, [w], DEFAULT_MULTIPLIERS).map((x) => x.total);
  assert.deepEqual(only(memoryWeigher, spread), [0, 1, 0.5], 'spread: most free memory wins');
  assert.deepEqual(only(memoryWeigher, { ...spread, strategy: 'pack' }), [0, -1, -0.5], 'pack: least free memory wins');
  assert.deepEqual(weigh(hosts, spread, [memoryWeigher], { ...DEFAULT_MULTIPLIERS, memory: 2.5 }).map((x) => x.total), [0, 2.5, 1.25]);
  // image locality: only with a known image
  assert.deepEqual(only(imageLocalityWeigher, { ...spread, imageHosts: new Set(['c']) }), [0, 0, 3]);
  assert.deepEqual(weigh(hosts, spread, [imageLocalityWeigher], DEFAULT_MULTIPLIERS).map((x) => x.parts), [{}, {}, {}], 'no image: no part');
  // fewest of the project
  const counted = [host('a', {}, {}, { project: 3 }), host('b', {}, {}, { project: 0 }), host('c', {}, {}, { project: 1 })];
  assert.deepEqual(weigh(counted, spread, [projectSpreadWeigher], DEFAULT_MULTIPLIERS).map((x) => x.total), [0, 0.5, (2 / 3) * 0.5]);
  // groups: anti-affinity fewest members, affinity most, soft ten times stronger
  const members = [host('a', {}, {}, { group: 2 }), host('b', {}, {}, { group: 0 })];
  const byGroup = (policy: ServerGroupRecord['policy']) => weigh(members, { ...spread, group: group(policy) }, [serverGroupWeigher], DEFAULT_MULTIPLIERS).map((x) => x.total);
  assert.deepEqual(byGroup('soft-anti-affinity'), [0, 10]);
  assert.deepEqual(byGroup('soft-affinity'), [10, 0]);
  assert.deepEqual(byGroup('anti-affinity'), [0, 1]);
  assert.deepEqual(weigh(members, spread, [serverGroupWeigher], DEFAULT_MULTIPLIERS).map((x) => x.total), [0, 0], 'no group: no part');
  // all together: the parts add up
  const all = weigh(hosts, { ...spread, imageHosts: new Set(['a']) }, DEFAULT_WEIGHERS, DEFAULT_MULTIPLIERS);
  for (const w of all) assert.equal(w.total, Object.values(w.parts).reduce((a, b) => a + (b ?? 0), 0));
  assert.ok(all[0]!.total > all[1]!.total, 'a host holding the image beats a freer one');
});

test('explanations: each host and its filter, pinned requests name only the pin, long lists counted, members see counts', () => {
  const verdicts = [
    { host: 'h1', rejectedBy: { filter: 'enabled', reason: 'disabled' } },
    { host: 'h2', rejectedBy: { filter: 'memory', reason: 'memory 3.9 GiB free of 4 GiB needed' } },
    { host: 'h3', rejectedBy: { filter: 'zone', reason: 'zone is z2, not z1' } },
  ];
  assert.equal(noHostMessage(request(), verdicts), 'no host can take this container: h1: disabled; h2: memory 3.9 GiB free of 4 GiB needed; h3: zone is z2, not z1');
  assert.equal(noHostMessage(request({ kind: 'vm', host: 'h2' }), verdicts), 'no host can take this VM: h2: memory 3.9 GiB free of 4 GiB needed');
  assert.equal(noHostMessage(request({ kind: 'secure-container' }), []), 'no host can take this secure container: no hosts are registered');
  const many = Array.from({ length: 20 }, (_, i) => ({ host: `h${String(i).padStart(2, '0')}`, rejectedBy: i % 2 ? { filter: 'zone', reason: 'zone is z2, not z1' } : { filter: 'cpu', reason: 'cpu 0 vCPUs free of 1 needed' } }));
  const m = noHostMessage(request(), many);
  assert.match(m, /h11: zone is z2, not z1; and 8 more hosts \(cpu: 4, zone: 4\)$/);
  assert.doesNotMatch(m, /h12/);
  const e = noHostError(request(), verdicts);
  assert.equal(e.code, 'ResourceExhausted');
  assert.deepEqual(e.details?.rejected, { enabled: 1, memory: 1, zone: 1 });
  assert.deepEqual(e.details?.hosts, verdicts);
  assert.doesNotMatch(e.message, /no valid host/i);
  // only the request's own constraints ruled every host out: the caller's to change (409), not a lack of capacity (507)
  const unsatisfiable = noHostError(request({ zone: 'nowhere' }), [{ host: 'h1', rejectedBy: { filter: 'zone', reason: 'zone is z1, not nowhere' } }, { host: 'h2', rejectedBy: { filter: 'runtime', reason: 'no crun' } }]);
  assert.equal(unsatisfiable.code, 'Conflict');
  assert.equal(noHostError(request(), [{ host: 'h1', rejectedBy: { filter: 'zone', reason: 'z' } }, { host: 'h2', rejectedBy: { filter: 'up', reason: 'down' } }]).code, 'ResourceExhausted', 'a host down: capacity may come back');
  // more than a host holds in all (beyond): no capacity freed would help, on those hosts
  const cpu = (host: string) => ({ host, rejectedBy: { filter: 'cpu', reason: 'cpu 8 vCPUs free of 222.18 needed' } });
  const tooLarge = noHostError(request(), [cpu('h1'), cpu('h2')], new Set(['h1', 'h2']));
  assert.equal(tooLarge.code, 'Conflict');
  assert.match(tooLarge.message, /h2: cpu 8 vCPUs free of 222.18 needed; it asks for more than any host holds in all$/);
  const mixed = noHostError(request({ zone: 'z1' }), [cpu('h1'), { host: 'h2', rejectedBy: { filter: 'zone', reason: 'zone is z2, not z1' } }], new Set(['h1']));
  assert.equal(mixed.code, 'Conflict', 'one host too small, the other in another zone: the request rules both out');
  assert.doesNotMatch(mixed.message, /more than any host/);
  assert.equal(noHostError(request(), [cpu('h1'), cpu('h2')], new Set(['h1'])).code, 'ResourceExhausted', 'h2 could take it once it has room');
  assert.equal(beyondCapacity({ millicpus: 8001, memoryBytes: 0, diskBytes: 0 }, { millicpus: 8000, memoryBytes: 1, diskBytes: 1 }), true);
  assert.equal(beyondCapacity({ millicpus: 8000, memoryBytes: 1, diskBytes: 1 }, { millicpus: 8000, memoryBytes: 1, diskBytes: 1 }), false);
  assert.deepEqual(summarise({ hosts: [...verdicts, { host: 'h4', weight: 1 }], chosen: 'h4' }),
    { fits: true, hosts: 4, rejected: { enabled: 1, memory: 1, zone: 1 }, message: '4 hosts: 1 can take it, 1 rejected by enabled, 1 rejected by memory, 1 rejected by zone' });
  assert.equal(summarise({ hosts: [] }).message, '0 hosts');
});

test('filters: the fast test (passes) and the words (reject) agree on every host and request of a grid; weighTotals gives weigh()\'s totals', () => {
  const hosts = [
    host('h1'), host('h2', { disabled: true }), host('h3', { state: 'down' }), host('h4', { state: 'unknown' }), host('h5', { zone: 'z2', labels: {} }),
    host('h6', { labels: { ssd: 'no' } }), host('h7', { architecture: 'arm64', runtimes: [] }), host('h8', { accelerator: undefined }),
    host('h9', {}, { millicpus: 3900, memoryBytes: 7.5 * GiB, diskBytes: 99 * GiB }), host('h10', { maxInstances: 2 }, { instances: 2 }),
    host('h11', {}, { millicpus: 1000, memoryBytes: 3 * GiB }, { project: 2, group: 1 }), host('h12', { cpus: 8 }, { millicpus: 500 }, { project: 1 }),
  ];
  const inputs = [
    input(), input({ host: 'h2' }), input({ zone: 'z2' }), input({ constraints: { ssd: 'yes' } }), input({ constraints: { gpu: '1' } }),
    input({ architecture: 'amd64' }), input({ runtime: 'crun' }), input({ kind: 'vm' }), input({ accelerator: 'tcg' }),
    input({ vcpus: 0.5, memoryBytes: 600 * MiB, diskBytes: 2 * GiB }), input({}, group('anti-affinity'), ['h1']), input({}, group('affinity'), ['h3']),
    input({}, group('soft-affinity'), ['h3']),
  ];
  let rejected = 0;
  for (const f of DEFAULT_FILTERS) {
    for (const h of hosts) {
      for (const i of inputs) {
        const words = f.reject(h, i);
        assert.equal(f.passes(h, i), words === undefined, `${f.name} on ${h.candidate.name} for ${JSON.stringify(i.req)}: ${words}`);
        if (words !== undefined) {
          assert.ok(words.length > 0, `${f.name} says why`);
          rejected++;
        }
      }
    }
  }
  assert.ok(rejected > 50, `the grid exercises rejections (${rejected})`);
  const passed = hosts.filter((h) => DEFAULT_FILTERS.every((f) => f.passes(h, input())));
  const weighIn: WeighInput = { need: input().need, strategy: 'spread', imageHosts: new Set(['h12']), group: group('soft-anti-affinity') };
  assert.ok(new Set(weigh(passed, weighIn, DEFAULT_WEIGHERS, DEFAULT_MULTIPLIERS).map((w) => w.total)).size >= 3, 'the hosts weigh differently');
  assert.deepEqual([...weighTotals(passed, weighIn, DEFAULT_WEIGHERS, DEFAULT_MULTIPLIERS)], weigh(passed, weighIn, DEFAULT_WEIGHERS, DEFAULT_MULTIPLIERS).map((w) => w.total));
});
