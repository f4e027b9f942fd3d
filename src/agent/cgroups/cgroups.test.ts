import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  cgroupPaths,
  cgroupExists,
  detectCgroupLayout,
  parseCgroupLayout,
  parseKeyValues,
  parseLimit,
  parseV1OomControl,
  parseV2CpuUsageNs,
  parseV2MemoryEvents,
  readCgroupStats,
  readOomKills,
  releaseCgroupMemory,
  removeCgroup,
  removeCgroupParentIfEmpty,
} from './cgroups.js';

const HYBRID = `22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const V1_COMOUNTED = `25 20 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
`;
const V2 = `30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`;

test('layout: hybrid, v1 (co-mounted), v2', () => {
  const h = parseCgroupLayout(HYBRID);
  assert.equal(h.mode, 'hybrid');
  assert.equal(h.unified, '/sys/fs/cgroup/unified');
  assert.equal(h.v1['memory'], '/sys/fs/cgroup/memory');
  assert.equal(h.v1['name=systemd'], '/sys/fs/cgroup/systemd');
  const v1 = parseCgroupLayout(V1_COMOUNTED);
  assert.equal(v1.mode, 'v1');
  assert.equal(v1.v1['cpu'], '/sys/fs/cgroup/cpu,cpuacct');
  assert.equal(v1.v1['cpuacct'], '/sys/fs/cgroup/cpu,cpuacct');
  assert.equal(v1.unified, undefined);
  const v2 = parseCgroupLayout(V2);
  assert.equal(v2.mode, 'v2');
  assert.equal(v2.unified, '/sys/fs/cgroup');
  assert.deepEqual(v2.v1, {});
});

test('paths per controller, deduplicated; bad paths refused', () => {
  const p = cgroupPaths(parseCgroupLayout(V1_COMOUNTED), '/nimbus/abc');
  assert.equal(p.v1['cpu'], '/sys/fs/cgroup/cpu,cpuacct/nimbus/abc');
  assert.deepEqual(p.all, ['/sys/fs/cgroup/cpu,cpuacct/nimbus/abc', '/sys/fs/cgroup/memory/nimbus/abc']);
  const h = cgroupPaths(parseCgroupLayout(HYBRID), 'nimbus/x');
  assert.equal(h.unified, '/sys/fs/cgroup/unified/nimbus/x');
  assert.equal(h.all.length, 6);
  const v2 = cgroupPaths(parseCgroupLayout(V2), '/nimbus/x');
  assert.deepEqual(v2.all, ['/sys/fs/cgroup/nimbus/x']);
  assert.throws(() => cgroupPaths(parseCgroupLayout(V2), '/'));
  assert.throws(() => cgroupPaths(parseCgroupLayout(V2), '/../etc'));
});

test('parsers', () => {
  assert.equal(parseLimit('9223372036854771712\n'), undefined);
  assert.equal(parseLimit('max\n'), undefined);
  assert.equal(parseLimit('16777216\n'), 16777216);
  assert.deepEqual(parseV1OomControl('oom_kill_disable 0\nunder_oom 0\noom_kill 3\n'), {
    oomKill: 3,
    underOom: false,
    oomKillDisable: false,
  });
  assert.equal(parseV1OomControl('oom_kill_disable 0\nunder_oom 1\n').oomKill, undefined);
  assert.deepEqual(parseV2MemoryEvents('low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n'), {
    oom: 2,
    oomKill: 1,
  });
  assert.equal(parseV2CpuUsageNs('usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n'), 1_500_000);
  assert.deepEqual(parseKeyValues('a 1\n\nb x\nc 2'), { a: 1, c: 2 });
});

test('real: this host, a cgroup with a process in it', async (t) => {
  const layout = await detectCgroupLayout();
  if (process.getuid?.() !== 0) return t.skip('needs root');
  const parent = `/nimbus-cgtest-${process.pid}`;
  const paths = cgroupPaths(layout, `${parent}/c1`);
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    assert.ok(['v1', 'v2', 'hybrid'].includes(layout.mode));
    for (const d of paths.all) await mkdir(d, { recursive: true });
    for (const ctl of ['memory', 'pids', 'cpuacct']) {
      const d = paths.v1[ctl] ?? paths.unified;
      if (d) await writeFile(path.join(d, 'cgroup.procs'), String(child.pid));
    }
    const memDir = paths.v1['memory'];
    if (memDir) await writeFile(path.join(memDir, 'memory.limit_in_bytes'), String(64 << 20));
    const s = await readCgroupStats(paths);
    assert.equal(s.pids, 1);
    assert.ok(s.memoryBytes >= 0);
    if (memDir) assert.equal(s.memoryLimitBytes, 64 << 20);
    assert.equal(await readOomKills(paths), 0);
    assert.ok(await cgroupExists(paths));
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await removeCgroup(paths);
    await removeCgroupParentIfEmpty(layout, parent);
  }
  assert.equal(await cgroupExists(paths), false);
  for (const d of cgroupPaths(layout, parent).all) await assert.rejects(access(d));
  // idempotent
  await removeCgroup(paths);
});

test('real: page cache a finished process left charged to its cgroup is released before removal', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root');
  const layout = await detectCgroupLayout();
  const parent = `/nimbus-cgmem-${process.pid}`;
  const paths = cgroupPaths(layout, `${parent}/c1`);
  const memDir = paths.v1['memory'] ?? paths.unified;
  if (!memDir) return t.skip('no memory controller');
  const usageFile = path.join(memDir, paths.v1['memory'] ? 'memory.usage_in_bytes' : 'memory.current');
  const tmp = await mkdtemp(path.join(tmpdir(), 'nimbus-cgmem-'));
  try {
    await mkdir(memDir, { recursive: true });
    if (!paths.v1['memory'] && !(await readFile(path.join(memDir, 'cgroup.controllers'), 'utf8')).includes('memory')) return t.skip('memory controller not enabled here');
    // a process that joins the cgroup, writes 4 MiB to a file (page cache charged to the cgroup) and exits
    const child = spawn('sh', ['-c', `echo $$ > ${path.join(memDir, 'cgroup.procs')} && head -c 4194304 /dev/zero > ${path.join(tmp, 'f')}`], { stdio: 'ignore' });
    const code = await new Promise((r) => child.once('exit', r));
    assert.equal(code, 0);
    const usage = async () => Number((await readFile(usageFile, 'utf8')).trim());
    assert.ok((await usage()) >= 3 << 20, `the file's pages are charged to the cgroup (${await usage()} bytes)`);
    assert.equal(await releaseCgroupMemory(paths), true);
    assert.ok((await usage()) < 1 << 20, `released: ${await usage()} bytes left`);
  } finally {
    await removeCgroup(paths);
    await removeCgroupParentIfEmpty(layout, parent);
    await rm(tmp, { recursive: true, force: true });
  }
  assert.equal(await releaseCgroupMemory(paths), false, 'a cgroup that is gone: nothing to do, no error');
});
