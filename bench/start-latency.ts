/**
 * Container start-to-exit latency of `true` in busybox, side by side in one run:
 *   nimbusApi   what `nimbus run --rm IMAGE true` does, from an in-process client
 *               over the unix socket: create {autoRemove} → wait(removed) + logs
 *               follow opened → start → exit code received
 *   nimbusCli   `node dist/src/cli/main.js run --rm IMAGE true` spawned (node
 *               startup dominates it; nodeStartup shows that floor)
 *   podman      podman run --rm --network none --runtime runc --ulimit … IMAGE true
 *               (private --root/--runroot/--tmpdir, image pulled from the loopback registry)
 *   runc        raw `runc run` on a prepared bundle, a new container id per run
 *   crun        raw `crun run` on the same kind of bundle, where crun runs here (the row
 *               names the runtime nimbusd ran on: runc by default, auto's first choice)
 * N runs each (env BENCH_RUNS, default 30; back to back BENCH_B2B_RUNS, default 100: its requests
 * alternate between a warm container already made and one still being made, and 30 of them put
 * the p50 on either mode), after one untimed warm-up, in two modes:
 *   isolated      an untimed pause (BENCH_GAP_MS, default 200 ms) before each run, so each
 *                 request meets an idle host: the latency a user sees
 *   back-to-back  no pause: latency under sustained load, where background work
 *                 (nimbus' warm pool and removals) competes with the requests
 * Nimbus runs with its default warm pool (NIMBUS_WARM_POOL=2 per image), on its embedded SQLite
 * store and again on PostgreSQL (a throwaway cluster on a unix socket, scripts/fixtures/postgres.ts):
 * the store a cloud of many hosts uses must not make a start slower, and the embedded one must
 * stay as it was.
 * Run alone: node dist/bench/start-latency.js
 */
import { run } from '../src/core/exec.js';
import { CLI_MAIN, nimbusRunRm, startBenchDaemon, type BenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { cleanup } from './lib/cleanup.js';
import { startPostgres } from '../scripts/fixtures/postgres.js';
import { PODMAN_RUN_FLAGS, podmanStore, prepareRuncBundle } from './lib/peers.js';
import { probeRuntime } from '../src/agent/drivers/container/oci-runtime.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { measure, ratio, summarize, type Summary } from './lib/stats.js';

const NAME = 'start-latency';
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 30));
const B2B_RUNS = Math.max(1, Number(process.env.BENCH_B2B_RUNS ?? 100));
const GAP_MS = Math.max(0, Number(process.env.BENCH_GAP_MS ?? 200));

/** The same side measured in both modes. */
interface Modes { isolated: Side; backToBack: Side }
async function bothModes(label: string, fn: (i: number) => unknown): Promise<Modes> {
  const one = async (gapMs: number): Promise<Side> => {
    try {
      const runs = gapMs ? RUNS : B2B_RUNS;
      note(NAME, `${label}: ${runs} runs${gapMs ? `, ${gapMs} ms apart` : ' back to back'}`);
      return summarize(await measure(runs, fn, { warmup: 1, gapMs }));
    } catch (e) {
      return err(e);
    }
  };
  return { isolated: await one(GAP_MS), backToBack: await one(0) };
}

type Side = Summary | { error: string };
const err = (e: unknown) => ({ error: e instanceof Error ? e.message.slice(0, 500) : String(e) });
const p = (s: Side | undefined, k: 'p50' | 'p95') => (s && 'p50' in s ? s[k] : null);

/** The API side again, on a PostgreSQL store. */
async function sideNimbusPostgres(env: BenchEnv): Promise<Modes> {
  let d: BenchDaemon | undefined;
  let stopCluster: (() => Promise<void>) | undefined;
  try {
    note(NAME, 'PostgreSQL: a cluster of its own (initdb, unix socket)');
    const cluster = await startPostgres();
    stopCluster = cleanup.add('postgres cluster', () => cluster.stop());
    d = await startBenchDaemon(['--store', cluster.url]);
    await d.pull(env.busybox);
    const client = d.client;
    const api = await bothModes('nimbus API (PostgreSQL store)', () => nimbusRunRm(client, env.busybox));
    const left = await d.stop();
    if (left.length) note(NAME, `nimbusd left behind: ${left.join(', ')}`);
    return api;
  } catch (e) {
    await d?.stop().catch(() => undefined);
    return { isolated: err(e), backToBack: err(e) };
  } finally {
    await stopCluster?.();
  }
}

async function sideNimbus(env: BenchEnv): Promise<{ api: Modes; cli: Side; warmPool: unknown; runtime: string }> {
  let d: BenchDaemon | undefined;
  try {
    d = await env.newDaemon();
    await d.pull(env.busybox);
    const client = d.client;
    const api = await bothModes('nimbus API', () => nimbusRunRm(client, env.busybox));
    const cliEnv = { ...process.env, NIMBUS_SOCKET: d.socket };
    const cli = (await bothModes('nimbus CLI', async () => {
      const r = await run(process.execPath, [CLI_MAIN, 'run', '--rm', env.busybox, 'true'], { env: cliEnv, timeoutMs: 60_000 });
      if (r.code !== 0) throw new Error(`nimbus run exit ${r.code}: ${r.stderr.trim()}`);
    })).isolated;
    const info = (await client.json<{ agent: { warmPool?: unknown; runtimes?: { name: string; default?: boolean }[] } }>('GET', '/info')).agent;
    const runtime = info.runtimes?.find((r) => r.default)?.name ?? '?';
    const left = await d.stop();
    if (left.length) note(NAME, `nimbusd left behind: ${left.join(', ')}`);
    return { api, cli, warmPool: info.warmPool ?? null, runtime };
  } catch (e) {
    await d?.stop().catch(() => undefined);
    return { api: { isolated: err(e), backToBack: err(e) }, cli: err(e), warmPool: null, runtime: '?' };
  }
}

async function sideRunc(runtime: 'runc' | 'crun'): Promise<Modes> {
  const b = await prepareRuncBundle(['/bin/true'], runtime);
  try {
    return await bothModes(`${runtime} run`, (i) => b.run(`bench-${process.pid}-${i < 0 ? `w${-i}` : i}-${Math.random().toString(36).slice(2, 8)}`));
  } finally {
    await b.remove();
  }
}

async function sidePodman(image: string): Promise<{ podman: Modes; podmanVersion: string }> {
  const store = podmanStore();
  let version = '';
  try {
    version = (await store.podman(['version', '--format', '{{.Client.Version}}']).catch(() => '')).trim();
    note(NAME, `podman ${version}: pull into private store`);
    await store.podman(['pull', '-q', '--tls-verify=false', image]);
    const args = ['run', ...PODMAN_RUN_FLAGS, image, 'true'];
    return { podman: await bothModes('podman', () => store.podman(args)), podmanVersion: version };
  } catch (e) {
    return { podman: { isolated: err(e), backToBack: err(e) }, podmanVersion: version };
  } finally {
    await store.remove();
  }
}

export async function startLatency(env: BenchEnv): Promise<BenchOutcome> {
  const nimbus = await sideNimbus(env);
  const onPostgres = await sideNimbusPostgres(env);
  const runcS = await sideRunc('runc');
  // crun where it runs here: its raw figure beside runc's (nimbusd on crun: NIMBUS_RUNTIME=crun)
  const crunReason = await probeRuntime('crun');
  const crunS: Modes | null = crunReason ? null : await sideRunc('crun');
  if (crunReason) note(NAME, `raw crun not measured: ${crunReason}`);
  const { podman, podmanVersion } = await sidePodman(env.busybox);
  note(NAME, `node startup floor: ${Math.min(RUNS, 10)} runs of node -e ''`);
  const nodeStartup = summarize(await measure(Math.min(RUNS, 10), () => run(process.execPath, ['-e', ''])));
  const ratios = {
    nimbusApi_over_podman_p50: ratio(p(nimbus.api.isolated, 'p50'), p(podman.isolated, 'p50')),
    nimbusApi_over_podman_p95: ratio(p(nimbus.api.isolated, 'p95'), p(podman.isolated, 'p95')),
    nimbusApi_over_runc_p50: ratio(p(nimbus.api.isolated, 'p50'), p(runcS.isolated, 'p50')),
    nimbusApi_over_runc_p95: ratio(p(nimbus.api.isolated, 'p95'), p(runcS.isolated, 'p95')),
    backToBack_nimbusApi_over_podman_p50: ratio(p(nimbus.api.backToBack, 'p50'), p(podman.backToBack, 'p50')),
    backToBack_nimbusApi_over_runc_p50: ratio(p(nimbus.api.backToBack, 'p50'), p(runcS.backToBack, 'p50')),
    backToBack_nimbusApi_over_podman_p95: ratio(p(nimbus.api.backToBack, 'p95'), p(podman.backToBack, 'p95')),
    backToBack_nimbusApi_over_runc_p95: ratio(p(nimbus.api.backToBack, 'p95'), p(runcS.backToBack, 'p95')),
    nimbusCli_over_podman_p50: ratio(p(nimbus.cli, 'p50'), p(podman.isolated, 'p50')),
    postgres_over_sqlite_p50: ratio(p(onPostgres.isolated, 'p50'), p(nimbus.api.isolated, 'p50')),
    postgres_over_runc_p50: ratio(p(onPostgres.isolated, 'p50'), p(runcS.isolated, 'p50')),
    backToBack_postgres_over_sqlite_p50: ratio(p(onPostgres.backToBack, 'p50'), p(nimbus.api.backToBack, 'p50')),
    nimbusApi_over_crun_p50: crunS ? ratio(p(nimbus.api.isolated, 'p50'), p(crunS.isolated, 'p50')) : null,
    backToBack_nimbusApi_over_crun_p50: crunS ? ratio(p(nimbus.api.backToBack, 'p50'), p(crunS.backToBack, 'p50')) : null,
  };
  const record = makeRecord(NAME, {
    results: { runs: RUNS, backToBackRuns: B2B_RUNS, gapMs: GAP_MS, image: env.busybox, unit: 'ms', nimbusApi: nimbus.api, nimbusApiPostgres: onPostgres, nimbusCli: nimbus.cli, nodeStartup, warmPool: nimbus.warmPool, daemonRuntime: nimbus.runtime },
    peers: {
      podman,
      podmanCommand: `podman run ${PODMAN_RUN_FLAGS.join(' ')} IMAGE true`,
      podmanVersion,
      runc: runcS,
      runcCommand: 'runc --root TMP run --bundle BUNDLE ID (busybox rootfs, /bin/true)',
      crun: crunS ?? { error: crunReason ?? 'not measured' },
      crunCommand: 'crun --root TMP run --bundle BUNDLE ID (the same bundle)',
    },
    ratios,
  });
  const row = (figure: string, k: 'p50' | 'p95', mode: keyof Modes, side: Side, r1: number | null, r2: number | null, noteText?: string): SummaryRow => ({
    bench: NAME, figure, unit: 'ms', nimbus: p(side, k),
    peers: { podman: p(podman[mode], k), runc: p(runcS[mode], k), ...(crunS ? { crun: p(crunS[mode], k) } : {}) },
    ratio: r1,
    // issue 18's goal: the API's p50 isolated, and its p50 and p95 back to back, at or below raw `runc run`'s (r2: the API's ratio to it)
    ...((mode === 'backToBack' || k === 'p50') && r2 !== null ? { goal: '≤ raw runc', met: r2 <= 1 } : {}),
    note: [
      r2 !== null ? `/runc ${r2}×` : '', crunS && 'p50' in side ? `/crun ${ratio(p(side, k), p(crunS[mode], k))}×` : '',
      `nimbusd on ${nimbus.runtime}`, 'error' in side ? side.error.slice(0, 60) : '', noteText ?? '',
    ].filter(Boolean).join('; '),
  });
  return {
    record,
    summary: [
      row('run --rm true p50 (API)', 'p50', 'isolated', nimbus.api.isolated, ratios.nimbusApi_over_podman_p50, ratios.nimbusApi_over_runc_p50, `${GAP_MS} ms apart`),
      row('run --rm true p95 (API)', 'p95', 'isolated', nimbus.api.isolated, ratios.nimbusApi_over_podman_p95, ratios.nimbusApi_over_runc_p95, `${GAP_MS} ms apart`),
      row('run --rm true p50 (API, back to back)', 'p50', 'backToBack', nimbus.api.backToBack, ratios.backToBack_nimbusApi_over_podman_p50, ratios.backToBack_nimbusApi_over_runc_p50, `${B2B_RUNS} runs`),
      row('run --rm true p95 (API, back to back)', 'p95', 'backToBack', nimbus.api.backToBack, ratios.backToBack_nimbusApi_over_podman_p95, ratios.backToBack_nimbusApi_over_runc_p95, `${B2B_RUNS} runs`),
      {
        bench: NAME, figure: 'run --rm true p50 (API, PostgreSQL store)', unit: 'ms', nimbus: p(onPostgres.isolated, 'p50'),
        peers: { sqlite: p(nimbus.api.isolated, 'p50'), runc: p(runcS.isolated, 'p50') }, ratio: ratios.postgres_over_sqlite_p50,
        note: [ratios.postgres_over_runc_p50 !== null ? `/runc ${ratios.postgres_over_runc_p50}×` : '', 'error' in onPostgres.isolated ? onPostgres.isolated.error.slice(0, 60) : ''].filter(Boolean).join('; '),
      },
      row('run --rm true p50 (CLI)', 'p50', 'isolated', nimbus.cli, ratios.nimbusCli_over_podman_p50, null, `node -e '' p50 ${nodeStartup.p50} ms`),
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, startLatency);
