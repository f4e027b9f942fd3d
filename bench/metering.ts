/**
 * Metering overhead: the start-latency and burst figures with usage metering on against off,
 * in the same run, one daemon at a time: each round starts a fresh daemon per side (its own
 * home, bridge and store), measures it and stops it before the other side starts, the order
 * alternating between rounds so that drift in the host's load falls on both. (Two daemons side
 * by side measured each other's background work: the "on" sampler ran while "off" was timed,
 * and a control run with metering off on both sides read 1.25x in the daemon's CPU per request.)
 *   off   NIMBUS_METERING_INTERVAL_MS=0: no sampler, no cursors (the API hook and event
 *         counters of /metrics still run: they are not optional)
 *   on    a sampler every BENCH_METERING_INTERVAL_MS (default 60000 ms, the daemon's default:
 *         what users run; 1000, 60x that, makes the sampler's own cost show)
 * Per round and side: BENCH_RUNS (default 30) `run --rm true` through the API, 200 ms apart
 * (as start-latency's isolated mode), then, once the daemon is settled (its warm pool refilled
 * to its target, no removal pending: both sides meet the same pool), a burst of BENCH_METERING_BURST (default 50)
 * containers started at once (`run -d IMAGE sleep 3600`), timed until every one is running
 * as the API reports it, then, settled again, left running for three sampling intervals, at most 10 s (the
 * sampler's passes over them: the daemon's CPU time over them is the steady cost of metering N
 * running instances, read from /proc/PID/stat) and removed. BENCH_METERING_ROUNDS rounds (default 4).
 * Each ratio is given twice: over all samples pooled, and as the median of the rounds' own
 * ratios (paired: a round's two sides ran minutes apart, so slow drift cancels).
 * Goal (issue 17): within noise, < 2 % (on / off ≤ 1.02). BENCH_METERING_AA=1 runs the control:
 * both sides off, the same rounds, so its ratios are the host's noise floor for these figures.
 * Run alone: node dist/bench/metering.js
 */
import { nimbusRunRm, startBenchDaemon, type BenchDaemon, type UnixClient } from './lib/daemon.js';
import { readFileSync } from 'node:fs';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { measure, msSince, now, ratio, summarize } from './lib/stats.js';

const NAME = 'metering';
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 30));
const BURST = Math.max(1, Number(process.env.BENCH_METERING_BURST ?? 50));
const ROUNDS = Math.max(1, Number(process.env.BENCH_METERING_ROUNDS ?? 4));
const INTERVAL_MS = Math.max(100, Number(process.env.BENCH_METERING_INTERVAL_MS ?? 60_000));
/** BENCH_METERING_AA=1: the control run, metering off on both sides: the ratios it prints are this host's noise floor. */
const AA = process.env.BENCH_METERING_AA === '1';
const GAP_MS = 200;
/** How long the burst's containers are left running for the steady cost: three sampling passes, at most 10 s (at the default 60 s rate a window may hold no pass: the figure then says little). */
const HOLD_MS = Math.min(3 * INTERVAL_MS, 10_000);
const GOAL_RATIO = 1.02;

type SideName = 'off' | 'on';

/** A daemon with metering set by the environment it is spawned with. */
async function daemonWithMetering(intervalMs: number): Promise<BenchDaemon> {
  const before = process.env.NIMBUS_METERING_INTERVAL_MS;
  process.env.NIMBUS_METERING_INTERVAL_MS = String(intervalMs);
  try {
    return await startBenchDaemon();
  } finally {
    if (before === undefined) delete process.env.NIMBUS_METERING_INTERVAL_MS;
    else process.env.NIMBUS_METERING_INTERVAL_MS = before;
  }
}

/** N containers created and started at once; ms until the API reports every one running. */
async function burst(client: UnixClient, image: string, n: number): Promise<number> {
  const t0 = now();
  const made = await Promise.all(Array.from({ length: n }, () => client.json<{ id: string }>('POST', '/containers', { image, cmd: ['sleep', '3600'], start: true })));
  for (;;) {
    const list = await client.json<{ id: string; status: string }[]>('GET', '/containers');
    const running = new Set(list.filter((c) => c.status === 'running').map((c) => c.id));
    if (made.every((c) => running.has(c.id))) return msSince(t0);
    if (msSince(t0) > 120_000) throw new Error(`burst: ${running.size} of ${n} running after 120 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface AgentInfo { warmPool?: { ready: number; sizing?: { target: number } }; removals?: { pending: number } }

/**
 * Until the daemon is settled: its warm pool at its target and no removal pending (at most
 * 120 s). A burst then meets the same pool on both sides: without this, the side whose refill
 * after the previous burst was slower met a half-empty pool and measured that, not metering.
 */
async function settled(client: UnixClient): Promise<void> {
  const t0 = now();
  for (;;) {
    const a = (await client.json<{ agent: AgentInfo }>('GET', '/info')).agent;
    if ((a.warmPool?.ready ?? 0) >= (a.warmPool?.sizing?.target ?? 0) && (a.removals?.pending ?? 0) === 0) return;
    if (msSince(t0) > 120_000) throw new Error(`not settled after 120 s: ${JSON.stringify(a.warmPool)} ${JSON.stringify(a.removals)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The process's CPU time (user + system) in ms, from /proc/PID/stat (clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10; // utime, stime: fields 14 and 15 of stat
}

async function removeAll(client: UnixClient): Promise<void> {
  const list = await client.json<{ id: string }[]>('GET', '/containers?all=true');
  await Promise.all(list.map((c) => client.request('DELETE', `/containers/${c.id}?force=true`)));
}

/** One side's round on a fresh daemon, stopped before returning. */
async function measureSide(env: BenchEnv, name: SideName, round: number): Promise<{ starts: number[]; startCpu: number; burst: number; holdCpu: number; metered: number }> {
  const d = await daemonWithMetering(name === 'on' && !AA ? INTERVAL_MS : 0);
  try {
    await d.pull(env.busybox);
    const client = d.client;
    await settled(client);
    note(NAME, `round ${round}/${ROUNDS}, metering ${name}: ${RUNS} × run --rm true, ${GAP_MS} ms apart`);
    const c0 = cpuMs(d.pid);
    const starts = await measure(RUNS, () => nimbusRunRm(client, env.busybox), { warmup: 1, gapMs: GAP_MS });
    const startCpu = (cpuMs(d.pid) - c0) / (RUNS + 1); // the warm-up's too
    await settled(client);
    note(NAME, `round ${round}/${ROUNDS}, metering ${name}: burst of ${BURST}`);
    const burstMs = await burst(client, env.busybox, BURST);
    await settled(client); // the refill after the burst is not metering's: measured once it is done
    const [h0, t0] = [cpuMs(d.pid), now()];
    await new Promise((r) => setTimeout(r, HOLD_MS)); // the sampler passes over them (on)
    const holdCpu = (1000 * (cpuMs(d.pid) - h0)) / msSince(t0);
    // the "on" side really metered: every container it ran has usage
    const metered = name === 'on' && !AA ? (await client.json<{ instances: unknown[] }>('GET', '/usage')).instances.length : 0;
    await removeAll(client);
    return { starts, startCpu, burst: burstMs, holdCpu, metered };
  } finally {
    const left = await d.stop().catch((e: unknown) => [String(e)]);
    if (left.length) note(NAME, `nimbusd left behind: ${left.join(', ')}`);
  }
}

/**
 * The median, the mean of the two middle values for an even count: summarize rounds to 0.1, too
 * coarse for ratios near 1, and stats.ts's median is nearest-rank (with 4 rounds, the lower middle).
 */
function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
}

export async function metering(env: BenchEnv): Promise<BenchOutcome> {
  const starts: Record<SideName, number[]> = { off: [], on: [] };
  const bursts: Record<SideName, number[]> = { off: [], on: [] };
  const holdCpu: Record<SideName, number[]> = { off: [], on: [] }; // ms of the daemon's CPU per second, N containers running
  const startCpu: Record<SideName, number[]> = { off: [], on: [] }; // ms of the daemon's CPU per run --rm (its share of the gaps too)
  const paired = { startP50: [] as number[], startP95: [] as number[], burst: [] as number[], cpu: [] as number[] };
  let meteredInstances = 0;
  for (let round = 1; round <= ROUNDS; round++) {
    // alternate which side goes first, so neither always meets the host in the same state
    const order: SideName[] = round % 2 ? ['off', 'on'] : ['on', 'off'];
    const got: Partial<Record<SideName, Awaited<ReturnType<typeof measureSide>>>> = {};
    for (const name of order) {
      const r = (got[name] = await measureSide(env, name, round));
      starts[name].push(...r.starts);
      startCpu[name].push(r.startCpu);
      bursts[name].push(r.burst);
      holdCpu[name].push(r.holdCpu);
      meteredInstances = Math.max(meteredInstances, r.metered);
    }
    const [on, off] = [got.on!, got.off!];
    const [sOn, sOff] = [summarize(on.starts), summarize(off.starts)];
    paired.startP50.push(sOn.p50 / sOff.p50);
    paired.startP95.push(sOn.p95 / sOff.p95);
    paired.burst.push(on.burst / off.burst);
    paired.cpu.push(on.startCpu / off.startCpu);
    note(NAME, `round ${round}: run --rm p50 ${sOn.p50} / ${sOff.p50} ms, burst ${on.burst} / ${off.burst} ms, daemon CPU per run ${on.startCpu.toFixed(1)} / ${off.startCpu.toFixed(1)} ms (on / off)`);
  }
  const start = { off: summarize(starts.off), on: summarize(starts.on) };
  const all = { off: summarize(bursts.off), on: summarize(bursts.on) };
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const ratios = {
    start_p50_on_over_off: ratio(start.on.p50, start.off.p50),
    start_p95_on_over_off: ratio(start.on.p95, start.off.p95),
    burst_median_on_over_off: ratio(all.on.p50, all.off.p50),
    paired_start_p50_median: r3(median(paired.startP50)),
    paired_start_p95_median: r3(median(paired.startP95)),
    paired_burst_median: r3(median(paired.burst)),
    paired_daemon_cpu_per_run_median: r3(median(paired.cpu)),
  };
  const hold = { off: summarize(holdCpu.off), on: summarize(holdCpu.on) };
  const perRun = { off: summarize(startCpu.off), on: summarize(startCpu.on) };
  const cpuRatio = ratio(perRun.on.mean, perRun.off.mean);
  note(NAME, `daemon CPU with ${BURST} running: ${hold.on.p50} ms/s metering on, ${hold.off.p50} ms/s off (medians over ${ROUNDS} rounds)`);
  const record = makeRecord(NAME, {
    results: {
      runs: RUNS, rounds: ROUNDS, burst: BURST, intervalMs: INTERVAL_MS, control: AA, oneDaemonAtATime: true, unit: 'ms', startLatency: start, burstAllRunning: all,
      meteredInstances, daemonCpuMsPerSecondWhileRunning: hold, daemonCpuMsPerRunRm: perRun,
      pairedRatiosPerRound: { startP50: paired.startP50.map(r3), startP95: paired.startP95.map(r3), burst: paired.burst.map(r3), daemonCpuPerRun: paired.cpu.map(r3) },
    },
    ratios: { ...ratios, daemon_cpu_per_run_on_over_off: cpuRatio },
  });
  const row = (figure: string, on: number, off: number, r: number | null, pairedMedian: number): SummaryRow => ({
    bench: NAME, figure, unit: 'ms', nimbus: on, peers: { 'metering off': off }, ratio: r,
    goal: `≤ ${GOAL_RATIO}× off`, met: r === null ? null : r <= GOAL_RATIO,
    note: `${ROUNDS} rounds, one daemon at a time; median of the rounds' own ratios ${pairedMedian}×; ${AA ? "CONTROL: metering off on both sides (this host's noise floor)" : `sampling every ${INTERVAL_MS} ms; ${meteredInstances} instances metered`}`,
  });
  return {
    record,
    summary: [
      row('run --rm true p50, metering on', start.on.p50, start.off.p50, ratios.start_p50_on_over_off, ratios.paired_start_p50_median),
      row('run --rm true p95, metering on', start.on.p95, start.off.p95, ratios.start_p95_on_over_off, ratios.paired_start_p95_median),
      row(`burst of ${BURST} all running, metering on`, all.on.p50, all.off.p50, ratios.burst_median_on_over_off, ratios.paired_burst_median),
      {
        bench: NAME, figure: 'daemon CPU per run --rm true, metering on (ms, mean)', unit: 'ms', nimbus: perRun.on.mean, peers: { 'metering off': perRun.off.mean },
        ratio: cpuRatio, goal: `≤ ${GOAL_RATIO}× off`, met: cpuRatio === null ? null : cpuRatio <= GOAL_RATIO,
        note: `the daemon's CPU over each side's ${RUNS} requests and their gaps (/proc/PID/stat, 10 ms ticks), per request; median of the rounds' own ratios ${ratios.paired_daemon_cpu_per_run_median}×`,
      },
      {
        bench: NAME, figure: `daemon CPU, ${BURST} running, metering on (ms per s)`, unit: 'ms/s', nimbus: hold.on.p50, peers: { 'metering off': hold.off.p50 },
        ratio: null, goal: 'reported', met: null, note: `the steady cost of sampling ${BURST} instances every ${INTERVAL_MS} ms, over ${HOLD_MS / 1000} s: ${Math.round((hold.on.p50 - hold.off.p50) * 10) / 10} ms of CPU per second${HOLD_MS < 3 * INTERVAL_MS ? ' (a window shorter than three passes: see the 1 s rate for this figure)' : ''}`,
      },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, metering);
