/**
 * What every benchmark runs against: the real docker-registry on loopback
 * (scripts/fixtures/registry.ts) holding the shared busybox test image
 * (scripts/fixtures/images.ts), and fresh nimbusd daemons on temp homes.
 * runBenchmarks() is the common driver for bench/run.ts and each benchmark
 * run on its own: set up, run, print+append the record, clean up everything
 * (also on failure and on SIGINT/SIGTERM).
 */
import { buildTestImages, pushTestImages, TEST_REPO } from '../../scripts/fixtures/images.js';
import { startRegistry, type RegistryFixture } from '../../scripts/fixtures/registry.js';
import { cleanup, hookSignals } from './cleanup.js';
import { startBenchDaemon, type BenchDaemon } from './daemon.js';
import { emitRecord, note, type BenchOutcome, type SummaryRow } from './result.js';

export interface BenchEnv {
  registry: RegistryFixture;
  /** host/nimbus-test/busybox:single (the amd64 manifest) */
  busybox: string;
  /** A fresh nimbusd on a new temp home (stop it with daemon.stop(); cleanup does it otherwise). */
  newDaemon(): Promise<BenchDaemon>;
}

export type Benchmark = (env: BenchEnv) => Promise<BenchOutcome>;

export async function setupEnv(): Promise<BenchEnv> {
  const registry = await startRegistry();
  cleanup.add(`registry ${registry.host}`, () => registry.stop());
  const images = await buildTestImages();
  await pushTestImages(registry.host, images);
  return { registry, busybox: `${registry.host}/${TEST_REPO}:single`, newDaemon: () => startBenchDaemon() };
}

export interface BenchEntry {
  name: string;
  fn: Benchmark;
  /** false: needs no registry and no daemon (pure in-process benchmark) */
  needsEnv?: boolean;
}

/**
 * Run benchmarks in sequence, each printing its record line (and appending it
 * to bench/results/<name>.jsonl); returns every summary row. A failure is
 * reported and the rest still run. The registry is started only if a selected
 * benchmark needs it; everything is cleaned up at the end, also on failure.
 */
export async function runBenchmarks(list: BenchEntry[]): Promise<{ rows: SummaryRow[]; failed: string[] }> {
  hookSignals();
  const rows: SummaryRow[] = [];
  const failed: string[] = [];
  let env: Promise<BenchEnv> | undefined;
  const noEnv: BenchEnv = {
    get registry(): RegistryFixture {
      throw new Error('this benchmark declared needsEnv: false');
    },
    busybox: '',
    newDaemon: () => Promise.reject(new Error('this benchmark declared needsEnv: false')),
  };
  try {
    for (const b of list) {
      note(b.name, 'start');
      const t0 = Date.now();
      try {
        const e = b.needsEnv === false ? noEnv : await (env ??= setupEnv());
        const out = await b.fn(e);
        emitRecord(out.record);
        rows.push(...out.summary);
        note(b.name, `done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      } catch (e) {
        failed.push(b.name);
        rows.push({ bench: b.name, figure: 'FAILED', unit: '', nimbus: null, peers: {}, ratio: null, note: (e instanceof Error ? e.message : String(e)).split('\n')[0]?.slice(0, 100) ?? '' });
        process.stderr.write(`[${b.name}] FAILED: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      }
    }
  } finally {
    const errs = await cleanup.runAll();
    if (errs.length) failed.push('cleanup');
  }
  return { rows, failed };
}

/** Entry point for one benchmark file run directly (node dist/bench/<name>.js). */
export async function runStandalone(name: string, fn: Benchmark): Promise<void> {
  const { printSummary } = await import('./summary.js');
  const { rows, failed } = await runBenchmarks([{ name, fn }]);
  // stderr: the record stays the last line on stdout
  printSummary(rows);
  process.exitCode = failed.length ? 1 : 0;
}

/** True when this module file is the process' entry script. */
export function isMain(metaUrl: string): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  const url = new URL(metaUrl);
  return url.pathname === entry || url.pathname === `${entry}.js` || url.pathname.replace(/\.ts$/, '') === entry.replace(/\.ts$/, '');
}
