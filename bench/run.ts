/**
 * npm run bench: every benchmark in turn, each printing its JSON line and
 * appending it to bench/results/<name>.jsonl. Names select a subset:
 *   node dist/bench/run.js engine quota-admission
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';

const RESULTS = resolve(import.meta.dirname, '../../bench/results');

const ALL = ['engine', 'quota-admission'];
const chosen = process.argv.slice(2).filter((a) => ALL.includes(a));
let failed = 0;
for (const name of chosen.length ? chosen : ALL) {
  console.log(`\n=== ${name}`);
  const r = spawnSync(process.execPath, ['--enable-source-maps', join(import.meta.dirname, `${name}.js`)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 1024 * 1024,
  });
  const out = r.stdout.toString();
  process.stdout.write(out);
  // The last {"bench": ...} line is the benchmark's result record.
  const record = out.trim().split('\n').reverse().find((l) => l.startsWith('{"bench"'));
  if (record) {
    mkdirSync(RESULTS, { recursive: true });
    appendFileSync(join(RESULTS, `${name}.jsonl`), record + '\n');
  }
  if (r.status !== 0 || !record) failed++;
}
process.exit(failed ? 1 : 0);
