/**
 * Shared pools: a parent sets part of its capacity aside (it counts in the parent's
 * `allocated`) for chosen direct children with weights. A member deserves
 * capacity × weight / Σ weights of each resource; it may use more while the
 * others are idle, and gets its deserved share back (by reclaim) when it asks.
 */
import { dominantShare } from './drf.js';
import { RESOURCES, zero, type Resource, type Vec } from './resources.js';
import type { PoolState } from './state.js';

/** Pending reclaim operations restrict lending and pool growth; see README. */
export interface Fences {
  /** Projects with a pending reclaim: they lend nothing new. */
  lenders: ReadonlySet<string>;
  /** pool → members with a pending reclaim on it: other members may not grow past their deserved share. */
  pools: ReadonlyMap<string, ReadonlySet<string>>;
}

export const NO_FENCES: Fences = { lenders: new Set(), pools: new Map() };

export function weightSum(pool: PoolState): number {
  let s = 0;
  for (const w of Object.values(pool.weights)) s += w;
  return s;
}

export function weightFraction(pool: PoolState, member: string): number {
  const w = pool.weights[member] ?? 0;
  const s = weightSum(pool);
  return s > 0 ? w / s : 0;
}

/** Deserved share of one resource (may be fractional; 16 split 1:2 gives 5.33 and 10.67). */
export function deserved(pool: PoolState, member: string, r: Resource): number {
  return pool.capacity[r] * weightFraction(pool, member);
}

export function deservedVec(pool: PoolState, member: string): Vec {
  const f = weightFraction(pool, member);
  const o = zero();
  for (const r of RESOURCES) o[r] = pool.capacity[r] * f;
  return o;
}

export function memberUse(pool: PoolState, member: string): Vec {
  return pool.usedBy[member] ?? zero();
}

export function available(pool: PoolState, r: Resource): number {
  return pool.capacity[r] - pool.used[r];
}

/**
 * How much of resource r `member` may take from the pool now, given it already
 * takes `taking` in the same decision. Normally everything idle; while another
 * member's reclaim is pending on the pool, only up to its own deserved share.
 */
export function takeLimit(pool: PoolState, member: string, r: Resource, taking: number, fences: Fences): number {
  const idle = available(pool, r) - taking;
  if (idle <= 0) return 0;
  const fencedBy = fences.pools.get(pool.id);
  if (fencedBy !== undefined && [...fencedBy].some((m) => m !== member)) {
    const room = Math.floor(deserved(pool, member, r) - memberUse(pool, member)[r] - taking);
    return Math.max(0, Math.min(idle, room));
  }
  return idle;
}

/** Weighted dominant share of a member in its pool (1 = exactly its deserved share). */
export function memberShare(pool: PoolState, member: string): number {
  const f = weightFraction(pool, member);
  if (f <= 0) return Number.POSITIVE_INFINITY;
  return dominantShare(memberUse(pool, member), pool.capacity) / f;
}
