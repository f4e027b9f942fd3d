import { ApiError } from './client.js';

/** "Error: NotFound: no such container: x"; an unreachable daemon without the code. */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.status === 0 ? `Error: ${e.message}` : `Error: ${e.code}: ${e.message}`;
  return `Error: ${e instanceof Error ? e.message : String(e)}`;
}
