// The accounting arithmetic against a model of how the service sees an instance: records that
// lag the host (a start's and an exit's times are the host's, stored a moment later; an exit's
// time is the file system's coarse clock, a tick early), accountings whose `now` is taken before
// they read the record, in any mix. Whatever the interleaving, every run is charged exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { account, type MeteredInstance } from './accounting.js';
import type { UsageCursor } from '../../store/repos/usage.js';

/** A small seeded generator (mulberry32): a failure names its seed and can be replayed. */
function random(seed: number): (lo: number, hi: number) => number {
  let a = seed >>> 0;
  return (lo, hi) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return lo + Math.floor(u * (hi - lo + 1));
  };
}

interface Run {
  /** The host's times of the start and of the exit (null: still running), and when each was stored. */
  startedAt: number;
  startStored: number;
  finishedAt: number | null;
  exitStored: number | null;
}

/** The record as read at `r`: the latest run stored by then, ended once its exit is stored too. */
function recordAt(runs: readonly Run[], r: number): MeteredInstance {
  const base = { id: 'c1', projectId: 'p1', name: 'job', kind: 'container' as const, createdAt: 0, host: 'h1' };
  const run = [...runs].reverse().find((x) => x.startStored <= r);
  if (!run) return { ...base, active: false, runStart: null, runEnd: null, runId: null };
  const ended = run.exitStored !== null && run.exitStored <= r;
  return { ...base, active: !ended, runStart: run.startedAt, runEnd: ended ? run.finishedAt : null, runId: `run@${run.startedAt}` };
}

const size = { millicpus: 1000, memoryBytes: 64 * 1024 * 1024, diskBytes: null };

test('every run is charged exactly once, whatever the records\' lag and the order of the accountings\' clocks (2,000 seeded lives)', () => {
  for (let seed = 1; seed <= 2000; seed++) {
    const rnd = random(seed);
    const runs: Run[] = [];
    let t = rnd(0, 400);
    for (let i = rnd(1, 3); i > 0; i--) {
      const startedAt = t;
      const exit = startedAt + rnd(20, 1500);
      const ends = i > 1 || rnd(0, 1) === 1;
      runs.push({
        startedAt, startStored: startedAt + rnd(0, 40),
        // the exit file's mtime: up to a 10 ms tick before the exit
        finishedAt: ends ? exit - rnd(0, 10) : null, exitStored: ends ? exit + rnd(0, 40) : null,
      });
      t = exit + rnd(300, 900); // a restart comes after the exit is stored
    }
    const end = t + 1000;
    const want = runs.reduce((sum, r) => sum + ((r.finishedAt ?? end) - r.startedAt), 0);
    // accountings read the record in order; each took its `now` before: an event's just before, a pass's up to 150 ms before
    let cursor: UsageCursor | undefined;
    let charged = 0;
    const trace: string[] = [];
    for (let r = rnd(0, 60); r < end; r += rnd(0, 60)) {
      const now = Math.max(0, r - (rnd(0, 1) ? rnd(0, 3) : rnd(0, 150)));
      // the service's pass skips a cursor already at or past its now; an event's edge does not
      if (rnd(0, 1) && cursor && cursor.accountedUntil >= now) continue;
      const out = account(cursor, recordAt(runs, r), size, now, undefined);
      if (!out) continue;
      for (const s of out.slices) charged += s.activeMs;
      cursor = out.next;
      trace.push(`read ${r} now ${now}: ${out.slices.reduce((a, s) => a + s.activeMs, 0)} to ${cursor.accountedUntil}${cursor.active ? ' active' : ''}`);
    }
    const last = account(cursor, recordAt(runs, end), size, end, undefined);
    for (const s of last?.slices ?? []) charged += s.activeMs;
    assert.equal(charged, want, `seed ${seed}: runs ${JSON.stringify(runs)}\n${trace.join('\n')}`);
  }
});

test('a cursor kept from before seenRun was recorded (null) is accounted as before: from the cursor, never twice', () => {
  const cursor: UsageCursor = {
    instanceId: 'c1', projectId: 'p1', kind: 'container', name: 'job', accountedUntil: 5000, active: false, cpuNs: null, cpuRun: null,
    seenRun: null, millicpus: 1000, memoryBytes: 0, heldMemoryBytes: 0, diskBytes: null, closed: false, netBase: null,
  };
  // a run from 1 s to 4 s, already charged by the cursor's accountings before the upgrade
  const inst: MeteredInstance = { id: 'c1', projectId: 'p1', name: 'job', kind: 'container', createdAt: 0, active: false, runStart: 1000, runEnd: 4000, runId: 'r1', host: 'h1' };
  const out = account(cursor, inst, size, 9000, undefined);
  assert.equal(out?.slices.reduce((a, s) => a + s.activeMs, 0) ?? 0, 0);
  assert.equal(out?.next.seenRun ?? 'r1', 'r1', 'and from then on it knows the run');
  // the same cursor knowing an earlier run: this one (unseen, begun before the cursor) is charged whole
  const known = account({ ...cursor, seenRun: 'r0' }, inst, size, 9000, undefined);
  assert.equal(known?.slices.reduce((a, s) => a + s.activeMs, 0), 3000);
});
