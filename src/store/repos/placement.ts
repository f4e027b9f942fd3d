/** Placement rows: hosts' claims (allocations) and server groups. PLACEHOLDER until the scheduler lands. */
import type { SqlExecutor } from '../sql/executor.js';

// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface PlacementRepo {}

export class SqlPlacementRepo implements PlacementRepo {
  constructor(protected readonly db: SqlExecutor) {}
}
