/**
 * Tasks that must run exactly once across replicas: started when this process becomes the
 * leader, stopped when it steps down. What they do must be safe to repeat: during the window
 * described in docs/replicas.md an old leader may still be finishing a pass.
 */
import { logger } from '../../core/log.js';
import type { Leadership } from './leadership.js';

const log = logger('leader');

/** Stops what a start began; resolves once it has stopped. */
export type Stopper = () => void | Promise<void>;

/**
 * Runs start() whenever this process leads and its stopper when it steps down (or when the
 * returned stopper is called). A start that throws is logged; it is tried again at the next
 * change to leader.
 */
export function runWhileLeader(leadership: Leadership, name: string, start: () => Stopper): Stopper {
  let stopper: Stopper | undefined;
  let stopped = false;
  const begin = () => {
    if (stopped || stopper) return;
    try {
      stopper = start();
      log.info('leader task started', { task: name });
    } catch (e) {
      log.error('leader task failed to start', { task: name, error: String(e) });
    }
  };
  const end = async () => {
    const s = stopper;
    stopper = undefined;
    if (!s) return;
    try {
      await s();
      log.info('leader task stopped', { task: name });
    } catch (e) {
      log.error('leader task failed to stop', { task: name, error: String(e) });
    }
  };
  leadership.onChange((leader) => (leader ? begin() : end()));
  if (leadership.isLeader) begin();
  return async () => {
    stopped = true;
    await end();
  };
}

/**
 * A start for runWhileLeader: fn now, then every everyMs after the previous pass ended (passes
 * never overlap); a failed pass is logged. The stopper waits for a pass in flight.
 */
export function every(name: string, everyMs: number, fn: () => Promise<unknown>): () => Stopper {
  return () => {
    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> = Promise.resolve();
    let stopped = false;
    const pass = () => {
      running = fn().then(
        () => undefined,
        (e: unknown) => log.error('leader task pass failed', { task: name, error: String(e) }),
      ).finally(() => {
        if (!stopped) timer = setTimeout(pass, everyMs).unref();
      });
    };
    pass();
    return async () => {
      stopped = true;
      clearTimeout(timer);
      await running;
    };
  };
}
