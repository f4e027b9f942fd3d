/**
 * Reclaim planning (pure). When a project cannot be admitted, it may take back
 *  - capacity it lent to siblings: evict instances holding loans from it;
 *  - its deserved share of a pool: evict instances of members above their deserved share.
 * Victims are ordered lowest priority first, then newest, then (pool only) the
 * member with the highest weighted dominant share, then id. Each victim gets a
 * deadline = now + its own project's grace period; containers are stopped, VMs saved.
 * The caller executes the evictions and calls Ledger.release(); the Ledger
 * completes the operation once the request fits.
 */
import type { Evaluation } from './admission.js';
import { deserved, memberShare, memberUse, type Fences } from './pools.js';
import { RESOURCES, compact, zero, type Vec } from './resources.js';
import type { InstanceState, LedgerState, Victim } from './state.js';

export interface ReclaimPlan {
  /** true if evicting `victims` would make the request fit. */
  sufficient: boolean;
  victims: Victim[];
  /** Shortfall left after the planned evictions (all zero when sufficient). */
  remaining: Vec;
}

interface Candidate {
  inst: InstanceState;
  fromLoans: Vec;
  /** pool → what evicting this instance frees in it */
  fromPools: Map<string, Vec>;
  share: number;
  viaLoan: boolean;
}

export function planReclaim(state: LedgerState, _fences: Fences, ev: Evaluation, now: number, exclude: ReadonlySet<string> = new Set()): ReclaimPlan {
  const p = state.projects[ev.project];
  const remaining = { ...ev.shortfall };
  if (p === undefined || RESOURCES.every((r) => remaining[r] <= 0)) return { sufficient: true, victims: [], remaining: zero() };

  // How much of its deserved share the requester can still claim in each pool.
  const entitlement = new Map<string, Vec>();
  for (const poolId of p.memberOf) {
    const pool = state.pools[poolId];
    if (pool === undefined) continue;
    const ent = zero();
    const mine = memberUse(pool, p.id);
    for (const r of RESOURCES) {
      const taking = ev.poolCharges.filter((c) => c.pool === poolId && c.resource === r).reduce((a, c) => a + c.amount, 0);
      ent[r] = Math.max(0, Math.floor(deserved(pool, p.id, r) - mine[r] - taking));
    }
    entitlement.set(poolId, ent);
  }

  const cands = new Map<string, Candidate>();
  const candidate = (inst: InstanceState): Candidate => {
    let c = cands.get(inst.id);
    if (c === undefined) {
      c = { inst, fromLoans: zero(), fromPools: new Map(), share: 0, viaLoan: false };
      cands.set(inst.id, c);
    }
    return c;
  };
  const usable = (inst: InstanceState | undefined): inst is InstanceState =>
    inst !== undefined && inst.project !== p.id && inst.eviction === undefined && !exclude.has(inst.id);

  for (const loan of Object.values(state.loans)) {
    if (loan.lender !== p.id || remaining[loan.resource] <= 0) continue;
    const inst = state.instances[loan.instance];
    if (!usable(inst)) continue;
    const c = candidate(inst);
    c.fromLoans[loan.resource] += loan.amount;
    c.viaLoan = true;
  }
  for (const [poolId, ent] of entitlement) {
    if (RESOURCES.every((r) => ent[r] <= 0 || remaining[r] <= 0)) continue;
    const pool = state.pools[poolId];
    if (pool === undefined) continue;
    for (const inst of Object.values(state.instances)) {
      if (!usable(inst) || pool.weights[inst.project] === undefined) continue;
      const frees = zero();
      for (const ch of inst.poolCharges) if (ch.pool === poolId) frees[ch.resource] += ch.amount;
      if (RESOURCES.every((r) => frees[r] === 0)) continue;
      const c = candidate(inst);
      c.fromPools.set(poolId, frees);
      c.share = Math.max(c.share, memberShare(pool, inst.project));
    }
  }

  const ordered = [...cands.values()].sort(
    (a, b) =>
      a.inst.priority - b.inst.priority ||
      b.inst.createdAt - a.inst.createdAt ||
      b.share - a.share ||
      (a.inst.id < b.inst.id ? -1 : a.inst.id > b.inst.id ? 1 : 0),
  );

  // Members' pool usage as the plan evicts (a member at or below its deserved share is not a victim).
  const planned = new Map<string, Vec>();
  const useAfter = (poolId: string, member: string): Vec => {
    const k = `${poolId}\u0000${member}`;
    let v = planned.get(k);
    if (v === undefined) {
      const pool = state.pools[poolId];
      v = pool === undefined ? zero() : { ...memberUse(pool, member) };
      planned.set(k, v);
    }
    return v;
  };

  const victims: Victim[] = [];
  for (const c of ordered) {
    // a network or volume cannot be evicted (its containers would lose it, or their data); a build ends soon and gives its share back then
    if (c.inst.kind === 'network' || c.inst.kind === 'volume' || c.inst.kind === 'build') continue;
    if (RESOURCES.every((r) => remaining[r] <= 0)) break;
    const gain = zero();
    let poolVia: string | undefined;
    for (const r of RESOURCES) if (remaining[r] > 0) gain[r] += c.fromLoans[r];
    for (const [poolId, frees] of c.fromPools) {
      const pool = state.pools[poolId];
      const ent = entitlement.get(poolId);
      if (pool === undefined || ent === undefined) continue;
      const use = useAfter(poolId, c.inst.project);
      for (const r of RESOURCES) {
        if (remaining[r] <= 0 || frees[r] === 0 || ent[r] <= 0) continue;
        if (use[r] <= deserved(pool, c.inst.project, r)) continue; // not over its share in r
        gain[r] += Math.min(frees[r], ent[r]);
        poolVia ??= poolId;
      }
    }
    if (RESOURCES.every((r) => gain[r] === 0)) continue;
    // commit this victim to the plan
    const frees = { ...c.fromLoans };
    for (const [poolId, pf] of c.fromPools) {
      const ent = entitlement.get(poolId);
      const use = useAfter(poolId, c.inst.project);
      for (const r of RESOURCES) {
        frees[r] += pf[r];
        use[r] -= pf[r];
        if (ent !== undefined) ent[r] = Math.max(0, ent[r] - pf[r]);
      }
    }
    for (const r of RESOURCES) remaining[r] = Math.max(0, remaining[r] - gain[r]);
    const owner = state.projects[c.inst.project];
    victims.push({
      instance: c.inst.id,
      project: c.inst.project,
      priority: c.inst.priority,
      createdAt: c.inst.createdAt,
      via: c.viaLoan || poolVia === undefined ? { kind: 'loan', lender: p.id } : { kind: 'pool', pool: poolVia },
      frees: compact(frees),
      deadline: now + (owner?.gracePeriodMs ?? 0),
      action: c.inst.kind === 'vm' ? 'save' : 'stop',
    });
  }
  return { sufficient: RESOURCES.every((r) => remaining[r] <= 0), victims, remaining };
}
