/**
 * Warm start end to end: containers created ahead of demand serve `run` with the
 * requested command, environment, working directory and limits, through a real
 * nimbusd, runc and conmon; anything they cannot serve goes the cold way; they
 * go when their image goes and when the daemon stops.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { DaemonProcess } from './helpers/daemon-process.js';
import { startDaemonWithImage, type DaemonWithImage } from './helpers/daemon-with-image.js';

interface WarmStats {
  perImage: number; ready: number; hotImages: number; hits: number; handoffs?: number; misses: number;
  sizing: { target: number; peak: number; budgetBytes: number; entryBytes: number | null; usedBytes: number };
}
let d: DaemonProcess;
let IMAGE: string;

const warm = async () => (await d.api<{ agent: { warmPool: WarmStats } }>('GET', '/info')).body.agent.warmPool;
async function warmReady(n = 1): Promise<WarmStats> {
  for (let i = 0; i < 300; i++) {
    const w = await warm();
    if (w.ready >= n) return w;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no warm container became ready: ${JSON.stringify(await warm())}`);
}

describe('warm start', { concurrency: false }, () => {
  let env: DaemonWithImage | undefined;
  before(async () => {
    env = await startDaemonWithImage();
    ({ d, image: IMAGE } = env);
  });
  after(async () => {
    await env?.stop();
  });

  test('a warm container runs the requested command, env, workdir, limits and hostname', async () => {
    // warm containers are made per memory size (a claim cannot change it): this size's first run is cold
    const first = await d.cli(['run', '--rm', '--memory', '32m', IMAGE, 'true']);
    assert.equal(first.code, 0, `first run: cold, makes the image hot at this size: ${first.stderr}`);
    const before = await warmReady();
    const r = await d.cli([
      'run', '--name', 'warm1', '--env', 'GREETING=hello world', '--workdir', '/srv/app', '--memory', '32m', '--pids-limit', '20', IMAGE,
      'sh', '-c', 'echo "$GREETING|$0|$1|$(pwd)|$(hostname)|$$"; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max', "it's", 'a b',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const after = await warm();
    assert.equal(after.hits, before.hits + 1, 'served by a warm container');
    const c = (await d.api<{ id: string }>('GET', '/containers/warm1')).body;
    const [line, mem, pids] = r.stdout.trim().split('\n');
    assert.equal(line, `hello world|it's|a b|/srv/app|${c.id.slice(0, 12)}|1`, 'argv, env, new workdir, default hostname; the command is pid 1');
    assert.equal(Number(mem), 32 * 1024 * 1024, 'memory limit applied');
    assert.equal(pids, '20', 'pids limit applied');
    assert.equal((await d.cli(['rm', 'warm1'])).code, 0);
  });

  test('a warm container over its memory limit is OOM-killed: 137 and OOMKilled', async () => {
    await warmReady();
    const hits = (await warm()).hits;
    const r = await d.cli(['run', '--name', 'warm-oom', '--memory', '32m', IMAGE, 'sh', '-c', 'x=a; while true; do x="$x$x"; done']);
    assert.equal(r.code, 137, r.stderr);
    assert.equal((await warm()).hits, hits + 1);
    const c = (await d.api<{ exitCode: number; oomKilled: boolean }>('GET', '/containers/warm-oom')).body;
    assert.deepEqual([c.exitCode, c.oomKilled], [137, true]);
    await d.cli(['rm', 'warm-oom']);
  });

  test('a missing command is refused at the claim as a cold create refuses it (400, no container), not an exit 127', async () => {
    const before = await warmReady();
    const r = await d.cli(['run', '--name', 'nocmd', '--memory', '32m', IMAGE, 'no-such-command']);
    assert.equal(r.code, 127, "the CLI's exit for a command not found (as docker run's)");
    assert.match(r.stderr, /InvalidArgument: cannot run "no-such-command": executable file not found in \$PATH/, 'the create refused it: no container ran');
    assert.equal((await warm()).hits, before.hits + 1, 'it took the warm path');
    assert.equal((await d.api('GET', '/containers/nocmd')).status, 404, 'nothing left');
  });

  test('a request a warm container cannot serve (its own hostname) is created cold', async () => {
    await warmReady();
    const w = await warm();
    const r = await d.cli(['run', '--rm', '--hostname', 'custom', IMAGE, 'hostname']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'custom');
    const w2 = await warm();
    assert.equal(w2.hits, w.hits, 'not served warm');
  });

  test('one request at a time leaves the pool at its floor; a burst grows it to its concurrency, within the budget it reports', async () => {
    const before = await warmReady();
    assert.ok(before.sizing.peak <= 1, `the tests above ran one request at a time: ${JSON.stringify(before.sizing)}`);
    assert.equal(before.sizing.target, before.perImage);
    assert.ok(before.sizing.budgetBytes > 0, 'a default budget');
    const made = await Promise.all(Array.from({ length: 6 }, (_, i) => d.api<{ id: string }>('POST', '/containers', { image: IMAGE, cmd: ['true'], name: `burst${i}` })));
    for (const r of made) assert.equal(r.status, 201);
    const grown = await warm();
    assert.ok(grown.sizing.peak >= 3, `six creates at once: ${JSON.stringify(grown.sizing)}`);
    assert.ok(grown.sizing.target > grown.perImage, 'the target grew with them');
    const full = await warmReady(grown.sizing.target);
    const { entryBytes, usedBytes, budgetBytes } = full.sizing;
    assert.ok(entryBytes !== null && entryBytes > 64 * 1024 && entryBytes < 64 * 2 ** 20, `a warm container measured: ${entryBytes} bytes`);
    assert.ok(usedBytes >= entryBytes * full.ready * 0.5 && usedBytes <= budgetBytes, `${usedBytes} bytes in use, budget ${budgetBytes}`);
    for (const r of made) await d.api('DELETE', `/containers/${r.body.id}`);
  });

  test('creates one after another take the warm containers being made for them; each runs its own command', async () => {
    const before = await warmReady();
    // sequential creates: once the ready ones are taken, each take finds the replacement the one before started
    const ids: string[] = [];
    for (let i = 0; i < before.ready + 6; i++) {
      const r = await d.api<{ id: string }>('POST', '/containers', { image: IMAGE, cmd: ['sh', '-c', `echo "handed ${i} $$"`], name: `seq${i}` });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      ids.push(r.body.id);
    }
    const after = await warm();
    assert.ok((after.handoffs ?? 0) > (before.handoffs ?? 0), `a create took a warm container still being made: ${JSON.stringify(after)}`);
    assert.equal(after.misses, before.misses, 'none went cold');
    for (const [i, id] of ids.entries()) {
      assert.equal((await d.cli(['start', '-a', id])).stdout.trim(), `handed ${i} 1`, 'its own command, as pid 1');
      assert.equal((await d.api('DELETE', `/containers/${id}`)).status, 204);
    }
  });

  test('removing the image removes its warm containers; none are listed as containers', async () => {
    await warmReady();
    assert.equal((await d.api<unknown[]>('GET', '/containers?all=true')).body.length, 0, 'warm containers are not instances');
    const r = await d.cli(['image', 'rm', IMAGE]);
    assert.equal(r.code, 0, r.stderr);
    const w = await warm();
    assert.equal(w.ready, 0);
    assert.equal(w.hotImages, 0);
  });
});
