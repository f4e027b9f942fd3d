/**
 * For the compute services' tests: places on the pinned host, else on the first host, and keeps
 * the claims it holds, so a test sees what a create or removal left claimed. (The real
 * scheduler's decisions are tested in control/scheduler.)
 */
import { ResourceExhausted } from '../../core/errors.js';
import type { Explanation, Placement, PlacementRequest, Scheduler } from '../scheduler/types.js';

export class RecordingScheduler implements Scheduler {
  readonly asked: PlacementRequest[] = [];
  readonly claims = new Map<string, string>();
  constructor(private readonly hosts: { names(): string[] }) {}
  async place(req: PlacementRequest): Promise<Placement> {
    this.asked.push(req);
    const host = req.host ?? this.hosts.names()[0];
    if (host === undefined) throw new ResourceExhausted('no host');
    this.claims.set(req.consumerId, host);
    return { host };
  }
  async explain(): Promise<Explanation> {
    return { hosts: [] };
  }
  async release(id: string): Promise<void> {
    this.claims.delete(id);
  }
  async moveClaim(id: string, to: string): Promise<void> {
    this.claims.set(id, to);
  }
}
