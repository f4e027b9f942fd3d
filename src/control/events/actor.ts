/**
 * Who caused what is happening: the API edge runs each request's handler as its caller
 * (runAsActor), and every event published in that request's async context, however deep in the
 * services, carries that actor (EventBus.publish). Work no request started (exit monitors,
 * restart policies, the leader's reclaims) has none: its events say "system".
 */
import { ContextSlot } from '../../core/async-context.js';

/** The actor of events no request caused. */
export const SYSTEM_ACTOR = 'system';

const actors = new ContextSlot<string>('actor');

/** Runs fn (and everything it starts) as `actor`: a user's name, or "local-admin" for the socket's caller. */
export function runAsActor<T>(actor: string, fn: () => T): T {
  return actors.run(actor, fn);
}

/** The actor of the current async context, if a request started it. */
export function currentActor(): string | undefined {
  return actors.get();
}
