/**
 * The one record every benchmark ends with: printed as a single JSON line and
 * appended to bench/results/<name>.jsonl.
 *   {"bench": NAME, "time": ISO, "host": {...}, "results": {...}, "peers": {...}, "ratios": {...}}
 * Benchmarks also return summary rows (not part of the record) that bench/run.ts
 * prints as a table.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';

export interface HostInfo {
  cpus: number;
  cpuModel: string;
  kernel: string;
  memGiB: number;
  node: string;
  /** 1-minute load average when the record was made (others' work on the host skews figures) */
  load1: number;
}

export interface BenchRecord {
  bench: string;
  time: string;
  host: HostInfo;
  results: Record<string, unknown>;
  peers: Record<string, unknown>;
  ratios: Record<string, number | null>;
}

/** One line of the human summary: a Nimbus figure, its peers' figures, ratio and goal. */
export interface SummaryRow {
  bench: string;
  figure: string;
  unit: string;
  nimbus: number | null;
  peers: Record<string, number | null>;
  /** nimbus / the first peer (lower is better for times) */
  ratio: number | null;
  goal?: string;
  met?: boolean | null;
  note?: string;
}

export interface BenchOutcome {
  record: BenchRecord;
  summary: SummaryRow[];
}

export function hostInfo(): HostInfo {
  const c = cpus();
  return { cpus: c.length, cpuModel: c[0]?.model ?? 'unknown', kernel: release(), memGiB: Math.round(totalmem() / 2 ** 30), node: process.version, load1: Math.round((loadavg()[0] ?? 0) * 100) / 100 };
}

/** The repository root (where package.json is), from dist/bench/lib or bench/lib. */
export function repoRoot(): string {
  let dir = import.meta.dirname;
  for (let i = 0; i < 6; i++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'nimbus') return dir;
      } catch {
        /* keep looking */
      }
    }
    dir = dirname(dir);
  }
  return process.cwd();
}

export function resultsDir(): string {
  return process.env.BENCH_RESULTS_DIR ?? join(repoRoot(), 'bench', 'results');
}

export function makeRecord(bench: string, parts: { results: Record<string, unknown>; peers?: Record<string, unknown>; ratios?: Record<string, number | null> }): BenchRecord {
  return { bench, time: new Date().toISOString(), host: hostInfo(), results: parts.results, peers: parts.peers ?? {}, ratios: parts.ratios ?? {} };
}

/** Print the record as the benchmark's final JSON line and append it to bench/results/<name>.jsonl. */
export function emitRecord(record: BenchRecord): void {
  const line = JSON.stringify(record);
  const dir = resultsDir();
  mkdirSync(dir, { recursive: true });
  appendFileSync(join(dir, `${record.bench}.jsonl`), line + '\n');
  process.stdout.write(line + '\n');
}

/** Human progress lines go to stderr so stdout ends with the record. */
export function note(bench: string, msg: string): void {
  process.stderr.write(`[${bench}] ${msg}\n`);
}
