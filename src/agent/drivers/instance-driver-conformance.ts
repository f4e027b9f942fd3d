/**
 * The conformance suite every InstanceDriver passes (containerd's SnapshotterSuite
 * idea). An implementation's test calls instanceDriverConformance() with a setup
 * that supplies the driver and a way to make specs whose root filesystem holds
 * busybox (sh, sleep, echo, cat, id, ...).
 */
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Readable } from 'node:stream';
import { hasCode } from '../../core/errors.js';
import type { InstanceDriver, InstanceSpec, LogRecord, RuntimeState } from './instance-driver.js';

export interface ConformanceSetup {
  driver: InstanceDriver;
  /** A spec running `args` (busybox rootfs); `over` is merged in. The id must be fresh. */
  makeSpec(id: string, args: string[], over?: Partial<InstanceSpec>): Promise<InstanceSpec>;
  /** A NEW driver instance over the same state (simulates a daemon restart). */
  reopen(): Promise<InstanceDriver>;
  /** Release everything the setup made (called once, after all tests). */
  teardown(): Promise<void>;
  /** What this kind of instance does differently; everything defaults to the container behaviour. */
  capabilities?: ConformanceCapabilities;
}

export interface ConformanceCapabilities {
  /** exec() runs commands inside (VMs have no guest agent yet). Default true. */
  exec?: boolean;
  /** kill() delivers arbitrary signals to the workload (a VM's signals go to QEMU). Default true. */
  signals?: boolean;
  /** Logs keep stdout and stderr apart (a serial console is one stream). Default true. */
  separateStderr?: boolean;
  /** The smallest memory limit the instance can run with (a VM's kernel needs more than 64 MiB). */
  minMemoryBytes?: number;
  /** Multiplies the suite's waits (a TCG guest takes seconds to boot). Default 1. */
  waitScale?: number;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function collectLogs(driver: InstanceDriver, id: string, tail?: number): Promise<LogRecord[]> {
  const out: LogRecord[] = [];
  const opts: { tail?: number } = {};
  if (tail !== undefined) opts.tail = tail;
  for await (const r of driver.logs(id, opts)) out.push(r);
  return out;
}

/** Poll the logs until some line matches (or time runs out). */
export async function waitForLog(driver: InstanceDriver, id: string, re: RegExp, ms = 10_000, explain?: () => Promise<string>): Promise<LogRecord[]> {
  const deadline = Date.now() + ms;
  for (;;) {
    const recs = await collectLogs(driver, id);
    if (recs.some((r) => re.test(r.line))) return recs;
    if (Date.now() > deadline) {
      const why = explain ? await explain().catch((e: unknown) => `(no explanation: ${String(e)})`) : '';
      assert.fail(`no log line matching ${re} in ${JSON.stringify(recs.map((r) => r.line))}${why ? `; ${why}` : ''}`);
    }
    await sleep(50);
  }
}

/** Poll state until the instance is stopped. */
export async function waitStopped(driver: InstanceDriver, id: string, ms = 15_000): Promise<RuntimeState> {
  const deadline = Date.now() + ms;
  for (;;) {
    const st = await driver.state(id);
    if (st.status === 'stopped') return st;
    if (Date.now() > deadline) assert.fail(`${id} still ${st.status} after ${ms} ms`);
    await sleep(50);
  }
}

export async function readAll(s: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(String(c)));
  return Buffer.concat(chunks).toString();
}

let seq = 0;
/** A spec that runs args as root in rootfsDir, bind-mounted read-write (a test's busybox tree). */
export function bindRootfsSpec(rootfsDir: string, id: string, args: string[], over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    id,
    name: id,
    rootfs: [{ type: 'bind', source: rootfsDir, options: ['rbind', 'rw'] }],
    process: { args, env: [], cwd: '/', user: '0:0' },
    resources: {},
    ...over,
  };
}

export function freshId(prefix = 'conf'): string {
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${(seq++).toString(36)}`;
}

export function instanceDriverConformance(name: string, setupFn: () => Promise<ConformanceSetup>): void {
  describe(`InstanceDriver conformance: ${name}`, () => {
    let s: ConformanceSetup;
    let d: InstanceDriver;
    const made: string[] = [];
    let caps: Required<ConformanceCapabilities>;
    const waitLog = (id: string, re: RegExp) => waitForLog(d, id, re, 10_000 * caps.waitScale);
    const waitStop = (id: string) => waitStopped(d, id, 15_000 * caps.waitScale);

    const createStarted = async (args: string[], over?: Partial<InstanceSpec>): Promise<string> => {
      const id = freshId();
      made.push(id);
      await d.create(await s.makeSpec(id, args, over));
      await d.start(id);
      return id;
    };

    before(async () => {
      s = await setupFn();
      d = s.driver;
      caps = { exec: true, signals: true, separateStderr: true, minMemoryBytes: 0, waitScale: 1, ...s.capabilities };
    });
    afterEach(async () => {
      for (const id of made.splice(0)) await d.delete(id);
    });
    after(async () => {
      for (const id of made.splice(0)) await d.delete(id).catch(() => undefined);
      await s?.teardown();
    });

    test('create → created, start → running, logs, stop → exit code', async () => {
      const id = freshId();
      made.push(id);
      const spec = await s.makeSpec(id, ['sh', '-c', 'trap "exit 3" TERM; echo hello-conformance; while true; do sleep 0.1; done']);
      const c = await d.create(spec);
      assert.equal(c.status, 'created');
      assert.equal((await d.state(id)).status, 'created');
      const r = await d.start(id);
      assert.equal(r.status, 'running');
      const st = await d.state(id);
      assert.equal(st.status, 'running');
      assert.ok((st.pid ?? 0) > 0, 'running instance has a pid');
      assert.ok(st.startedAt);
      const recs = await waitLog(id, /^hello-conformance$/);
      assert.equal(recs.find((x) => x.line === 'hello-conformance')?.stream, 'stdout');
      // the grace period scales with the instance kind: a TCG guest on a loaded host can take seconds to see the button
      const stopped = await d.stop(id, 10 * caps.waitScale);
      assert.equal(stopped.status, 'stopped');
      assert.equal(stopped.exitCode, 3);
      assert.equal(stopped.oomKilled, false);
      assert.ok(stopped.finishedAt);
      // stopping a stopped instance is a no-op
      assert.equal((await d.stop(id, 1)).exitCode, 3);
    });

    test('stop escalates to SIGKILL after the timeout', async () => {
      // a signal sent before the shell has set its trap would kill it (143): wait until it says so
      const id = await createStarted(['sh', '-c', 'trap "" TERM; echo trap-set; while true; do sleep 0.1; done']);
      await waitLog(id, /^trap-set$/);
      const t0 = Date.now();
      const st = await d.stop(id, 1);
      assert.equal(st.status, 'stopped');
      assert.equal(st.exitCode, 137);
      assert.ok(Date.now() - t0 >= 900, 'waited for the timeout first');
    });

    test('kill delivers the named signal', async () => {
      if (caps.signals) {
        const id = await createStarted(['sh', '-c', 'trap "exit 7" USR1; echo trap-set; while true; do sleep 0.1; done']);
        await waitLog(id, /^trap-set$/);
        await d.kill(id, 'SIGUSR1');
        const st = await waitStop(id);
        assert.equal(st.exitCode, 7);
      }
      const id2 = await createStarted(['sleep', '60']);
      await d.kill(id2, 'SIGKILL');
      assert.equal((await waitStop(id2)).exitCode, 137);
      await assert.rejects(d.kill(id2, 'SIGKILL'), (e) => hasCode(e, 'Conflict'));
    });

    test('pause and unpause', async () => {
      const id = await createStarted(['sleep', '60']);
      await d.pause(id);
      assert.equal((await d.state(id)).status, 'paused');
      await d.unpause(id);
      assert.equal((await d.state(id)).status, 'running');
      // pausing twice / unpausing a running one is a state conflict
      await assert.rejects(d.unpause(id), (e) => hasCode(e, 'Conflict'));
      // a paused instance can be deleted outright
      await d.pause(id);
      await d.delete(id);
      assert.ok(!(await d.list()).includes(id));
    });

    test('exec propagates output and exit code', async (t) => {
      if (!caps.exec) return t.skip('exec is not a capability of this driver');
      const id = await createStarted(['sleep', '60']);
      const x = await d.exec(id, { args: ['sh', '-c', 'echo out-$FOO; echo err >&2; exit 5'], env: ['FOO=bar'] });
      x.stdin?.end();
      const [out, err, code] = await Promise.all([readAll(x.stdout), readAll(x.stderr), x.exit]);
      assert.equal(out.trim(), 'out-bar');
      assert.equal(err.trim(), 'err');
      assert.equal(code, 5);
      const y = await d.exec(id, { args: ['cat'] });
      y.stdin?.end('piped-in\n');
      assert.equal((await readAll(y.stdout)).trim(), 'piped-in');
      assert.equal(await y.exit, 0);
    });

    test('stats report memory and pids', async () => {
      const limit = Math.max(64 << 20, caps.minMemoryBytes);
      const id = await createStarted(['sleep', '60'], { resources: { memoryBytes: limit } });
      const st = await d.stats(id);
      assert.ok(st.memoryBytes > 0, `memory ${st.memoryBytes}`);
      assert.equal(st.memoryLimitBytes, limit);
      assert.ok(st.pids >= 1);
      assert.ok(st.cpuUsageNs >= 0);
      assert.ok(!Number.isNaN(Date.parse(st.time)));
    });

    test('logs: tail, stderr, follow ends when the instance exits, abort stops follow', async () => {
      const id = await createStarted(['sh', '-c', 'for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2; sleep 1; echo last']);
      const followed: string[] = [];
      for await (const r of d.logs(id, { follow: true })) followed.push(r.line);
      assert.deepEqual(followed, ['line1', 'line2', 'line3', 'line4', 'line5', 'oops', 'last']);
      const tail = await collectLogs(d, id, 2);
      assert.deepEqual(tail.map((r) => r.line), ['oops', 'last']);
      assert.equal(tail[0]?.stream, caps.separateStderr ? 'stderr' : 'stdout');
      const id2 = await createStarted(['sh', '-c', 'echo one; sleep 60']);
      await waitLog(id2, /^one$/); // follow then shows what is there and waits
      const ac = new AbortController();
      const got: string[] = [];
      const t = setTimeout(() => ac.abort(), 1000);
      for await (const r of d.logs(id2, { follow: true, signal: ac.signal })) got.push(r.line);
      clearTimeout(t);
      assert.deepEqual(got, ['one']);
    });

    test('list and delete', async () => {
      const id = await createStarted(['sleep', '60']);
      assert.ok((await d.list()).includes(id));
      await d.delete(id);
      assert.ok(!(await d.list()).includes(id));
      await assert.rejects(d.state(id), (e) => hasCode(e, 'NotFound'));
      await d.delete(id); // idempotent
      const again = await s.makeSpec(id, ['true']);
      await d.create(again); // the id is reusable
      await d.delete(id);
    });

    test('create twice is AlreadyExists; unknown ids are NotFound', async () => {
      const id = freshId();
      made.push(id);
      const spec = await s.makeSpec(id, ['sleep', '60']);
      await d.create(spec);
      await assert.rejects(d.create(spec), (e) => hasCode(e, 'AlreadyExists'));
      await assert.rejects(d.state('no-such-instance'), (e) => hasCode(e, 'NotFound'));
      await assert.rejects(d.start('no-such-instance'), (e) => hasCode(e, 'NotFound'));
    });

    test('onExit fires with the id', async () => {
      const seen: string[] = [];
      let wake: (() => void) | undefined;
      d.onExit((x) => {
        seen.push(x);
        wake?.();
      });
      const id = await createStarted(['sh', '-c', 'sleep 0.3; exit 4']);
      const deadline = Date.now() + 10_000 * caps.waitScale;
      while (!seen.includes(id) && Date.now() < deadline) {
        await Promise.race([new Promise<void>((r) => (wake = r)), sleep(200)]);
      }
      assert.ok(seen.includes(id), 'listener called');
      assert.equal((await d.state(id)).exitCode, 4);
    });

    test('a re-instantiated driver sees running instances and their logs', async () => {
      const id = await createStarted(['sh', '-c', 'echo before-restart; sleep 60']);
      await waitLog(id, /before-restart/);
      const d2 = await s.reopen();
      assert.ok((await d2.list()).includes(id));
      const st = await d2.state(id);
      assert.equal(st.status, 'running');
      assert.ok((await collectLogs(d2, id)).some((r) => r.line === 'before-restart'));
      if (caps.exec) {
        const x = await d2.exec(id, { args: ['echo', 'via-new-driver'] });
        assert.equal((await readAll(x.stdout)).trim(), 'via-new-driver');
        assert.equal(await x.exit, 0);
      }
      assert.equal((await d2.stop(id, 1)).status, 'stopped');
    });
  });
}
