/**
 * Small statistics for benchmarks: nearest-rank percentiles, mean, min/max, and
 * timing helpers on process.hrtime.bigint (monotonic, nanosecond resolution).
 * All durations are milliseconds.
 */

export interface Summary {
  n: number;
  mean: number;
  min: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** Nearest-rank percentile (p in 0..100) of xs; NaN when xs is empty. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))] ?? NaN;
}

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

export function median(xs: readonly number[]): number {
  return percentile(xs, 50);
}

/** Round to `digits` decimals (default 1) so JSON records stay readable. */
export function round(x: number, digits = 1): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function summarize(xs: readonly number[]): Summary {
  return {
    n: xs.length,
    mean: round(mean(xs)),
    min: round(xs.length ? Math.min(...xs) : NaN),
    p50: round(percentile(xs, 50)),
    p95: round(percentile(xs, 95)),
    p99: round(percentile(xs, 99)),
    max: round(xs.length ? Math.max(...xs) : NaN),
  };
}

/** a / b rounded to 3 decimals, or null when either side is missing. */
export function ratio(a: number | undefined | null, b: number | undefined | null): number | null {
  if (a === undefined || a === null || b === undefined || b === null || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return null;
  return round(a / b, 3);
}

export function now(): bigint {
  return process.hrtime.bigint();
}

export function msSince(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

/** Milliseconds one call of fn takes. */
export async function timed(fn: () => unknown): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return msSince(t0);
}

/**
 * Run fn n times in sequence (after `warmup` untimed calls) and return each
 * duration in milliseconds. fn gets the iteration index (warm-up calls get -1, -2, ...).
 */
/**
 * Time n calls of fn one after another. gapMs: an untimed pause before each call, so
 * each one arrives at an idle system (latency of isolated requests); without it the
 * calls run back to back (what sustained load does to latency).
 */
export async function measure(n: number, fn: (i: number) => unknown, opts: { warmup?: number; gapMs?: number } = {}): Promise<number[]> {
  for (let w = 1; w <= (opts.warmup ?? 0); w++) await fn(-w);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    if (opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
    const t0 = process.hrtime.bigint();
    await fn(i);
    out.push(msSince(t0));
  }
  return out;
}
