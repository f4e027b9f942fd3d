import { ApiClient, ApiError } from '../client.js';
import { errorText } from '../errors.js';
import type { GlobalOptions } from '../args.js';

export function clientOf(g: GlobalOptions): ApiClient {
  return new ApiClient({ ...(g.socket ? { socket: g.socket } : {}), ...(g.host ? { host: g.host } : {}), ...(g.project ? { project: g.project } : {}), ...(g.tlsCa ? { tlsCa: g.tlsCa } : {}) });
}

/**
 * Act on each argument in turn (the `stop a b c` shape), printing it on success unless echo is
 * off; an error is reported and makes the exit code 1, except an unreachable daemon, which ends
 * the loop at once.
 */
export async function eachArg(ids: string[], act: (id: string) => Promise<void>, echo = true): Promise<number> {
  let code = 0;
  for (const id of ids) {
    try {
      await act(id);
      if (echo) process.stdout.write(`${id}\n`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 0) throw e; // daemon down: once is enough
      process.stderr.write(`${errorText(e)}\n`);
      code = 1;
    }
  }
  return code;
}

/** What the CLI reads of an Operation to wait for it. */
export interface OperationState {
  id: string;
  status: string;
  error: { code: string; message: string } | null;
}

/** Long-poll an Operation until it ends, whatever its outcome. */
export async function operationEnded<T extends OperationState>(client: ApiClient, op: T): Promise<T> {
  while (op.status === 'running' || op.status === 'pending') {
    op = await client.json<T>('GET', `/operations/${encodeURIComponent(op.id)}/wait?timeout=60`);
  }
  return op;
}

/** An ended Operation that failed throws its error (`what` names it when it has none). */
export function succeeded<T extends OperationState>(op: T, what = 'operation'): T {
  if (op.status !== 'succeeded') throw new ApiError(500, op.error?.code ?? 'Internal', op.error?.message ?? `${what} ${op.status}`);
  return op;
}

/** Long-poll an Operation until it ends; a failed one throws its error. */
export async function waitOperation<T extends OperationState>(client: ApiClient, op: T, what = 'operation'): Promise<T> {
  return succeeded(await operationEnded(client, op), what);
}
