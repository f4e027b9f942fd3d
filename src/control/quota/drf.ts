/**
 * Dominant-resource fairness (Ghodsi et al.): a tenant's share of a multi-resource
 * capacity is the largest of its per-resource shares. The ledger uses it to order
 * lenders (lend from the least-loaded sibling first) and pool reclaim victims
 * (take back from the member furthest above its weighted share first).
 */
import { RESOURCES, type Vec } from './resources.js';

/** max over resources with capacity > 0 of use/capacity; use on a zero-capacity resource counts as 1 (fully dominant). */
export function dominantShare(use: Vec, capacity: Vec): number {
  let s = 0;
  for (const r of RESOURCES) {
    const c = capacity[r];
    const u = use[r];
    if (c > 0) s = Math.max(s, u / c);
    else if (u > 0) s = Math.max(s, 1);
  }
  return s;
}

/**
 * Weighted DRF: dominant share divided by the tenant's entitled fraction
 * (weight / Σ weights). 1 means "exactly at its deserved share", above 1 means over.
 */
export function weightedDominantShare(use: Vec, capacity: Vec, weightFraction: number): number {
  if (weightFraction <= 0) return Number.POSITIVE_INFINITY;
  return dominantShare(use, capacity) / weightFraction;
}

/** Stable sort by ascending dominant share, ties by key. Returns a new array. */
export function byDominantShare<T>(items: readonly T[], share: (t: T) => number, key: (t: T) => string): T[] {
  return items
    .map((t) => ({ t, s: share(t), k: key(t) }))
    .sort((a, b) => a.s - b.s || (a.k < b.k ? -1 : a.k > b.k ? 1 : 0))
    .map((x) => x.t);
}
