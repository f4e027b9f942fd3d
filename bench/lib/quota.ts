/**
 * bench/quota-admission.ts (owned by the quota work) run as a child process:
 * its last {"bench": ...} line becomes results of a standard record, and its
 * decisions/s figure a summary row against its goal.
 */
import { join } from 'node:path';
import { run } from '../../src/core/exec.js';
import { makeRecord, note, repoRoot, type BenchOutcome } from './result.js';
import type { BenchEnv } from './env.js';

export async function quotaAdmission(_env: BenchEnv): Promise<BenchOutcome> {
  const script = join(repoRoot(), 'dist/bench/quota-admission.js');
  const r = await run(process.execPath, ['--enable-source-maps', script], { timeoutMs: 600_000 });
  for (const l of r.stdout.split('\n')) if (l && !l.startsWith('{')) note('quota-admission', l);
  if (r.stderr.trim()) process.stderr.write(r.stderr);
  const line = r.stdout.trim().split('\n').reverse().find((l) => l.startsWith('{"bench"'));
  if (r.code !== 0 || !line) throw new Error(`quota-admission exited ${r.code} ${line ? '' : 'without a result line'}: ${r.stderr.trim().slice(-300)}`);
  const { bench: _bench, ...results } = JSON.parse(line) as Record<string, unknown>;
  const dps = typeof results.decisionsPerSec === 'number' ? results.decisionsPerSec : null;
  const goal = typeof results.goalDecisionsPerSec === 'number' ? results.goalDecisionsPerSec : 2000;
  const util = (results.utilisation ?? {}) as Record<string, number>;
  return {
    record: makeRecord('quota-admission', { results, peers: {}, ratios: {} }),
    summary: [
      { bench: 'quota-admission', figure: 'admission decisions/s (in-process ledger)', unit: '/s', nimbus: dps, peers: {}, ratio: null, goal: `≥ ${goal}/s`, met: dps === null ? null : dps >= goal, note: `invariant violations ${String(results.invariantViolations)}` },
      { bench: 'quota-admission', figure: 'utilisation, bursty 4-team workload', unit: '', nimbus: util['shared-pool'] ?? null, peers: { exclusive: util.exclusive ?? null, borrowing: util.borrowing ?? null }, ratio: null, note: 'nimbus column = shared pool' },
    ],
  };
}
