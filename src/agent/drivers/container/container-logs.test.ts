// Container logs: rotation (conmon's --log-size-max plus the agent's numbered generations) and a
// streaming reader, against real conmon/runc; the reader's file logic also on synthetic files.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFile, lstat, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { run } from '../../../core/exec.js';
import { parseProcStat } from '../../../core/proc.js';
import { cgroupPaths, detectCgroupLayout, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { mountsUnder } from '../../snapshots/mount.js';
import type { InstanceSpec, LogRecord } from '../instance-driver.js';
import { bindRootfsSpec, freshId, waitStopped } from '../instance-driver-conformance.js';
import { ContainerDriver } from './container-driver.js';
import { readK8sLog, resolveLogLimits, rotateOnce } from './container-logs.js';
import { probeRuntime } from './oci-runtime.js';
import { makeBusyboxRootfs } from './rootfs-test-support.js';

const rec = (s: string) => `2026-01-01T00:00:00.000000000+00:00 stdout F ${s}\n`;

async function lines(file: string, opts: Parameters<typeof readK8sLog>[1] = {}): Promise<string[]> {
  const out: string[] = [];
  for await (const r of readK8sLog(file, opts)) out.push(r.line);
  return out;
}

describe('log files (synthetic generations)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nimbus-logs-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('limits: defaults, bounds', () => {
    assert.deepEqual(resolveLogLimits(undefined), { maxSizeBytes: 10 << 20, maxFiles: 3 });
    assert.deepEqual(resolveLogLimits({ maxFiles: 5 }), { maxSizeBytes: 10 << 20, maxFiles: 5 });
    for (const bad of [{ maxFiles: 0 }, { maxFiles: 65 }, { maxSizeBytes: 1000 }, { maxSizeBytes: 2 ** 31 }, { maxFiles: 1.5 }]) {
      assert.throws(() => resolveLogLimits(bad), (e: unknown) => hasCode(e, 'InvalidArgument'));
    }
  });

  test('generations oldest first, a plain current file last, tail across files', async () => {
    const d = path.join(dir, 'gens');
    await mkdir(d);
    const log = path.join(d, 'ctr.log');
    await writeFile(`${log}.7`, rec('a') + rec('b'));
    await writeFile(`${log}.9`, rec('c'));
    await writeFile(`${log}.10`, rec('d') + rec('e'));
    await writeFile(log, rec('f')); // made by conmon while no symlink was prepared: newest
    await writeFile(path.join(d, 'ctr.log.tmpx'), rec('junk'));
    assert.deepEqual(await lines(log), ['a', 'b', 'c', 'd', 'e', 'f']);
    assert.deepEqual(await lines(log, { tail: 4 }), ['c', 'd', 'e', 'f']);
    assert.deepEqual(await lines(log, { tail: 3 }), ['d', 'e', 'f']);
    assert.deepEqual(await lines(log, { tail: 100 }), ['a', 'b', 'c', 'd', 'e', 'f']);
    assert.deepEqual(await lines(log, { tail: 0 }), []);
  });

  test('follow continues across rotations made as conmon makes them, without loss or duplicates', async () => {
    const d = path.join(dir, 'follow');
    await mkdir(d);
    const log = path.join(d, 'ctr.log');
    await symlink('ctr.log.1', log);
    await symlink('ctr.log.3', `${log}.tmp`);
    let exited = false;
    const got: string[] = [];
    const reader = (async () => {
      for await (const r of readK8sLog(log, { follow: true, isExited: async () => exited, pollMs: 10 })) got.push(r.line);
    })();
    let n = 0;
    for (let gen = 0; gen < 20; gen++) {
      for (let i = 0; i < 50; i++) await appendFile(log, rec(String(n++)));
      // conmon's rotation: open <log>.tmp with O_TRUNC|O_CREAT (through our symlink), rename it over <log>
      await writeFile(`${log}.tmp`, '');
      await rename(`${log}.tmp`, log);
      if (gen % 4 !== 3) rotateOnce(log, 64); // every fourth generation the pass lags: conmon makes a plain file
      if (gen % 3 === 0) await new Promise((r) => setTimeout(r, 15));
    }
    for (let i = 0; i < 10; i++) await appendFile(log, rec(String(n++)));
    rotateOnce(log, 64);
    exited = true;
    await reader;
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => String(i)));
    assert.ok((await lstat(log)).isSymbolicLink(), 'ctr.log stays a symlink to the current generation');
  });

  test('a corrupt log ends the read with a typed error, not a short answer', async () => {
    const d = path.join(dir, 'corrupt');
    await mkdir(d);
    const log = path.join(d, 'ctr.log');
    await writeFile(log, rec('ok') + 'x'.repeat(2 << 20) + '\n');
    const got: string[] = [];
    await assert.rejects(async () => {
      for await (const r of readK8sLog(log, { label: 'log of container t' })) got.push(r.line);
    }, (e: unknown) => hasCode(e, 'DataLoss'));
    assert.deepEqual(got, ['ok']);
  });
});

// ------------------------------------------------------------------ real conmon/runc

const runcReason = await probeRuntime('runc');

const busyboxRootfs = (dir: string) => makeBusyboxRootfs(dir, ['sh', 'yes', 'head', 'seq', 'sleep']);

async function logFiles(d: ContainerDriver, id: string): Promise<{ count: number; bytes: number }> {
  const cdir = path.join(d.stateDir, 'containers', id);
  const inodes = new Map<number, number>(); // a plain ctr.log the agent named is one file with two names
  for (const f of await readdir(cdir)) {
    const st = await lstat(path.join(cdir, f));
    if (f.startsWith('ctr.log') && st.isFile()) inodes.set(st.ino, st.size);
  }
  return { count: inodes.size, bytes: [...inodes.values()].reduce((a, b) => a + b, 0) };
}

/**
 * CPU time (ms) the agent's side of rotation has used in this process: its real-time worker
 * thread and the inotify helper it forked (log-dir-events.ts).
 */
async function rotationCpuMs(): Promise<number> {
  const stat = (file: string) => readFile(file, 'utf8').then(parseProcStat, () => undefined); // undefined: gone meanwhile
  let ticks = 0;
  for (const tid of await readdir('/proc/self/task')) {
    const t = await stat(`/proc/self/task/${tid}/stat`);
    if (t?.policy === 1) ticks += t.cpuTicks; // SCHED_FIFO: the rotation worker
  }
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const p = await stat(`/proc/${pid}/stat`);
    if (p?.ppid === process.pid && p.comm.startsWith('python3')) ticks += p.cpuTicks;
  }
  return ticks * 10; // USER_HZ (100)
}

/** Whole lines from records (conmon splits output at its 8 KiB reads into P ... F records). */
async function* joined(records: AsyncIterable<LogRecord>): AsyncGenerator<string> {
  let part = '';
  for await (const r of records) {
    if (r.partial) {
      part += r.line;
      continue;
    }
    yield part + r.line;
    part = '';
  }
}

/** Reads a container's whole log through the driver; prints line counts and RSS before and at its peak. */
const READER = `
const [stateDir, id, expected] = process.argv.slice(1);
const { ContainerDriver } = await import(${JSON.stringify(new URL('./container-driver.js', import.meta.url).href)});
const d = new ContainerDriver({ stateDir, runtime: 'runc' });
const rss0 = process.memoryUsage().rss;
let peak = rss0, lines = 0, bad = 0, part = '';
for await (const r of d.logs(id, {})) {
  if (r.partial) { part += r.line; continue; }
  if (part + r.line !== expected) bad++;
  part = '';
  if (++lines % 20000 === 0) peak = Math.max(peak, process.memoryUsage().rss);
}
peak = Math.max(peak, process.memoryUsage().rss);
console.log(JSON.stringify({ lines, bad, rss0, peak }));
`;

if (runcReason) {
  test('container logs (runc unusable here)', (t) => t.skip(runcReason));
} else {
  describe('container logs against conmon and runc', () => {
    let base: string;
    let stateDir: string;
    let rootfsDir: string;
    let d: ContainerDriver;
    const cgroupParent = `/nimbus-test-${process.pid}-logs`;
    const spec = (id: string, args: string[], over: Partial<InstanceSpec> = {}): InstanceSpec => bindRootfsSpec(rootfsDir, id, args, over);

    before(async () => {
      base = await mkdtemp(path.join(tmpdir(), 'nimbus-ctrlogs-'));
      stateDir = path.join(base, 'state');
      rootfsDir = path.join(base, 'rootfs');
      await busyboxRootfs(rootfsDir);
      d = new ContainerDriver({ stateDir, runtime: 'runc', cgroupParent });
      d.onExit(() => undefined); // the exit watcher, as the agent has it (stops rotation at exit)
    });
    after(async () => {
      for (const id of await d.list()) await d.delete(id).catch((e: unknown) => console.error('teardown delete', id, e));
      d.close();
      const left = await run('runc', ['--root', path.join(stateDir, 'runtime', 'runc'), 'list', '-q']);
      for (const id of left.stdout.split('\n').filter(Boolean)) await run('runc', ['--root', path.join(stateDir, 'runtime', 'runc'), 'delete', '-f', id]);
      const layout = await detectCgroupLayout();
      await removeCgroupParentIfEmpty(layout, cgroupParent);
      const mounts = await mountsUnder(base);
      if (mounts.length === 0) await rm(base, { recursive: true, force: true });
      assert.deepEqual(mounts, [], 'no mounts left');
      for (const c of cgroupPaths(layout, cgroupParent).all) await assert.rejects(stat(c), 'no cgroup left');
    });

    test('200 MB of output reads back whole with bounded memory, exact line count, across rotated files', async () => {
      const id = freshId('big');
      const LINE = 'x'.repeat(99);
      const N = 1_400_000; // 1.4M records of 146 bytes: ~204 MB on disk
      await d.create(spec(id, ['sh', '-c', `yes ${LINE} | head -n ${N}`], { log: { maxSizeBytes: 64 << 20, maxFiles: 4 } }));
      try {
        const cpu0 = await rotationCpuMs();
        await d.start(id);
        const st = await waitStopped(d, id, 120_000);
        assert.equal(st.exitCode, 0);
        const rotationMs = (await rotationCpuMs()) - cpu0;
        console.log(`# rotation's CPU while 200 MB were written: ${rotationMs} ms`);
        // woken per rotation, not per write: 20-30 ms here, 620-670 when fs.watch woke it for every write
        assert.ok(rotationMs < 250, `rotation used ${rotationMs} ms of CPU`);
        const files = await logFiles(d, id);
        assert.equal(files.count, 4, 'four generations of at most 64 MiB');
        assert.ok(files.bytes > 200e6, `${files.bytes} bytes on disk`);
        // Read in a child process, as nimbusd would: node:test's per-test async context keeps
        // every record's promises alive a little longer and inflates the heap of this one.
        const r = await run(process.execPath, ['--input-type=module', '-e', READER, d.stateDir, id, LINE]);
        assert.equal(r.code, 0, r.stderr);
        const m = JSON.parse(r.stdout) as { lines: number; bad: number; rss0: number; peak: number };
        assert.equal(m.lines, N, 'every line, once');
        assert.equal(m.bad, 0, 'every line intact');
        const growth = (m.peak - m.rss0) / 2 ** 20;
        console.log(`# read ${(files.bytes / 1e6).toFixed(0)} MB in ${files.count} files: RSS growth ${growth.toFixed(1)} MiB (from ${(m.rss0 / 2 ** 20).toFixed(0)} MiB)`);
        assert.ok(growth < 64, `RSS grew ${growth.toFixed(1)} MiB reading ${files.bytes} bytes`);
        // tail reads backwards: the last 3 lines only
        const tail: string[] = [];
        for await (const l of joined(d.logs(id, { tail: 3 }))) tail.push(l);
        assert.deepEqual(tail, [LINE, LINE, LINE]);
      } finally {
        await d.delete(id);
      }
    });

    test('max-size 1 MiB, max-file 3: 50 MB written leaves <= 3 MiB, and the newest lines read back in order', async () => {
      const id = freshId('rot');
      const N = 1_000_000; // seq 1..N: ~52 MB of records
      await d.create(spec(id, ['seq', '1', String(N)], { log: { maxSizeBytes: 1 << 20, maxFiles: 3 } }));
      try {
        await d.start(id);
        assert.equal((await waitStopped(d, id, 120_000)).exitCode, 0);
        // the agent's last pass after the exit
        let files = await logFiles(d, id);
        for (let i = 0; i < 40 && files.count > 3; i++) {
          await new Promise((r) => setTimeout(r, 50));
          files = await logFiles(d, id);
        }
        console.log(`# after 50 MB: ${files.count} files, ${files.bytes} bytes`);
        assert.ok(files.count <= 3, `${files.count} files`);
        assert.ok(files.bytes <= 3 * (1 << 20), `${files.bytes} bytes on disk`);
        assert.ok(files.bytes > 2 * (1 << 20), 'two full generations kept besides the current one');
        const got: number[] = [];
        for await (const l of joined(d.logs(id, {}))) got.push(Number(l));
        assert.equal(got.at(-1), N, 'ends with the last line');
        const first = got[0]!;
        assert.deepEqual(got, Array.from({ length: N - first + 1 }, (_, i) => first + i), 'contiguous, in order, across files');
        const tail: number[] = [];
        for await (const l of joined(d.logs(id, { tail: 5 }))) tail.push(Number(l));
        assert.deepEqual(tail, [N - 4, N - 3, N - 2, N - 1, N]);
      } finally {
        await d.delete(id);
      }
    });

    test('a driver started again (a daemon restart) takes over rotation of a running container', async () => {
      const id = freshId('adopt');
      // ~590 KB through 128 KiB files, 3 kept: four rotations, each of which the new driver must name
      // (64 KiB files made nine at full speed, and a pass that fell behind on a loaded CI host cost a
      // generation: architecture.md, "Logs" — a lag, not the adoption this checks)
      const N = 100_000;
      await d.create(spec(id, ['sh', '-c', `sleep 1; seq 1 ${N}`], { log: { maxSizeBytes: 128 << 10, maxFiles: 3 } }));
      d.close(); // its rotation worker goes with it
      const d2 = new ContainerDriver({ stateDir, runtime: 'runc', cgroupParent });
      d2.onExit(() => undefined); // as the agent: the exit watcher, which adopts rotation too
      await d2.adoptLogRotation(); // (what the watcher's start does, awaited here)
      try {
        await d2.start(id);
        assert.equal((await waitStopped(d2, id, 60_000)).exitCode, 0);
        let files = await logFiles(d2, id);
        for (let i = 0; i < 40 && files.count > 3; i++) {
          await new Promise((r) => setTimeout(r, 50));
          files = await logFiles(d2, id);
        }
        assert.ok(files.count <= 3, `${files.count} files`);
        const got: number[] = [];
        for await (const l of joined(d2.logs(id, {}))) got.push(Number(l));
        assert.equal(got.at(-1), N);
        assert.ok(got.length > 2000, `${got.length} lines kept`);
        assert.ok(got.every((v, i) => i === 0 || v === got[i - 1]! + 1), 'contiguous: every generation was named by the new driver');
      } finally {
        await d2.delete(id);
        d2.close();
        d = new ContainerDriver({ stateDir, runtime: 'runc', cgroupParent });
        d.onExit(() => undefined);
      }
    });

    test('three fast writers through 64 KiB files at once: their generations are named as fast as conmon rotates', async () => {
      // ~40 rotations each, a few ms apart: the inotify helper prepares each next symlink itself
      // (log-dir-events.ts). Through the worker alone, 11 of 15 such containers lost 1,256 to
      // 6,437 of their 60,000 lines here; with the helper preparing, none of 15. A lagging
      // moment on a loaded host may still cost one generation (~1,500 lines): no more in all three.
      const N = 60_000;
      const lost = await Promise.all([0, 1, 2].map(async () => {
        const id = freshId('fast');
        await d.create(spec(id, ['seq', '1', String(N)], { log: { maxSizeBytes: 64 << 10, maxFiles: 64 } }));
        try {
          await d.start(id);
          await waitStopped(d, id, 60_000);
          const got: number[] = [];
          let part = '';
          for await (const r of d.logs(id, {})) {
            if (r.partial) part += r.line;
            else {
              got.push(Number(part + r.line));
              part = '';
            }
          }
          assert.ok(got.every((v, i) => i === 0 || v > got[i - 1]!), 'in order, no duplicates');
          assert.equal(got.at(-1), N, 'to the last');
          assert.ok((await logFiles(d, id)).count > 30, 'it did rotate');
          return N - got.length; // 64 files kept: nothing pruned, so every line missing was lost
        } finally {
          await d.delete(id);
        }
      }));
      assert.ok(lost.reduce((a, b) => a + b, 0) <= 1_600, `lines lost: ${lost.join(', ')}`);
    });

    test('follow from create to exit across rotations: every line on disk once, in order', async () => {
      const id = freshId('fol');
      const N = 200_000; // ~10 MB through 256 KiB files, 64 kept: nothing pruned
      await d.create(spec(id, ['seq', '1', String(N)], { log: { maxSizeBytes: 256 << 10, maxFiles: 64 } }));
      try {
        const got: number[] = [];
        const reader = (async () => {
          for await (const l of joined(d.logs(id, { follow: true }))) got.push(Number(l));
        })();
        await d.start(id);
        await reader;
        // what follow promises is what is on disk: a rotation that finds no symlink prepared and a
        // pass two generations behind cost the generation missed (docs/architecture.md); loaded CI
        // hosts lost one of ~40 (194,862 lines of 200,000) and once four, before the inotify
        // helper prepared the symlinks itself. One generation (~5,000 lines) is allowed still.
        const onDisk: number[] = [];
        for await (const l of joined(d.logs(id, {}))) onDisk.push(Number(l));
        assert.ok(got.every((v, i) => i === 0 || v > got[i - 1]!), 'in order, no duplicates');
        assert.equal(got.length, onDisk.length, 'every line on disk was followed');
        assert.deepEqual(got, onDisk, 'the same lines as on disk');
        assert.equal(got.at(-1), N, 'to the last');
        assert.ok(got.length >= N - 6_000, `${N - got.length} of ${N} lines lost: more than one generation`);
        assert.ok((await logFiles(d, id)).count > 30, 'it did rotate');
      } finally {
        await d.delete(id);
      }
    });
  });
}
