/**
 * Container logs end to end through nimbusd and the CLI: --log-opt rotation, whole reads across
 * rotated files, --tail, -f across rotations, and the create body's bounds.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import type { DaemonProcess } from './helpers/daemon-process.js';
import { startDaemonWithImage, type DaemonWithImage } from './helpers/daemon-with-image.js';
import { waitFor } from './helpers/wait.js';
import { call } from './helpers/http.js';

let d: DaemonProcess;
let IMAGE: string;

interface C { id: string; status: string; exitCode: number | null }

/** The container's log files on disk (one entry per inode). */
function logFiles(id: string): { count: number; bytes: number } {
  const dir = join(d.home, 'containers/containers', id);
  const inodes = new Map<number, number>();
  for (const f of readdirSync(dir)) {
    const st = lstatSync(join(dir, f));
    if (f.startsWith('ctr.log') && st.isFile()) inodes.set(st.ino, st.size);
  }
  return { count: inodes.size, bytes: [...inodes.values()].reduce((a, b) => a + b, 0) };
}

async function exited(name: string): Promise<C> {
  return waitFor(`${name} exited`, async () => {
    const r = await d.api<C>('GET', `/containers/${name}`);
    return r.body.status === 'exited' ? r.body : undefined;
  }, 180_000); // tens of MB through conmon on a loaded host
}

describe('container logs end to end', { concurrency: false }, () => {
  let env: DaemonWithImage | undefined;
  before(async () => {
    // SIGUSR2 writes a heap snapshot, which makes V8 collect all garbage first (the RSS test below)
    env = await startDaemonWithImage({ NODE_OPTIONS: [process.env.NODE_OPTIONS, '--heapsnapshot-signal=SIGUSR2'].filter(Boolean).join(' ') });
    ({ d, image: IMAGE } = env);
  });
  after(async () => {
    await env?.stop();
  });

  test('--log-opt max-size=64k max-file=2: the cap holds, the newest lines read back in order, --tail', async () => {
    const r = await d.cli(['run', '-d', '--name', 'chatty', '--log-opt', 'max-size=64k', '--log-opt', 'max-file=2', IMAGE,
      'sh', '-c', 'seq 1 100000; sleep 0.3; echo a; echo b; echo c']);
    assert.equal(r.code, 0, r.stderr);
    const c = await exited('chatty');
    assert.equal(c.exitCode, 0);
    await waitFor('pruned to 2 files', async () => (logFiles(c.id).count <= 2 ? true : undefined), 5_000);
    assert.ok(logFiles(c.id).bytes <= 2 * 64 * 1024, `${logFiles(c.id).bytes} bytes`);
    const all = await d.cli(['logs', 'chatty']);
    assert.equal(all.code, 0, all.stderr);
    const lines = all.stdout.split('\n');
    assert.equal(lines.pop(), '');
    assert.deepEqual(lines.slice(-4), ['100000', 'a', 'b', 'c']);
    const nums = lines.slice(0, -3).map(Number);
    assert.ok(nums.length > 1000, `${nums.length} lines kept`);
    assert.ok(nums.every((v, i) => i === 0 || v === nums[i - 1]! + 1), 'contiguous, in order, across the two files');
    assert.equal((await d.cli(['logs', '--tail', '3', 'chatty'])).stdout, 'a\nb\nc\n');
  });

  test('logs -f follows across rotations to the exit: every line once', async () => {
    const r = await d.cli(['run', '-d', '--name', 'follower', '--log-opt', 'max-size=64k', '--log-opt', 'max-file=64', IMAGE,
      'sh', '-c', 'sleep 1; seq 1 30000']);
    assert.equal(r.code, 0, r.stderr);
    const f = await d.cli(['logs', '-f', 'follower']);
    assert.equal(f.code, 0, f.stderr);
    const got = f.stdout.split('\n').filter(Boolean).map(Number);
    const c = await exited('follower');
    // what follow promises is what is on disk: a rotation pass that falls two generations behind
    // conmon costs the generation it missed (docs/architecture.md; the driver's test says the
    // same), and a fresh-clone CI run, three files at once, lost 2 of ~19 here (26,146 of 30,000)
    const onDisk = (await d.cli(['logs', 'follower'])).stdout.split('\n').filter(Boolean).map(Number);
    console.log(`# followed ${got.length} of 30,000 lines`);
    assert.ok(got.every((v, i) => i === 0 || v > got[i - 1]!), 'in order, no duplicates');
    assert.deepEqual(got, onDisk, 'every line on disk was followed, once');
    assert.equal(got.at(-1), 30000, 'to the last');
    assert.ok(got.length >= 30000 * 0.8, `${30000 - got.length} of 30,000 lines lost: more than a few lagging rotation passes cost`);
    assert.ok(logFiles(c.id).count > 5, 'it rotated');
  });

  // The driver's own test reads 200 MB back (container-logs.test.ts); this one checks that the
  // API streams what the driver reads: ~73 MB over five files, more than twice the growth allowed.
  test('GET /containers/{id}/logs of ~73 MB streams: nimbusd RSS independent of the log size, every line', async () => {
    const LINE = 'y'.repeat(99);
    const N = 500_000; // ~73 MB of records
    const r = await d.cli(['run', '-d', '--name', 'big', '--log-opt', 'max-size=16m', '--log-opt', 'max-file=5', IMAGE, 'sh', '-c', `yes ${LINE} | head -n ${N}`]);
    assert.equal(r.code, 0, r.stderr);
    const c = await exited('big');
    assert.equal(c.exitCode, 0);
    assert.ok(logFiles(c.id).bytes > 70e6, `${logFiles(c.id).bytes} bytes on disk`);
    assert.equal(logFiles(c.id).count, 5, 'across rotated files');
    const pid = d.child.pid!;
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
    // the daemon's own view of its memory (prom-client's default metrics): when the RSS check fails,
    // whether V8's heap grew (garbage not yet collected under load) or memory outside it
    const memory = async () => {
      const { text } = await call({ socketPath: d.socket }, 'GET', '/metrics');
      const pick = (name: string) => Number(new RegExp(`^nimbus_${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN) / 2 ** 20;
      return { heapTotal: pick('nodejs_heap_size_total_bytes'), heapUsed: pick('nodejs_heap_size_used_bytes'), external: pick('nodejs_external_memory_bytes') };
    };
    const mem0 = await memory().catch(() => undefined);
    const rss0 = rss();
    let peak = rss0;
    const sampler = setInterval(() => (peak = Math.max(peak, rss())), 20);
    let lines = 0;
    let bad = 0;
    let part = '';
    try {
      await new Promise<void>((ok, fail) => {
        const req = request({ socketPath: d.socket, method: 'GET', path: `/containers/${c.id}/logs` }, (res) => {
          assert.equal(res.statusCode, 200);
          let rest = '';
          res.setEncoding('utf8');
          res.on('data', (s: string) => {
            const chunk = rest + s;
            let at = 0;
            for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', at)) {
              const rec = JSON.parse(chunk.slice(at, nl)) as { line?: string; partial?: boolean; error?: unknown };
              at = nl + 1;
              if (rec.error) return fail(new Error(`in-band error: ${JSON.stringify(rec.error)}`));
              if (rec.partial) {
                part += rec.line;
                continue;
              }
              if (part + rec.line !== LINE) bad++;
              part = '';
              lines++;
            }
            rest = chunk.slice(at);
          });
          res.on('end', ok);
          res.on('error', fail);
        });
        req.on('error', fail);
        req.end();
      });
    } finally {
      clearInterval(sampler);
    }
    assert.equal(lines, N, 'every line, once');
    assert.equal(bad, 0);
    const growth = (peak - rss0) / 2 ** 20;
    console.log(`# nimbusd served ${(logFiles(c.id).bytes / 1e6).toFixed(0)} MB of log: RSS ${(rss0 / 2 ** 20).toFixed(0)} MiB, peak +${growth.toFixed(1)} MiB`);
    const mem1 = await memory().catch(() => undefined);
    const heap = mem0 && mem1 ? `; V8 heap total ${mem0.heapTotal.toFixed(1)} → ${mem1.heapTotal.toFixed(1)} MiB (used ${mem0.heapUsed.toFixed(1)} → ${mem1.heapUsed.toFixed(1)}), external ${mem0.external.toFixed(1)} → ${mem1.external.toFixed(1)} MiB, read after the stream` : '';
    console.log(`# memory${heap || ': not read'}`);
    if (growth >= 32) {
      // Under load V8 may promote the stream's garbage faster than it marks, and an idle daemon
      // may not collect it for a long time (a CI run saw the used heap stay at 97 MiB for 45 s).
      // That is not holding the log; a stream that keeps what it served keeps V8's used heap up
      // after a full collection. A heap snapshot (SIGUSR2, set above) makes one: V8 collects all
      // garbage before it writes the snapshot, and the daemon answers again once it is written.
      const limit = (mem0?.heapUsed ?? NaN) + 16;
      let settled: number | undefined;
      for (let i = 0; i < 10 && settled === undefined; i++) {
        await new Promise((r) => setTimeout(r, 1_000));
        const m = await memory().catch(() => undefined);
        if (m && m.heapUsed <= limit) settled = m.heapUsed;
      }
      let how = 'on its own';
      if (settled === undefined) {
        how = 'after a full collection (a heap snapshot)';
        process.kill(pid, 'SIGUSR2');
        const snapshot = await waitFor('the heap snapshot written', async () => {
          const f = readdirSync(join(d.home, 'cwd')).find((n) => n.endsWith('.heapsnapshot'));
          return f && (await memory().catch(() => undefined)) ? f : undefined; // /metrics answers once the write is done
        }, 120_000);
        const m = await memory();
        if (m.heapUsed <= limit) settled = m.heapUsed;
        console.log(`# heap snapshot ${snapshot}: V8's used heap ${m.heapUsed.toFixed(1)} MiB after it`);
      }
      console.log(`# RSS grew ${growth.toFixed(1)} MiB; V8's used heap ${settled === undefined ? 'stayed' : `came back to ${settled.toFixed(1)} MiB ${how}`}`);
      assert.ok(settled !== undefined, `nimbusd RSS grew ${growth.toFixed(1)} MiB and V8's used heap stayed above ${limit.toFixed(1)} MiB after a full collection${heap}`);
    }
    assert.equal((await d.cli(['rm', 'big'])).code, 0);
  });

  test('log limits out of range are 400 naming the field; nothing is created', async () => {
    for (const log of [{ maxFiles: 0 }, { maxFiles: 65 }, { maxSizeBytes: 1000 }, { maxSizeBytes: 2 ** 31 }, { maxFiles: '3' }, { compress: true }]) {
      const r = await d.api<{ error: { code: string; message: string } }>('POST', '/containers', { image: IMAGE, name: 'bad-log', log });
      assert.equal(r.status, 400, JSON.stringify({ log, body: r.body }));
      assert.match(r.body.error.message, /log/);
    }
    assert.equal((await d.api('GET', '/containers/bad-log')).status, 404);
  });
});
