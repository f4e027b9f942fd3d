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
 * N runs each (env BENCH_RUNS, default 30), after one untimed warm-up.
 * Run alone: node dist/bench/start-latency.js
 */
import { run } from '../src/core/exec.js';
import { CLI_MAIN, nimbusRunRm, type BenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { PODMAN_RUN_FLAGS, podmanStore, prepareRuncBundle } from './lib/peers.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { measure, ratio, summarize, type Summary } from './lib/stats.js';

const NAME = 'start-latency';
const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 30));

type Side = Summary | { error: string };
const err = (e: unknown) => ({ error: e instanceof Error ? e.message.slice(0, 500) : String(e) });
const p = (s: Side | undefined, k: 'p50' | 'p95') => (s && 'p50' in s ? s[k] : null);

async function sideNimbus(env: BenchEnv): Promise<{ api: Side; cli: Side }> {
  let d: BenchDaemon | undefined;
  let api: Side;
  let cli: Side;
  try {
    d = await env.newDaemon();
    await d.pull(env.busybox);
    const client = d.client;
    try {
      note(NAME, `nimbus API: ${RUNS} runs`);
      api = summarize(await measure(RUNS, () => nimbusRunRm(client, env.busybox), { warmup: 1 }));
    } catch (e) {
      api = err(e);
    }
    try {
      note(NAME, `nimbus CLI: ${RUNS} runs`);
      const cliEnv = { ...process.env, NIMBUS_SOCKET: d.socket };
      cli = summarize(await measure(RUNS, async () => {
        const r = await run(process.execPath, [CLI_MAIN, 'run', '--rm', env.busybox, 'true'], { env: cliEnv, timeoutMs: 60_000 });
        if (r.code !== 0) throw new Error(`nimbus run exit ${r.code}: ${r.stderr.trim()}`);
      }, { warmup: 1 }));
    } catch (e) {
      cli = err(e);
    }
    const left = await d.stop();
    if (left.length) note(NAME, `nimbusd left behind: ${left.join(', ')}`);
  } catch (e) {
    api = err(e);
    cli = err(e);
    await d?.stop().catch(() => undefined);
  }
  return { api, cli };
}

async function sideRunc(runtime: 'runc' | 'crun'): Promise<Side> {
  const b = await prepareRuncBundle(['/bin/true'], runtime);
  try {
    note(NAME, `${runtime} run: ${RUNS} runs`);
    return summarize(await measure(RUNS, (i) => b.run(`bench-${process.pid}-${i < 0 ? `w${-i}` : i}`), { warmup: 1 }));
  } catch (e) {
    return err(e);
  } finally {
    await b.remove();
  }
}

async function sidePodman(image: string): Promise<{ podman: Side; podmanVersion: string }> {
  const store = podmanStore();
  let version = '';
  try {
    version = (await store.podman(['version', '--format', '{{.Client.Version}}']).catch(() => '')).trim();
    note(NAME, `podman ${version}: pull into private store, then ${RUNS} runs`);
    await store.podman(['pull', '-q', '--tls-verify=false', image]);
    const args = ['run', ...PODMAN_RUN_FLAGS, image, 'true'];
    return { podman: summarize(await measure(RUNS, () => store.podman(args), { warmup: 1 })), podmanVersion: version };
  } catch (e) {
    return { podman: err(e), podmanVersion: version };
  } finally {
    await store.remove();
  }
}

export async function startLatency(env: BenchEnv): Promise<BenchOutcome> {
  const nimbus = await sideNimbus(env);
  const runcS = await sideRunc('runc');
  const { podman, podmanVersion } = await sidePodman(env.busybox);
  note(NAME, `node startup floor: ${Math.min(RUNS, 10)} runs of node -e ''`);
  const nodeStartup = summarize(await measure(Math.min(RUNS, 10), () => run(process.execPath, ['-e', ''])));
  const ratios = {
    nimbusApi_over_podman_p50: ratio(p(nimbus.api, 'p50'), p(podman, 'p50')),
    nimbusApi_over_podman_p95: ratio(p(nimbus.api, 'p95'), p(podman, 'p95')),
    nimbusApi_over_runc_p50: ratio(p(nimbus.api, 'p50'), p(runcS, 'p50')),
    nimbusApi_over_runc_p95: ratio(p(nimbus.api, 'p95'), p(runcS, 'p95')),
    nimbusCli_over_podman_p50: ratio(p(nimbus.cli, 'p50'), p(podman, 'p50')),
  };
  const record = makeRecord(NAME, {
    results: { runs: RUNS, image: env.busybox, unit: 'ms', nimbusApi: nimbus.api, nimbusCli: nimbus.cli, nodeStartup },
    peers: {
      podman,
      podmanCommand: `podman run ${PODMAN_RUN_FLAGS.join(' ')} IMAGE true`,
      podmanVersion,
      runc: runcS,
      runcCommand: 'runc --root TMP run --bundle BUNDLE ID (busybox rootfs, /bin/true)',
    },
    ratios,
  });
  const row = (figure: string, k: 'p50' | 'p95', side: Side, r1: number | null, r2: number | null, noteText?: string): SummaryRow => ({
    bench: NAME, figure, unit: 'ms', nimbus: p(side, k),
    peers: { podman: p(podman, k), runc: p(runcS, k) },
    ratio: r1, note: [r2 !== null ? `/runc ${r2}×` : '', 'error' in side ? side.error.slice(0, 60) : '', noteText ?? ''].filter(Boolean).join('; '),
  });
  return {
    record,
    summary: [
      row('run --rm true p50 (API)', 'p50', nimbus.api, ratios.nimbusApi_over_podman_p50, ratios.nimbusApi_over_runc_p50),
      row('run --rm true p95 (API)', 'p95', nimbus.api, ratios.nimbusApi_over_podman_p95, ratios.nimbusApi_over_runc_p95),
      row('run --rm true p50 (CLI)', 'p50', nimbus.cli, ratios.nimbusCli_over_podman_p50, null, `node -e '' p50 ${nodeStartup.p50} ms`),
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, startLatency);
