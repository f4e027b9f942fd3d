import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { hasCode } from '../../../core/errors.js';
import type { InstanceSpec } from '../instance-driver.js';
import {
  DEFAULT_CAPABILITIES,
  BEST_EFFORT_OOM_SCORE_ADJ,
  DEFAULT_PIDS_LIMIT,
  buildOciSpec,
  clampRlimits,
  cpuQuota,
  mergeEnv,
  parseGroup,
  parsePasswd,
  parseProcLimits,
  readHardLimits,
  readUserDb,
  resolveUser,
  type HostFacts,
} from './oci-spec.js';

const PASSWD = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# comment
bad line
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`;
const GROUP = `root:x:0:
wheel:x:10:app,root
app:x:1000:
docker:x:999:app
nogroup:x:65534:
`;
const db = { passwd: parsePasswd(PASSWD), group: parseGroup(GROUP) };

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max stack size            8388608              unlimited            bytes     
Max processes             96365                96365                processes 
Max open files            20000                20000                files     
Max locked memory         8388608              8388608              bytes     
Max realtime timeout      unlimited            unlimited            us        
`;

function spec(over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    id: 'abcdef0123456789',
    name: 'web',
    rootfs: [],
    process: { args: ['/bin/sh', '-c', 'echo hi'], env: ['FOO=bar'], cwd: '/', user: '' },
    resources: {},
    ...over,
  };
}
const host: HostFacts = { hardLimits: parseProcLimits(LIMITS), cgroupsPath: '/nimbus/abcdef0123456789', userDb: db };

test('parse /proc/self/limits', () => {
  const l = parseProcLimits(LIMITS);
  assert.equal(l['RLIMIT_NOFILE'], 20000);
  assert.equal(l['RLIMIT_NPROC'], 96365);
  assert.equal(l['RLIMIT_STACK'], Infinity);
  assert.equal(l['RLIMIT_RTTIME'], Infinity);
  assert.equal(l['RLIMIT_MEMLOCK'], 8388608);
});

test('passwd/group parsing skips junk', () => {
  assert.equal(db.passwd.length, 4);
  assert.deepEqual(db.passwd[2], { name: 'app', uid: 1000, gid: 1000, home: '/home/app' });
  assert.deepEqual(db.group.find((g) => g.name === 'wheel')?.members, ['app', 'root']);
});

test('user resolution', () => {
  assert.deepEqual(resolveUser('', db).user, { uid: 0, gid: 0 });
  assert.deepEqual(resolveUser('1000:1000', db).user, { uid: 1000, gid: 1000 });
  assert.deepEqual(resolveUser('1234', db).user, { uid: 1234, gid: 0 }); // no entry → gid 0
  assert.deepEqual(resolveUser('1000', db), { user: { uid: 1000, gid: 1000, additionalGids: [10, 999] }, home: '/home/app' });
  assert.deepEqual(resolveUser('nobody', db).user, { uid: 65534, gid: 65534 });
  assert.deepEqual(resolveUser('app:docker', db).user, { uid: 1000, gid: 999 });
  assert.deepEqual(resolveUser('app:5', db).user, { uid: 1000, gid: 5 });
  assert.deepEqual(resolveUser('42:nogroup', db).user, { uid: 42, gid: 65534 });
  assert.ok(hasCode(catchErr(() => resolveUser('ghost', db)), 'InvalidArgument'));
  assert.ok(hasCode(catchErr(() => resolveUser('app:ghosts', db)), 'InvalidArgument'));
  // an image without /etc/passwd still takes numeric users
  assert.deepEqual(resolveUser('1000:1000', { passwd: [], group: [] }).user, { uid: 1000, gid: 1000 });
});

function catchErr(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

test('rlimit clamp names what was clamped', () => {
  const r = clampRlimits(
    [
      { type: 'RLIMIT_NOFILE', soft: 1048576, hard: 1048576 },
      { type: 'RLIMIT_NPROC', soft: 4096, hard: 4096 },
      { type: 'RLIMIT_CORE', soft: 0, hard: 0 },
    ],
    { RLIMIT_NOFILE: 20000, RLIMIT_NPROC: 96365 },
  );
  assert.deepEqual(r.rlimits[0], { type: 'RLIMIT_NOFILE', soft: 20000, hard: 20000 });
  assert.deepEqual(r.rlimits[1], { type: 'RLIMIT_NPROC', soft: 4096, hard: 4096 });
  assert.equal(r.warnings.length, 1);
  assert.match(r.warnings[0]!, /RLIMIT_NOFILE 1048576:1048576 clamped to 20000:20000/);
  // soft alone above hard
  const s = clampRlimits([{ type: 'RLIMIT_NOFILE', soft: 5000, hard: 800 }], { RLIMIT_NOFILE: 1000 });
  assert.deepEqual(s.rlimits[0], { type: 'RLIMIT_NOFILE', soft: 1000, hard: 800 });
});

test('property: clamped rlimits never exceed the hard limit held', () => {
  fc.assert(
    fc.property(fc.nat(1 << 30), fc.nat(1 << 30), fc.nat(1 << 30), (soft, hard, held) => {
      const r = clampRlimits([{ type: 'RLIMIT_NOFILE', soft, hard }], { RLIMIT_NOFILE: held });
      const x = r.rlimits[0]!;
      return x.soft <= held && x.hard <= held && (r.warnings.length === 0) === (soft <= held && hard <= held);
    }),
  );
});

test('cpu quota from fractional cpus', () => {
  assert.deepEqual(cpuQuota(0.5), { quota: 50000, period: 100000 });
  assert.deepEqual(cpuQuota(2), { quota: 200000, period: 100000 });
  assert.deepEqual(cpuQuota(0.001), { quota: 1000, period: 100000 });
  assert.throws(() => cpuQuota(0));
});

test('env merge and defaults', () => {
  assert.deepEqual(mergeEnv(['PATH=/a', 'X=1'], ['X=2', 'PATH=/b']), ['PATH=/b', 'X=2']);
  const { config } = buildOciSpec(spec(), host);
  assert.ok(config.process.env.includes('PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'));
  assert.ok(config.process.env.includes('HOSTNAME=abcdef012345'));
  assert.ok(config.process.env.includes('HOME=/root'));
  assert.ok(config.process.env.includes('FOO=bar'));
  const c2 = buildOciSpec(spec({ process: { args: ['x'], env: ['PATH=/only'], cwd: '/', user: 'app' } }), host).config;
  assert.deepEqual(c2.process.env.filter((e) => e.startsWith('PATH=')), ['PATH=/only']);
  assert.ok(c2.process.env.includes('HOME=/home/app'));
});

test('full spec: namespaces, mounts, caps, masks, resources, cgroups path', () => {
  const { config, warnings } = buildOciSpec(
    spec({ hostname: 'web-1', resources: { memoryBytes: 16 << 20, cpus: 0.5, pidsLimit: 20 }, labels: { a: 'b' } }),
    host,
  );
  assert.deepEqual(warnings, []);
  assert.equal(config.ociVersion, '1.0.2');
  assert.equal(config.hostname, 'web-1');
  assert.equal(config.process.terminal, false);
  assert.equal(config.process.noNewPrivileges, true);
  assert.deepEqual(config.root, { path: 'rootfs', readonly: false });
  assert.deepEqual(
    config.linux.namespaces.map((n) => n.type),
    ['pid', 'ipc', 'uts', 'mount', 'network'],
  );
  assert.equal(config.linux.namespaces.find((n) => n.type === 'network')?.path, undefined);
  assert.deepEqual(
    config.mounts.map((m) => m.destination),
    ['/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys', '/sys/fs/cgroup'],
  );
  assert.ok(config.mounts.find((m) => m.destination === '/sys')?.options?.includes('ro'));
  assert.deepEqual(config.process.capabilities.bounding, DEFAULT_CAPABILITIES);
  assert.ok(!config.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
  assert.ok(config.linux.maskedPaths.includes('/proc/kcore'));
  assert.ok(config.linux.readonlyPaths.includes('/proc/sys'));
  assert.deepEqual(config.linux.resources.memory, { limit: 16 << 20, swap: 16 << 20, disableOOMKiller: false });
  assert.deepEqual(config.linux.resources.cpu, { quota: 50000, period: 100000 });
  assert.deepEqual(config.linux.resources.pids, { limit: 20 });
  // no limit asked: the default, so a fork bomb stops at its own cgroup
  assert.deepEqual(buildOciSpec(spec({}), host).config.linux.resources.pids, { limit: DEFAULT_PIDS_LIMIT });
  assert.deepEqual(config.linux.resources.pids, { limit: 20 });
  assert.equal(config.process.oomScoreAdj, 0, 'sized: an OOM score of 0 set, not inherited from whoever launched it');
  assert.deepEqual(config.linux.resources.devices, [{ allow: false, access: 'rwm' }]);
  assert.equal(config.linux.cgroupsPath, '/nimbus/abcdef0123456789');
  assert.deepEqual(config.process.rlimits, [
    { type: 'RLIMIT_NOFILE', soft: 1024, hard: 1024 },
    { type: 'RLIMIT_NPROC', soft: 4096, hard: 4096 },
  ]);
  assert.deepEqual(config.annotations, { a: 'b' });
  // pure: same input, same output, serialisable
  assert.deepEqual(JSON.parse(JSON.stringify(config)), buildOciSpec(
    spec({ hostname: 'web-1', resources: { memoryBytes: 16 << 20, cpus: 0.5, pidsLimit: 20 }, labels: { a: 'b' } }),
    host,
  ).config);
});

test('netns path, no resources, warnings from clamping, bad input', () => {
  const { config, warnings } = buildOciSpec(spec({ netnsPath: '/var/run/netns/n1' }), {
    ...host,
    hardLimits: { RLIMIT_NOFILE: 512 },
  });
  assert.deepEqual(config.linux.namespaces.find((n) => n.type === 'network'), { type: 'network', path: '/var/run/netns/n1' });
  assert.equal(config.linux.resources.memory, undefined);
  assert.equal(config.process.oomScoreAdj, BEST_EFFORT_OOM_SCORE_ADJ, 'no memory limit: best effort, the OOM killer\'s first pick');
  assert.equal(config.linux.resources.cpu, undefined);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /RLIMIT_NOFILE/);
  assert.throws(() => buildOciSpec(spec({ process: { args: [], env: [], cwd: '/', user: '' } }), host));
  assert.throws(() => buildOciSpec(spec({ resources: { memoryBytes: -1 } }), host));
  assert.throws(() => buildOciSpec(spec({ resources: { pidsLimit: 0 } }), host));
  assert.throws(() => buildOciSpec(spec({ process: { args: ['x'], env: [], cwd: 'rel', user: '' } }), host));
});

test('impure helpers: readUserDb (refuses symlinks out of the rootfs, on the way too), readHardLimits', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nimbus-ocispec-'));
  try {
    assert.deepEqual(await readUserDb(dir), { passwd: [], group: [] });
    await mkdir(path.join(dir, 'etc'));
    await writeFile(path.join(dir, 'etc/passwd'), PASSWD);
    await symlink('/etc/group', path.join(dir, 'etc/group'));
    const d = await readUserDb(dir);
    assert.equal(d.passwd.length, 4);
    assert.deepEqual(d.group, []);
    // an image (or a workload, before an exec -u) whose /etc is a symlink to the host's: not read
    const other = await mkdtemp(path.join(tmpdir(), 'nimbus-ocispec-'));
    try {
      await symlink('/etc', path.join(other, 'etc'));
      assert.deepEqual(await readUserDb(other), { passwd: [], group: [] }, "the host's users are not the container's");
    } finally {
      await rm(other, { recursive: true, force: true });
    }
    const l = await readHardLimits();
    assert.ok((l['RLIMIT_NOFILE'] ?? 0) > 0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
