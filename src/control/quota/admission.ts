/**
 * The admission evaluation: a pure function of the ledger state and a request.
 * `Ledger.explain` returns it as is; `Ledger.admit` applies exactly what it
 * returns. There is no other code path that decides.
 *
 * Per resource, demand is met in this order:
 *   1. the project's own free  (hard − own − reserved − allocated − lent);
 *   2. shared pools the project is a member of (idle pool capacity);
 *   3. loans from siblings (same parent), within the borrower's borrowingLimit
 *      and each lender's min(free, lendingLimit − lent); least-loaded lender (DRF) first.
 * The request is admitted only if every resource is fully met.
 */
import { dominantShare } from './drf.js';
import { takeLimit, type Fences } from './pools.js';
import { RESOURCES, compact, vec, zero, type Resource, type Vec } from './resources.js';
import type { AdmitRequest, LedgerState, PoolCharge, ProjectState } from './state.js';

export type LedgerLine = 'free' | 'pool' | 'loan' | 'borrowingLimit' | 'lendable';

export interface DecidedBy {
  project: string;
  resource: Resource;
  /** The ledger line that settled it: for a rejection the one that ran out, for an admission the furthest source used. */
  line: LedgerLine;
}

export interface PlannedLoan {
  lender: string;
  borrower: string;
  resource: Resource;
  amount: number;
}

export interface Evaluation {
  admitted: boolean;
  project: string;
  instance: string;
  demand: Vec;
  own: Vec;
  poolCharges: PoolCharge[];
  loans: PlannedLoan[];
  /** demand − what could be obtained, per resource (all zero when admitted). */
  shortfall: Vec;
  decidedBy: DecidedBy;
  reason: string;
}

/** free = hard − own − reserved − allocated − lent (own = the part of used charged to the own hard limit). */
export function freeOf(p: ProjectState, r: Resource): number {
  return p.hard[r] - p.own[r] - p.reserved[r] - p.allocated[r] - p.lent[r];
}

/** What a project could lend now: min(free, lendingLimit − lent), 0 while its own reclaim is pending. */
export function lendableOf(p: ProjectState, r: Resource, fences: Fences): number {
  if (fences.lenders.has(p.id)) return 0;
  return Math.max(0, Math.min(freeOf(p, r), p.lendingLimit[r] - p.lent[r]));
}

export function demandOf(req: AdmitRequest): Vec {
  return vec({ instances: 1, ...req.resources }, 'resources');
}

const RANK: Record<LedgerLine, number> = { free: 0, pool: 1, loan: 2, borrowingLimit: 3, lendable: 3 };

export function evaluate(state: LedgerState, fences: Fences, req: AdmitRequest, demand: Vec = demandOf(req)): Evaluation {
  const p = state.projects[req.project];
  if (p === undefined) throw new Error(`evaluate: unknown project ${req.project}`);
  const parent = p.parent === null ? undefined : state.projects[p.parent];
  const own = zero();
  const shortfall = zero();
  const poolCharges: PoolCharge[] = [];
  const loans: PlannedLoan[] = [];
  const notes: string[] = [];
  let failed: DecidedBy | undefined;
  let failNote = '';
  let best: DecidedBy | undefined;
  let bestSlack = Number.POSITIVE_INFINITY;

  for (const r of RESOURCES) {
    const need = demand[r];
    if (need === 0) continue;
    const free = freeOf(p, r);
    const fromOwn = Math.max(0, Math.min(need, free));
    own[r] = fromOwn;
    let rem = need - fromOwn;
    let line: LedgerLine = 'free';
    let fromPool = 0;
    for (const poolId of p.memberOf) {
      if (rem === 0) break;
      const pool = state.pools[poolId];
      if (pool === undefined) continue;
      const take = Math.min(rem, takeLimit(pool, p.id, r, 0, fences));
      if (take > 0) {
        poolCharges.push({ pool: poolId, resource: r, amount: take });
        rem -= take;
        fromPool += take;
        line = 'pool';
      }
    }
    let headroom = p.borrowingLimit[r] - p.borrowed[r];
    let lendableTotal = 0;
    if (rem > 0 && headroom > 0 && parent !== undefined) {
      const sibs: { s: ProjectState; can: number; share: number }[] = [];
      for (const sid of parent.children) {
        if (sid === p.id) continue;
        const s = state.projects[sid];
        if (s === undefined) continue;
        const can = lendableOf(s, r, fences);
        if (can > 0) sibs.push({ s, can, share: dominantShare(s.own, s.hard) });
        lendableTotal += can;
      }
      sibs.sort((a, b) => a.share - b.share || b.can - a.can || (a.s.id < b.s.id ? -1 : 1));
      for (const { s, can } of sibs) {
        if (rem === 0 || headroom === 0) break;
        const amount = Math.min(rem, can, headroom);
        loans.push({ lender: s.id, borrower: p.id, resource: r, amount });
        rem -= amount;
        headroom -= amount;
        line = 'loan';
      }
    }
    if (rem > 0) {
      shortfall[r] = rem;
      if (failed === undefined) {
        let fline: LedgerLine = 'free';
        if (p.borrowingLimit[r] > 0 && parent !== undefined) fline = headroom <= 0 ? 'borrowingLimit' : 'lendable';
        else if (fromPool > 0 || p.memberOf.length > 0) fline = 'pool';
        failed = { project: p.id, resource: r, line: fline };
        failNote =
          `${r}: need ${need}, free ${Math.max(0, free)} (hard ${p.hard[r]} − used ${p.own[r]} − reserved ${p.reserved[r]} − allocated ${p.allocated[r]} − lent ${p.lent[r]})` +
          (p.memberOf.length > 0 ? `, pool ${fromPool}` : '') +
          (p.borrowingLimit[r] > 0
            ? `, borrowable ${Math.max(0, p.borrowingLimit[r] - p.borrowed[r])} (borrowingLimit ${p.borrowingLimit[r]} − borrowed ${p.borrowed[r]}), siblings lendable ${lendableTotal}`
            : '') +
          `; short by ${rem}`;
      }
    } else {
      const slack = free - fromOwn;
      if (best === undefined || RANK[line] > RANK[best.line] || (RANK[line] === RANK[best.line] && slack < bestSlack)) {
        best = { project: p.id, resource: r, line };
        bestSlack = slack;
      }
      if (line !== 'free') notes.push(`${r}: ${fromOwn} own, ${fromPool} pool, ${need - fromOwn - fromPool} borrowed`);
    }
  }

  if (failed !== undefined) {
    return {
      admitted: false,
      project: p.id,
      instance: req.instanceId,
      demand,
      own,
      poolCharges,
      loans,
      shortfall,
      decidedBy: failed,
      reason: `rejected by ${failed.line} of project ${p.id}: ${failNote}`,
    };
  }
  const decidedBy = best ?? { project: p.id, resource: 'instances', line: 'free' };
  return {
    admitted: true,
    project: p.id,
    instance: req.instanceId,
    demand,
    own,
    poolCharges,
    loans,
    shortfall,
    decidedBy,
    reason:
      notes.length === 0
        ? `admitted from own free of project ${p.id} (${JSON.stringify(compact(demand))})`
        : `admitted in project ${p.id}: ${notes.join('; ')}`,
  };
}
