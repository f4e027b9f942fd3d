/**
 * Join tokens (docs/architecture.md, "Agent protocol 2"): one-time, short-lived, pinned to this
 * control plane's CA, stored as hashes only. A TCP agent redeems one once for a certificate
 * signed by the CA (agent-ca.ts signs; this issues and burns the tokens).
 */
import { randomBytes } from 'node:crypto';
import { Conflict, InvalidArgument, Unauthenticated } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { ProtocolRange } from '../../agent/remote/agent-protocol.js';
import { formatJoinToken, joinSecretHash, parseJoinToken } from '../../agent/remote/join-token.js';
import type { AgentCa } from './agent-ca.js';
import { checkAgentName, checkProtocol } from './agent-registration.js';

const log = logger('agents');

/** Join tokens live this long unless asked otherwise, and never longer than a day. */
export const DEFAULT_JOIN_TOKEN_TTL_MS = 10 * 60_000;
export const MAX_JOIN_TOKEN_TTL_MS = 24 * 3600_000;

export interface JoinTokensDeps {
  store: Pick<Store, 'joinTokens'>;
  ca: AgentCa | undefined;
  /** The embedded agent's name, which no joining agent may take. */
  localName: string;
}

export class JoinTokens {
  constructor(private readonly deps: JoinTokensDeps) {}

  /** A one-time join token (shown once: only its secret's hash is stored). */
  async issue(o: { ttlMs?: number }, now: number): Promise<{ token: string; id: string; expiresAt: string }> {
    const ca = this.requireCa();
    const ttl = o.ttlMs ?? DEFAULT_JOIN_TOKEN_TTL_MS;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_JOIN_TOKEN_TTL_MS) throw new InvalidArgument(`a join token lives 1 ms to ${MAX_JOIN_TOKEN_TTL_MS / 3600_000} h`);
    const id = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const { joinTokens } = this.deps.store;
    await joinTokens.deleteStale(now - MAX_JOIN_TOKEN_TTL_MS);
    await joinTokens.insert({ id, hash: joinSecretHash(secret), createdAt: new Date(now).toISOString(), expiresAt: now + ttl, usedAt: null, usedBy: null });
    log.info('agent join token issued', { id, expiresAt: new Date(now + ttl).toISOString() });
    return { token: formatJoinToken({ id, secret, caFingerprint: ca.fingerprint }), id, expiresAt: new Date(now + ttl).toISOString() };
  }

  /**
   * An agent redeeming a join token: its CSR signed for its name (a server certificate from
   * the CA), with the CA's certificate. The token is burned; an unknown, used, expired or
   * forged one is refused with one message for all (which it was is not told).
   */
  async redeem(req: { joinToken: string; name: string; csr: string; protocol?: ProtocolRange }, now: number): Promise<{ certificate: string; caCertificate: string }> {
    const ca = this.requireCa();
    checkAgentName(req.name, this.deps.localName);
    if (req.name.length > 64) throw new InvalidArgument(`agent name "${req.name}" is too long for a certificate (64 characters at most)`);
    checkProtocol(req.name, req.protocol);
    const refused = () => new Unauthenticated('the join token is not valid (unknown, expired, already used, or from another control plane)');
    let token;
    try {
      token = parseJoinToken(req.joinToken);
    } catch {
      throw refused();
    }
    if (token.caFingerprint !== ca.fingerprint) throw refused();
    const hash = joinSecretHash(token.secret);
    const { joinTokens } = this.deps.store;
    const stored = await joinTokens.get(token.id);
    if (!stored || stored.hash !== hash || stored.usedAt !== null || stored.expiresAt <= now) throw refused();
    // signed before the burn, so a malformed CSR does not use the token up
    const certificate = await ca.signAgent(req.csr, req.name);
    if (!(await joinTokens.redeem(token.id, hash, req.name, now))) throw refused();
    log.info('agent joined', { agent: req.name, tokenId: token.id });
    return { certificate, caCertificate: ca.certificate };
  }

  private requireCa(): AgentCa {
    if (!this.deps.ca) throw new Conflict('this control plane has no agent CA (TCP agents and join tokens need one)');
    return this.deps.ca;
  }
}
