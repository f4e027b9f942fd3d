/**
 * Ledger invariants, recomputed from first principles (instances, loans, pools,
 * children). Used by the property test after every step; cheap enough to run
 * in a debug build. Returns the list of violations (empty = consistent).
 *
 * For every project p and resource r (own = used − borrowed − pooled):
 *   I1  all figures ≥ 0
 *   I2  used + reserved + allocated + lent ≤ hard + borrowed + pooled
 *       (equivalently free = hard − own − reserved − allocated − lent ≥ 0)
 *   I3  allocated = Σ children's hard + Σ capacity of pools p owns
 *   I4  lent = Σ loans with lender p ≤ lendingLimit;  borrowed = Σ loans with borrower p ≤ borrowingLimit
 *   I5  used = Σ demand of p's instances; each instance's demand = own + pool charges + loans
 *   I6  loans are only between siblings and never for nothing
 *   I7  for every pool: used = Σ member usage ≤ capacity; members are children of the owner
 *   I8  Σ children's hard ≤ hard − own − reserved − pools − lent (follows from I2 + I3, checked directly)
 */
import { RESOURCES, zero, type Vec } from './resources.js';
import type { LedgerState } from './state.js';

export function checkInvariants(s: LedgerState): string[] {
  const errs: string[] = [];
  const used: Record<string, Vec> = {};
  const own: Record<string, Vec> = {};
  const lent: Record<string, Vec> = {};
  const borrowed: Record<string, Vec> = {};
  const pooled: Record<string, Vec> = {};
  const get = (m: Record<string, Vec>, k: string): Vec => (m[k] ??= zero());

  for (const inst of Object.values(s.instances)) {
    const p = s.projects[inst.project];
    if (p === undefined) {
      errs.push(`instance ${inst.id} in unknown project ${inst.project}`);
      continue;
    }
    const sum = { ...inst.own };
    for (const r of RESOURCES) {
      get(used, p.id)[r] += inst.demand[r];
      get(own, p.id)[r] += inst.own[r];
    }
    for (const c of inst.poolCharges) {
      sum[c.resource] += c.amount;
      get(pooled, p.id)[c.resource] += c.amount;
    }
    for (const lid of inst.loans) {
      const l = s.loans[lid];
      if (l === undefined) {
        errs.push(`instance ${inst.id} refers to missing loan ${lid}`);
        continue;
      }
      if (l.instance !== inst.id || l.borrower !== p.id) errs.push(`loan ${lid} does not belong to ${inst.id}`);
      sum[l.resource] += l.amount;
    }
    for (const r of RESOURCES) if (sum[r] !== inst.demand[r]) errs.push(`instance ${inst.id} ${r}: demand ${inst.demand[r]} ≠ own+pool+loans ${sum[r]}`);
  }
  for (const l of Object.values(s.loans)) {
    if (l.amount <= 0) errs.push(`loan ${l.id} amount ${l.amount}`);
    const a = s.projects[l.lender];
    const b = s.projects[l.borrower];
    if (a === undefined || b === undefined || a.parent === null || a.parent !== b.parent || a.id === b.id) errs.push(`loan ${l.id} is not between siblings`);
    if (s.instances[l.instance]?.loans.includes(l.id) !== true) errs.push(`loan ${l.id} has no live instance`);
    get(lent, l.lender)[l.resource] += l.amount;
    get(borrowed, l.borrower)[l.resource] += l.amount;
  }

  for (const pool of Object.values(s.pools)) {
    const o = s.projects[pool.owner];
    if (o === undefined || !o.pools.includes(pool.id)) errs.push(`pool ${pool.id} owner ${pool.owner} inconsistent`);
    const sum = zero();
    for (const [m, u] of Object.entries(pool.usedBy)) {
      if (pool.weights[m] === undefined) errs.push(`pool ${pool.id}: non-member ${m} uses it`);
      for (const r of RESOURCES) sum[r] += u[r];
    }
    for (const m of Object.keys(pool.weights)) {
      const mp = s.projects[m];
      if (mp === undefined || mp.parent !== pool.owner || !mp.memberOf.includes(pool.id)) errs.push(`pool ${pool.id}: member ${m} is not a linked child of ${pool.owner}`);
    }
    for (const r of RESOURCES) {
      if (sum[r] !== pool.used[r]) errs.push(`pool ${pool.id} ${r}: used ${pool.used[r]} ≠ Σ members ${sum[r]}`);
      if (pool.used[r] > pool.capacity[r]) errs.push(`pool ${pool.id} ${r}: used ${pool.used[r]} > capacity ${pool.capacity[r]}`);
      if (pool.used[r] < 0 || pool.capacity[r] < 0) errs.push(`pool ${pool.id} ${r}: negative`);
    }
  }

  for (const p of Object.values(s.projects)) {
    const alloc = zero();
    const childHard = zero();
    for (const c of p.children) {
      const cp = s.projects[c];
      if (cp === undefined || cp.parent !== p.id) {
        errs.push(`${p.id}: child ${c} inconsistent`);
        continue;
      }
      for (const r of RESOURCES) {
        alloc[r] += cp.hard[r];
        childHard[r] += cp.hard[r];
      }
    }
    const poolCap = zero();
    for (const pid of p.pools) {
      const pool = s.pools[pid];
      if (pool === undefined) {
        errs.push(`${p.id}: missing pool ${pid}`);
        continue;
      }
      for (const r of RESOURCES) {
        alloc[r] += pool.capacity[r];
        poolCap[r] += pool.capacity[r];
      }
    }
    for (const r of RESOURCES) {
      const f = {
        hard: p.hard[r],
        reserved: p.reserved[r],
        used: p.used[r],
        own: p.own[r],
        allocated: p.allocated[r],
        lent: p.lent[r],
        borrowed: p.borrowed[r],
        pooled: p.pooled[r],
        lendingLimit: p.lendingLimit[r],
        borrowingLimit: p.borrowingLimit[r],
      };
      for (const [k, v] of Object.entries(f)) if (!(v >= 0)) errs.push(`${p.id} ${r}: ${k} = ${v} < 0`);
      const want = { used: get(used, p.id)[r], own: get(own, p.id)[r], lent: get(lent, p.id)[r], borrowed: get(borrowed, p.id)[r], pooled: get(pooled, p.id)[r], allocated: alloc[r] };
      for (const [k, v] of Object.entries(want)) if (f[k as keyof typeof f] !== v) errs.push(`${p.id} ${r}: ${k} cached ${f[k as keyof typeof f]} ≠ recomputed ${v}`);
      if (f.used !== f.own + f.borrowed + f.pooled) errs.push(`${p.id} ${r}: used ${f.used} ≠ own ${f.own} + borrowed ${f.borrowed} + pooled ${f.pooled}`);
      if (f.used + f.reserved + f.allocated + f.lent > f.hard + f.borrowed + f.pooled)
        errs.push(`${p.id} ${r}: used ${f.used} + reserved ${f.reserved} + allocated ${f.allocated} + lent ${f.lent} > hard ${f.hard} + borrowed ${f.borrowed} + pooled ${f.pooled}`);
      if (f.lent > f.lendingLimit) errs.push(`${p.id} ${r}: lent ${f.lent} > lendingLimit ${f.lendingLimit}`);
      if (f.borrowed > f.borrowingLimit) errs.push(`${p.id} ${r}: borrowed ${f.borrowed} > borrowingLimit ${f.borrowingLimit}`);
      if (childHard[r] > f.hard - f.own - f.reserved - poolCap[r] - f.lent) errs.push(`${p.id} ${r}: Σ children hard ${childHard[r]} exceeds what is left of hard`);
    }
    if (p.parent !== null && s.projects[p.parent]?.children.includes(p.id) !== true) errs.push(`${p.id}: parent link broken`);
  }
  return errs;
}
