/**
 * What a writable layer of its own size costs a container start (docs/identity.md, "A container's
 * writable layer"): isolated `run --rm IMAGE true` through the API, unsized against
 * `storageBytes: 1 GiB` (a sparse ext4 image made, attached with direct I/O and mounted under the
 * overlay; unmounted and removed after), alternating run by run on one daemon:
 *   cold   a daemon with no warm pool (NIMBUS_WARM_POOL=0): every create makes its layer
 *   warm   a daemon with the default pool, which makes warm containers per layer size ahead
 * BENCH_SIZED_RUNS each (default 30), 300 ms apart, after untimed warm-ups.
 * Run alone: node dist/bench/sized-layer.js
 */
import type { BenchDaemon } from './lib/daemon.js';
import { startBenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { ratio, summarize, type Summary } from './lib/stats.js';

const NAME = 'sized-layer';
const RUNS = Math.max(1, Number(process.env.BENCH_SIZED_RUNS ?? 30));
const SIZE = 1024 ** 3;

type Side = Summary | { error: string };
const p50 = (s: Side) => ('p50' in s ? s.p50 : null);

/** One `run --rm IMAGE true` as the CLI does it, with or without a layer size; its wall time. */
async function runRm(d: BenchDaemon, image: string, storageBytes?: number): Promise<number> {
  const t0 = performance.now();
  const c = await d.client.json<{ id: string }>('POST', '/containers', { image, cmd: ['true'], autoRemove: true, ...(storageBytes ? { storageBytes } : {}) });
  const id = encodeURIComponent(c.id);
  const gone = d.client.json<{ exitCode: number }>('POST', `/containers/${id}/wait?condition=removed`);
  await d.client.json('POST', `/containers/${id}/start`);
  const w = await gone;
  if (w.exitCode !== 0) throw new Error(`container exited ${w.exitCode}`);
  return performance.now() - t0;
}

async function sides(env: BenchEnv, warmPool: string | undefined): Promise<{ unsized: Side; sized: Side }> {
  const before = process.env.NIMBUS_WARM_POOL;
  let d: BenchDaemon | undefined;
  try {
    // the daemon takes its environment at spawn
    if (warmPool === undefined) delete process.env.NIMBUS_WARM_POOL;
    else process.env.NIMBUS_WARM_POOL = warmPool;
    d = await startBenchDaemon();
    if (before === undefined) delete process.env.NIMBUS_WARM_POOL;
    else process.env.NIMBUS_WARM_POOL = before;
    await d.pull(env.busybox);
    for (let i = 0; i < 3; i++) {
      await runRm(d, env.busybox);
      await runRm(d, env.busybox, SIZE);
    }
    const times = { unsized: [] as number[], sized: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      // alternating, each side first every other round
      for (const k of i % 2 ? (['sized', 'unsized'] as const) : (['unsized', 'sized'] as const)) {
        await new Promise((r) => setTimeout(r, 300));
        times[k].push(await runRm(d, env.busybox, k === 'sized' ? SIZE : undefined));
      }
    }
    return { unsized: summarize(times.unsized), sized: summarize(times.sized) };
  } catch (e) {
    const error = { error: e instanceof Error ? e.message.slice(0, 300) : String(e) };
    return { unsized: error, sized: error };
  } finally {
    if (before === undefined) delete process.env.NIMBUS_WARM_POOL;
    else process.env.NIMBUS_WARM_POOL = before;
    await d?.stop().catch(() => undefined);
  }
}

export async function sizedLayer(env: BenchEnv): Promise<BenchOutcome> {
  note(NAME, `cold (no warm pool): unsized and 1 GiB alternating, ${RUNS} runs each`);
  const cold = await sides(env, '0');
  note(NAME, `warm (default pool): the same, ${RUNS} runs each`);
  const warm = await sides(env, undefined);
  const record = makeRecord(NAME, {
    results: { runs: RUNS, unit: 'ms', sizeBytes: SIZE, cold, warm },
    ratios: { cold_sized_over_unsized_p50: ratio(p50(cold.sized), p50(cold.unsized)), warm_sized_over_unsized_p50: ratio(p50(warm.sized), p50(warm.unsized)) },
  });
  const added = (s: { unsized: Side; sized: Side }) => (p50(s.sized) !== null && p50(s.unsized) !== null ? (p50(s.sized)! - p50(s.unsized)!).toFixed(1) : '?');
  return {
    record,
    summary: [
      { bench: NAME, figure: 'run --rm true p50, 1 GiB layer, no warm pool', unit: 'ms', nimbus: p50(cold.sized), peers: { 'unsized, same daemon': p50(cold.unsized) }, ratio: ratio(p50(cold.sized), p50(cold.unsized)), note: `the layer's filesystem adds ${added(cold)} ms` },
      { bench: NAME, figure: 'run --rm true p50, 1 GiB layer, default pool', unit: 'ms', nimbus: p50(warm.sized), peers: { 'unsized, same daemon': p50(warm.unsized) }, ratio: ratio(p50(warm.sized), p50(warm.unsized)), note: `adds ${added(warm)} ms (warm containers are made per size)` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, sizedLayer);
