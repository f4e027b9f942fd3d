/**
 * Join tokens (as Incus trust tokens and kubeadm's token + CA hash): one string an
 * administrator hands to a new agent, `nj1.<id>.<secret>.<ca-sha256>`. The control plane
 * keeps only the secret's hash (by id) and burns it on first use; the CA fingerprint lets the
 * agent check the CA certificate it is sent, even over a channel it cannot otherwise trust.
 */
import { createHash } from 'node:crypto';
import { InvalidArgument } from '../../core/errors.js';

const PREFIX = 'nj1';

export interface JoinToken {
  id: string;
  secret: string;
  /** SHA-256 of the CA certificate's DER, lower-case hex. */
  caFingerprint: string;
}

export function formatJoinToken(t: JoinToken): string {
  return [PREFIX, t.id, t.secret, t.caFingerprint].join('.');
}

/** InvalidArgument for anything not shaped like a join token (the message never repeats it). */
export function parseJoinToken(s: string): JoinToken {
  const parts = s.trim().split('.');
  const [prefix, id, secret, caFingerprint] = parts;
  if (parts.length !== 4 || prefix !== PREFIX || !/^[0-9a-f]{16}$/.test(id ?? '') || !/^[A-Za-z0-9_-]{43}$/.test(secret ?? '') || !/^[0-9a-f]{64}$/.test(caFingerprint ?? '')) {
    throw new InvalidArgument('not a join token (nj1.ID.SECRET.CA-SHA256, from nimbus agent join-token)');
  }
  return { id: id!, secret: secret!, caFingerprint: caFingerprint! };
}

/** What the store keeps of the secret. */
export function joinSecretHash(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}
