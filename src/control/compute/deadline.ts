/** A bound on how long the control plane waits for one agent call. */
import { Unavailable } from '../../core/errors.js';

/**
 * p, or an Unavailable error once ms have passed (or signal's reason once it is aborted). The
 * call itself goes on (an agent call cannot be cancelled); only the waiting ends, so a hung
 * agent cannot hold a container's lifecycle lock for ever. A late rejection is swallowed.
 */
export function withDeadline<T>(p: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  if (signal?.aborted) {
    p.catch(() => undefined);
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      finish();
      reject(new Unavailable(`${what} did not finish within ${Math.round(ms / 1000)} s`, { deadlineMs: ms }));
    }, ms);
    const onAbort = () => {
      finish();
      reject(signal!.reason as Error);
    };
    const finish = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        finish();
        resolve(v);
      },
      (e: unknown) => {
        finish();
        reject(e);
      },
    );
  });
}
