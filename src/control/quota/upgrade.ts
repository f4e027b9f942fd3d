/**
 * A ledger state written before a resource existed (e.g. `disk`, added with volumes) has vectors
 * without it: JSON leaves the key out and the arithmetic would make NaN. Fill them in, in place,
 * when the state is loaded: every amount 0 (nothing was used, lent or set aside of a resource
 * nobody could ask for), except a root project's hard limit, which is `rootHard` — the daemon
 * creates roots unlimited in every resource, so a root gets the new one unlimited too, and an
 * operator limits it as any other. Children keep 0 (as a new child starts): their parent
 * hands the new resource down by raising their limit, as for any other.
 */
import { RESOURCES, type Vec } from './resources.js';
import type { LedgerState } from './state.js';

function fill(v: Vec | undefined, missing = 0): Vec {
  const out = (v ?? {}) as Vec;
  for (const r of RESOURCES) if (typeof out[r] !== 'number') out[r] = missing;
  return out;
}

/** True when something was missing (the caller may want to say so once in its log). */
export function fillMissingResources(state: LedgerState, rootHard: number): boolean {
  let changed = false;
  const fillIn = (v: Vec | undefined, missing = 0): Vec => {
    if (v === undefined || RESOURCES.some((r) => typeof v[r] !== 'number')) changed = true;
    return fill(v, missing);
  };
  for (const p of Object.values(state.projects)) {
    p.hard = fillIn(p.hard, p.parent === null ? rootHard : 0);
    p.reserved = fillIn(p.reserved);
    p.lendingLimit = fillIn(p.lendingLimit);
    p.borrowingLimit = fillIn(p.borrowingLimit);
    p.used = fillIn(p.used);
    p.own = fillIn(p.own);
    p.allocated = fillIn(p.allocated);
    p.lent = fillIn(p.lent);
    p.borrowed = fillIn(p.borrowed);
    p.pooled = fillIn(p.pooled);
  }
  for (const pool of Object.values(state.pools)) {
    pool.capacity = fillIn(pool.capacity);
    pool.used = fillIn(pool.used);
    for (const m of Object.keys(pool.usedBy)) pool.usedBy[m] = fillIn(pool.usedBy[m]);
  }
  for (const i of Object.values(state.instances)) {
    i.demand = fillIn(i.demand);
    i.own = fillIn(i.own);
  }
  return changed;
}
