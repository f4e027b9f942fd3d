/**
 * The async-facing admission API. Callers may await anything before asking
 * (authorisation, image lookup, scheduling), but check and commit happen inside
 * one synchronous Ledger.admit() call, so no interleaving of promises can slip
 * between them: there is deliberately no "check now, commit later" pair.
 */
import type { AdmitRequest, Decision, Ledger, ReclaimOperation } from './ledger.js';

export interface AdmissionServiceOptions {
  clock?: () => number;
  /** Anything asynchronous that must happen before the decision (runs outside the critical step). */
  before?: (req: AdmitRequest) => Promise<void>;
}

export class AdmissionService {
  private readonly clock: () => number;
  constructor(
    readonly ledger: Ledger,
    private readonly opts: AdmissionServiceOptions = {},
  ) {
    this.clock = opts.clock ?? Date.now;
  }

  async create(req: AdmitRequest): Promise<Decision> {
    await this.opts.before?.(req);
    return this.ledger.admit(req, this.clock()); // check + commit: one synchronous step
  }

  async createOrReclaim(req: AdmitRequest): Promise<{ decision: Decision; operation?: ReclaimOperation }> {
    await this.opts.before?.(req);
    return this.ledger.admitOrReclaim(req, this.clock());
  }

  async release(instanceId: string, reason?: string): Promise<void> {
    this.ledger.release(instanceId, this.clock(), reason);
  }

  /** Advisory only: the answer may be stale by the time create() runs, which re-decides. */
  async explain(req: AdmitRequest): Promise<Decision> {
    return this.ledger.explain(req, this.clock());
  }
}
