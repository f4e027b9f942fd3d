/**
 * Former combined engine benchmark, kept so `node dist/bench/engine.js` (cited
 * in docs/SPECIFICATION.md) still works: it now runs the three engine
 * benchmarks, each recorded under its own name in bench/results/.
 *   node dist/bench/engine.js [start] [burst] [pull]
 */
import { burst } from './burst.js';
import { runBenchmarks, type BenchEntry } from './lib/env.js';
import { summaryLines } from './lib/summary.js';
import { pullUnpack } from './pull-unpack.js';
import { startLatency } from './start-latency.js';

const ALL: (BenchEntry & { alias: string })[] = [
  { alias: 'start', name: 'start-latency', fn: startLatency },
  { alias: 'burst', name: 'burst', fn: burst },
  { alias: 'pull', name: 'pull-unpack', fn: pullUnpack },
];
const args = process.argv.slice(2);
const chosen = args.length ? ALL.filter((b) => args.includes(b.alias) || args.includes(b.name)) : ALL;
const { rows, failed } = await runBenchmarks(chosen);
process.stderr.write(summaryLines(rows).join('\n') + '\n');
process.exitCode = failed.length ? 1 : 0;
