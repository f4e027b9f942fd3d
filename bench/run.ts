/**
 * npm run bench: every benchmark in turn, each beside its peers, each printing
 * its JSON record line and appending it to bench/results/<name>.jsonl; every
 * benchmark gets fresh temp daemon homes started and stopped by the harness,
 * and everything made (daemons, registry, podman storage, runc containers,
 * temp dirs, mounts) is removed at the end, also on failure or Ctrl-C.
 * Ends with a human summary table (figures, peers, ratios, goals met or not).
 *   node dist/bench/run.js                          all
 *   node dist/bench/run.js start-latency burst      a selection
 * Environment: BENCH_RUNS (start-latency, default 30; BENCH_B2B_RUNS its back-to-back runs, default 100), BENCH_BURST (default 200),
 * BENCH_NET_RUNS (network-start, default 30), BENCH_SIZED_RUNS (sized-layer, default 30), BENCH_PULL_RUNS (default 5), BENCH_PULL_LAYERS / BENCH_PULL_LAYER_MIB (4 × 4 MiB),
 * BENCH_SCHED_QUICK=1 or --quick (schedule-scale at 1/5 size),
 * BENCH_METERING_BURST / BENCH_METERING_ROUNDS / BENCH_METERING_INTERVAL_MS (metering: 50, 2, 1000 ms),
 * BENCH_VM_RUNS (vm-boot, default 5), BENCH_MIGRATIONS and BENCH_MAX_DOWNTIME_MS (vm-migrate, default 10 and 300), BENCH_NET_MIGRATIONS and BENCH_DISK_MIB (vm-migrate-net, default 6 and 32), BENCH_DASHBOARD_INSTANCES and BENCH_DASHBOARD_RUNS (dashboard, default 1,000 and 5), BENCH_DOCKER_RUNS (docker-run, default 20), BENCH_COMPOSE_ROUNDS (compose-up, default 3), BENCH_BUILD_RUNS (docker-build, default 5), BENCH_FIO_SIZE_MIB / BENCH_FIO_RUNTIME / BENCH_FIO_ROUNDS (volume-io, default 128 MiB, 3 s per phase, 2 rounds), BENCH_HEAL_CONTAINERS / BENCH_HEAL_GRACE_MS (heal, default 5 and the daemon's 10 s), BENCH_IPERF_SECONDS / BENCH_NET_ROUNDS (overlay-net, default 4 s and 3 rounds), BENCH_MOVE_ROUNDS (container-move, default 3), BENCH_RESULTS_DIR (default bench/results).
 */
import { burst } from './burst.js';
import { runBenchmarks, type BenchEntry } from './lib/env.js';
import { summaryLines } from './lib/summary.js';
import { pullUnpack } from './pull-unpack.js';
import { quotaAdmission } from './lib/quota.js';
import { startLatency } from './start-latency.js';
import { vmBoot } from './vm-boot.js';
import { vmMigrate } from './vm-migrate.js';
import { vmMigrateNet } from './vm-migrate-net.js';
import { dashboard } from './dashboard.js';
import { secureStart } from './secure-start.js';
import { networkStart } from './network-start.js';
import { sizedLayer } from './sized-layer.js';
import { failover } from './failover.js';
import { heal } from './heal.js';
import { scheduleScale } from './schedule-scale.js';
import { metering } from './metering.js';
import { dockerRun } from './docker-run.js';
import { composeUp } from './compose-up.js';
import { dockerBuild } from './docker-build.js';
import { volumeIo } from './volume-io.js';
import { overlayNet } from './overlay-net.js';
import { containerMove } from './container-move.js';
import { tenantScale } from './tenant-scale.js';

const ALL: BenchEntry[] = [
  { name: 'start-latency', fn: startLatency },
  { name: 'network-start', fn: networkStart },
  { name: 'sized-layer', fn: sizedLayer },
  { name: 'burst', fn: burst },
  { name: 'pull-unpack', fn: pullUnpack },
  { name: 'quota-admission', fn: quotaAdmission, needsEnv: false },
  { name: 'vm-boot', fn: vmBoot, needsEnv: false },
  { name: 'vm-migrate', fn: vmMigrate, needsEnv: false },
  { name: 'vm-migrate-net', fn: vmMigrateNet, needsEnv: false },
  { name: 'dashboard', fn: dashboard },
  { name: 'secure-start', fn: secureStart },
  { name: 'failover', fn: failover },
  { name: 'heal', fn: heal, needsEnv: false },
  { name: 'schedule-scale', fn: scheduleScale, needsEnv: false },
  { name: 'metering', fn: metering },
  { name: 'docker-run', fn: dockerRun },
  { name: 'compose-up', fn: composeUp },
  { name: 'docker-build', fn: dockerBuild },
  { name: 'volume-io', fn: volumeIo },
  { name: 'overlay-net', fn: overlayNet },
  { name: 'container-move', fn: containerMove, needsEnv: false },
  { name: 'tenant-scale', fn: tenantScale, needsEnv: false },
];

const args = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const unknown = args.filter((a) => !ALL.some((b) => b.name === a));
if (unknown.length || process.argv.includes('--help') || process.argv.includes('-h')) {
  if (unknown.length) process.stderr.write(`unknown benchmark(s): ${unknown.join(', ')}\n`);
  process.stderr.write(`usage: node dist/bench/run.js [${ALL.map((b) => b.name).join('] [')}]\n`);
  process.exit(unknown.length ? 2 : 0);
}
const chosen = args.length ? ALL.filter((b) => args.includes(b.name)) : ALL;

const t0 = Date.now();
const { rows, failed } = await runBenchmarks(chosen);
process.stdout.write(`\n=== summary (${((Date.now() - t0) / 1000).toFixed(0)} s; records appended to bench/results/<name>.jsonl)\n`);
process.stdout.write(summaryLines(rows).join('\n') + '\n');
if (failed.length) process.stdout.write(`\nfailed: ${failed.join(', ')}\n`);
process.exitCode = failed.length ? 1 : 0;
