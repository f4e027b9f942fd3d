import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildOciSpec, type HostFacts } from './oci-spec.js';
import { WARM_BUSYBOX, WARM_STUB_ARGS, limitsOf, stubUnsuitable, warmCompatible, warmMounts, warmScript } from './warm-start.js';
import type { InstanceSpec } from '../instance-driver.js';

const host: HostFacts = {
  hardLimits: { RLIMIT_NOFILE: 1048576 },
  cgroupsPath: '/nimbus/x',
  userDb: { passwd: [{ name: 'app', uid: 1000, gid: 1000, home: '/home/app' }], group: [] },
};
const mounts = warmMounts('/bin/busybox', '/state/c/warm');
const base: InstanceSpec = { id: 'a'.repeat(64), name: 'n', rootfs: [], resources: {}, process: { args: ['true'], env: [], cwd: '/', user: '0' } };
const warm = buildOciSpec({ ...base, process: { ...base.process, args: WARM_STUB_ARGS } }, host, { mounts }).config;
const wanted = (over: Partial<InstanceSpec> = {}, proc: Partial<InstanceSpec['process']> = {}) =>
  buildOciSpec({ ...base, ...over, process: { ...base.process, ...proc } }, host, { mounts }).config;

test('a request differing only in command, env, cwd, limits and labels fits the warm container', () => {
  const c = wanted({ resources: { memoryBytes: 64 << 20, cpus: 0.5, pidsLimit: 10 }, labels: { a: 'b' } }, { args: ['sh', '-c', 'x'], env: ['A=1'], cwd: '/srv' });
  assert.equal(warmCompatible(warm, c), true);
  assert.deepEqual(limitsOf(c), { memory: { limit: 64 << 20, swap: 64 << 20, disableOOMKiller: false }, cpu: { quota: 50000, period: 100000 }, pids: { limit: 10 } });
  assert.equal(limitsOf(wanted()), undefined, 'no limits, no runc update');
});

test('anything else differing sends the request down the cold path', () => {
  assert.equal(warmCompatible(warm, wanted({}, { user: '1000' })), false, 'user');
  assert.equal(warmCompatible(warm, wanted({ hostname: 'web' })), false, 'hostname');
  assert.equal(warmCompatible(warm, wanted({ netnsPath: '/run/netns/x' })), false, 'network namespace');
  assert.equal(warmCompatible(warm, wanted({}, { terminal: true })), false, 'terminal');
  assert.equal(warmCompatible(warm, buildOciSpec(base, host).config), false, 'no stub mounts');
});

test('requests the stub cannot express are refused', () => {
  assert.equal(stubUnsuitable({ args: ['true'], env: ['A=1'], cwd: '/' }), undefined);
  assert.match(stubUnsuitable({ args: ['A=b'], env: [], cwd: '/' }) ?? '', /=/);
  assert.match(stubUnsuitable({ args: ['x\0y'], env: [], cwd: '/' }) ?? '', /NUL/);
  assert.match(stubUnsuitable({ args: ['true'], env: ['NOEQUALS'], cwd: '/' }) ?? '', /NAME=/);
  assert.match(stubUnsuitable({ args: [], env: [], cwd: '/' }) ?? '', /no command/);
});

test('the script execs exactly the requested argv, env and cwd (run by the real busybox sh)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-warm-'));
  try {
    const args = ['sh', '-c', 'printf "%s|" "$0" "$@"; echo; pwd; env | sort', "it's", 'two words', '$HOME', '-n', '"q"'];
    const env = ['PATH=/usr/bin:/bin', 'Q=a \'quoted\' $value', 'EMPTY='];
    const work = join(dir, 'new dir');
    // The script names /.nimbus/busybox; on the host, point it at the host's busybox.
    const script = warmScript({ args, env, cwd: work }).replaceAll(WARM_BUSYBOX, '/bin/busybox');
    writeFileSync(join(dir, 'entry'), script);
    const out = execFileSync('/bin/busybox', ['sh', join(dir, 'entry')], { env: { LEAK: 'no' } }).toString().split('\n');
    assert.equal(out[0], `it's|two words|$HOME|-n|"q"|`);
    assert.equal(out[1], work, 'missing working directory created, then entered');
    const envOut = out.slice(2).filter(Boolean);
    for (const kv of env) assert.ok(envOut.includes(kv), `${kv} in ${envOut.join(', ')}`);
    assert.ok(!envOut.some((l) => l.startsWith('LEAK=')), 'the stub environment does not leak into the process');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
