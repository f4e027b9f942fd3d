/**
 * Streams that outlive their request (a console, an exec or attach session, a follow, an event
 * stream, a hijacked Docker connection) are authorised when they open and then held to that
 * authorisation while they last. Every `accessRecheckMs` (edge.ts; 5 s) the caller's token and
 * user are read again (IdentityService.current) and the role the edge required
 * (RequestAuth.checked) is checked against the grants as they are now; a stream whose caller no
 * longer may is ended with the reason, by the edge that opened it (an in-band error, a WebSocket
 * close 1008, a hijacked socket's end). A stream that required no role (every readable project's
 * events) is renewed instead, so its filter sees the grants as they are now.
 *
 * A periodic read of the store, not events: it sees every change wherever it was made (on another
 * replica, a project removed, a token's expiry) with nothing to publish or relay. One check per
 * token per period, however many streams that token holds open; none while no stream is open.
 */
import { hasCode, PermissionDenied, type NimbusError } from '../core/errors.js';
import { logger } from '../core/log.js';
import type { Principal, PrincipalAccess } from '../control/identity/access.js';
import type { ProjectTree } from '../control/identity/project-tree.js';
import { atLeast } from '../control/identity/roles.js';
import type { Services } from '../control/services.js';
import type { RequestAuth } from './route.js';

const log = logger('api');

interface Held {
  principal: Principal;
  auth: RequestAuth;
  end: (reason: NimbusError) => void;
}

export class OpenStreams {
  private readonly held = new Set<Held>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  /** `everyMs`: how long a revoked caller's stream may go on at most (plus one check's time). */
  constructor(private readonly services: Services, private readonly everyMs: number) {}

  /**
   * Holds an open stream to `auth` until the returned function lets it go (call it when the stream
   * ends; calling it twice is harmless). `end` is called at most once, when the caller may no longer.
   */
  hold(auth: RequestAuth, end: (reason: NimbusError) => void): () => void {
    const principal = auth.principal;
    if (!principal || principal.via === 'socket' || this.closed) return () => undefined; // the root-only socket: nothing to revoke
    const h: Held = { principal, auth, end };
    this.held.add(h);
    this.schedule();
    return () => void this.held.delete(h);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.held.clear();
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => void this.recheck(), this.everyMs);
    this.timer.unref();
  }

  private async recheck(): Promise<void> {
    const byToken = new Map<string, Held[]>();
    for (const h of this.held) {
      const key = h.principal.tokenId ?? '';
      const list = byToken.get(key);
      if (list) list.push(h);
      else byToken.set(key, [h]);
    }
    // the project tree, listed once for the pass: the one read that grows with the cloud, not per token
    let tree: Promise<ProjectTree> | undefined;
    const projects = () => (tree ??= this.services.access.tree());
    try {
      for (const streams of byToken.values()) await this.recheckToken(streams, projects);
    } catch (e) {
      log.warn('stream access recheck failed', { error: String(e) }); // the timer's: nobody else would hear it
    } finally {
      this.timer = undefined;
      if (this.held.size) this.schedule();
    }
  }

  /** The streams of one token: one read of the token, the user and the grants for them all. */
  private async recheckToken(streams: Held[], projects: () => Promise<ProjectTree>): Promise<void> {
    let now: Principal;
    let access: PrincipalAccess | undefined;
    try {
      now = await this.services.identity.current(streams[0]!.principal);
      access = now.systemAdmin ? undefined : await this.services.access.forPrincipal(now, await projects());
    } catch (e) {
      if (!hasCode(e, 'Unauthenticated')) {
        // the store did not answer: a revocation stays in it, and the next pass that reads it ends these
        log.warn('stream access recheck failed', { error: String(e) });
        return;
      }
      for (const h of streams) this.end(h, e as NimbusError);
      return;
    }
    for (const h of streams) {
      const need = h.auth.checked;
      const have = now.systemAdmin ? 'admin' : need?.projectId ? access?.roleOn(need.projectId) : undefined;
      if (need && !atLeast(have, need.role)) this.end(h, await this.revoked(need.projectId, need.role));
      else h.auth.renew(now, access);
    }
  }

  private async revoked(projectId: string | null, role: string): Promise<NimbusError> {
    if (projectId === null) return new PermissionDenied('access revoked: this stream needs a system administrator');
    const path = await this.services.projects.path(projectId).catch(() => '');
    return new PermissionDenied(path ? `access revoked: this stream needs the ${role} role on project "${path}"` : 'access revoked: the project was removed');
  }

  private end(h: Held, reason: NimbusError): void {
    if (!this.held.delete(h)) return; // let go meanwhile
    log.info('stream ended: access revoked', { user: h.principal.name, reason: reason.message });
    try {
      h.end(reason);
    } catch (e) {
      log.warn('ending a revoked stream failed', { error: String(e) });
    }
  }
}
