/**
 * Users, sessions and API keys. Passwords are kept as scrypt hashes; session
 * tokens and API keys are 32 random bytes shown once, of which only a sha256
 * is stored (they are high-entropy, so a fast hash suffices to make a stolen
 * database useless for logging in).
 */
import { createHash, randomBytes } from 'node:crypto';
import { AlreadyExists, Conflict, InvalidArgument, NotFound, Unauthenticated } from '../../core/errors.js';
import { isValidName, newId } from '../../core/ids.js';
import type { Store } from '../../store/store.js';
import type { TokenRecord, UserRecord } from '../../store/records.js';
import type { Principal } from './access.js';
import { FailureThrottle } from '../../core/failure-throttle.js';
import { sharedFailureLog } from './shared-failure-log.js';
import { decoyHash, generatePassword, hashPassword, verifyPassword } from './passwords.js';

export const ADMIN_USER = 'admin';
/** Sessions last 12 hours unless the login asks for less (or up to 30 days). */
export const SESSION_TTL_SECONDS = 12 * 3600;
export const MAX_TTL_SECONDS = 30 * 24 * 3600;
const PREFIX = { session: 'nmbs_', apikey: 'nmbk_' } as const;
const MIN_PASSWORD = 8;
/** Failed logins: per user from one address, and per address over all users (a spray). */
const LOGIN_FAILURES_PER_USER = { limit: 5, windowMs: 5 * 60_000 };
const LOGIN_FAILURES_PER_SOURCE = { limit: 20, windowMs: 5 * 60_000 };

export interface UserView {
  id: string;
  name: string;
  systemAdmin: boolean;
  defaultProject: string | null;
  createdAt: string;
}

export interface ApiKeyView {
  name: string;
  createdAt: string;
  expiresAt: string | null;
}

const hashSecret = (secret: string) => createHash('sha256').update(secret).digest('hex');

export class IdentityService {
  /** Counted in the store: every replica's answers count against one limit. */
  private readonly failedLogins: { byUser: FailureThrottle; bySource: FailureThrottle };

  constructor(private readonly store: Store) {
    this.failedLogins = {
      byUser: new FailureThrottle(LOGIN_FAILURES_PER_USER, sharedFailureLog(store, 'login-user')),
      bySource: new FailureThrottle(LOGIN_FAILURES_PER_SOURCE, sharedFailureLog(store, 'login-source')),
    };
  }

  view(u: UserRecord): UserView {
    return { id: u.id, name: u.name, systemAdmin: u.systemAdmin, defaultProject: u.defaultProjectId, createdAt: u.createdAt };
  }

  /**
   * First start: create the `admin` user. Returns the password only when it was
   * generated, so the daemon can print it once; nothing else ever sees it.
   */
  async ensureAdmin(password: string | undefined, defaultProjectId: string): Promise<{ created: boolean; generatedPassword?: string }> {
    if (await this.store.users.byName(ADMIN_USER)) return { created: false };
    const generated = password ? undefined : generatePassword();
    await this.createUser(ADMIN_USER, password ?? generated!, { systemAdmin: true, defaultProjectId });
    return generated ? { created: true, generatedPassword: generated } : { created: true };
  }

  async createUser(name: string, password: string, opts: { systemAdmin?: boolean; defaultProjectId?: string | null } = {}): Promise<UserView> {
    if (!isValidName(name)) throw new InvalidArgument(`invalid user name "${name}": use letters, digits, '_', '.', '-'`);
    if (password.length < MIN_PASSWORD) throw new InvalidArgument(`password must have at least ${MIN_PASSWORD} characters`);
    if (await this.store.users.byName(name)) throw new AlreadyExists(`user "${name}" already exists`);
    const rec: UserRecord = {
      id: newId().slice(0, 32), name, passwordHash: await hashPassword(password), systemAdmin: opts.systemAdmin ?? false,
      defaultProjectId: opts.defaultProjectId ?? null, createdAt: new Date().toISOString(),
    };
    await this.store.users.insert(rec);
    return this.view(rec);
  }

  async user(name: string): Promise<UserRecord> {
    const u = await this.store.users.byName(name);
    if (!u) throw new NotFound(`no such user: ${name}`);
    return u;
  }

  async listUsers(): Promise<UserView[]> {
    return (await this.store.users.list()).map((u) => this.view(u));
  }

  async removeUser(name: string): Promise<void> {
    const u = await this.user(name);
    if (u.systemAdmin && (await this.store.users.list()).filter((x) => x.systemAdmin).length === 1) {
      throw new Conflict(`user "${name}" is the last system administrator`);
    }
    await this.store.users.delete(u.id); // sessions, keys and role grants go with it (ON DELETE CASCADE)
  }

  async setPassword(name: string, password: string): Promise<void> {
    if (password.length < MIN_PASSWORD) throw new InvalidArgument(`password must have at least ${MIN_PASSWORD} characters`);
    const u = await this.user(name);
    const passwordHash = await hashPassword(password);
    await this.store.users.update(u.id, { passwordHash });
  }

  /** Password → session token. Unknown user and wrong password fail alike, in alike time. */
  /**
   * `source`: the caller's address (api/caller-address.ts: the socket's peer, or behind a trusted
   * proxy its X-Forwarded-For). Failed logins are throttled per user from
   * that address and per address (FailureThrottle): a throttled attempt is refused (429) before
   * its password is even checked, so guessing costs the guesser time and nimbusd no scrypt.
   */
  async login(name: string, password: string, ttlSeconds = SESSION_TTL_SECONDS, source = 'local'): Promise<{ token: string; expiresAt: string; user: UserView }> {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS) {
      throw new InvalidArgument(`ttl must be between 1 and ${MAX_TTL_SECONDS} seconds`);
    }
    const userKey = `${name}\0${source}`;
    await this.failedLogins.bySource.check(source, 'login');
    await this.failedLogins.byUser.check(userKey, `login as ${name}`);
    const u = await this.store.users.byName(name);
    const ok = await verifyPassword(password, u?.passwordHash ?? (await decoyHash()));
    if (!u || !ok) {
      await this.failedLogins.byUser.fail(userKey);
      await this.failedLogins.bySource.fail(source);
      throw new Unauthenticated('invalid user name or password');
    }
    await this.failedLogins.byUser.succeed(userKey);
    await this.store.tokens.deleteExpired(Date.now());
    const { secret, record } = this.mint(u.id, 'session', null, Date.now() + ttlSeconds * 1000);
    await this.store.tokens.insert(record);
    return { token: secret, expiresAt: new Date(record.expiresAt!).toISOString(), user: this.view(u) };
  }

  private mint(userId: string, kind: TokenRecord['kind'], name: string | null, expiresAt: number | null): { secret: string; record: TokenRecord } {
    const secret = PREFIX[kind] + randomBytes(32).toString('base64url');
    return { secret, record: { id: newId().slice(0, 32), userId, kind, name, hash: hashSecret(secret), createdAt: new Date().toISOString(), expiresAt } };
  }

  /** A bearer secret (session token or API key) → the caller. */
  async authenticate(secret: string): Promise<Principal> {
    const t = await this.store.tokens.byHash(hashSecret(secret));
    if (!t) throw new Unauthenticated('invalid or revoked token; log in again');
    if (t.expiresAt !== null && t.expiresAt <= Date.now()) {
      await this.store.tokens.delete(t.id);
      throw new Unauthenticated('token expired; log in again');
    }
    const u = await this.store.users.get(t.userId);
    if (!u) throw new Unauthenticated('invalid or revoked token; log in again');
    return { userId: u.id, name: u.name, systemAdmin: u.systemAdmin, defaultProjectId: u.defaultProjectId, via: t.kind, tokenId: t.id };
  }

  /**
   * The caller as the store has it now, for what outlives its request (a stream's recheck,
   * src/api/open-streams.ts): Unauthenticated once the token it presented is revoked or expired,
   * or its user removed. A socket caller without a token has nothing to revoke.
   */
  async current(p: Principal): Promise<Principal> {
    if (p.via === 'socket') return p;
    const t = p.tokenId ? await this.store.tokens.get(p.tokenId) : undefined;
    if (!t || t.userId !== p.userId) throw new Unauthenticated(`the ${p.via === 'apikey' ? 'API key' : 'session'} was revoked; log in again`);
    if (t.expiresAt !== null && t.expiresAt <= Date.now()) throw new Unauthenticated('token expired; log in again');
    const u = await this.store.users.get(t.userId);
    if (!u) throw new Unauthenticated(`user "${p.name}" was removed`);
    return { ...p, name: u.name, systemAdmin: u.systemAdmin, defaultProjectId: u.defaultProjectId };
  }

  /** A unix-socket caller without a token: the local administrator (Docker's model; the socket is root-only). */
  async localAdmin(defaultProjectId: string): Promise<Principal> {
    const u = await this.store.users.byName(ADMIN_USER);
    return { userId: u?.id ?? null, name: u?.name ?? 'local-admin', systemAdmin: true, defaultProjectId: u?.defaultProjectId ?? defaultProjectId, via: 'socket', tokenId: null };
  }

  /** Revoke the session the caller presented (API keys are revoked by name). */
  async logout(p: Principal): Promise<void> {
    if (p.via === 'session' && p.tokenId) await this.store.tokens.delete(p.tokenId);
  }

  async createApiKey(p: Principal, name: string, expiresInSeconds?: number): Promise<ApiKeyView & { key: string }> {
    const userId = this.requireUser(p);
    if (!isValidName(name)) throw new InvalidArgument(`invalid API key name "${name}"`);
    if (expiresInSeconds !== undefined && (!Number.isInteger(expiresInSeconds) || expiresInSeconds < 1)) throw new InvalidArgument('expiry must be a positive number of seconds');
    const { secret, record } = this.mint(userId, 'apikey', name, expiresInSeconds === undefined ? null : Date.now() + expiresInSeconds * 1000);
    await this.store.tokens.insert(record);
    return { ...this.keyView(record), key: secret };
  }

  async listApiKeys(p: Principal): Promise<ApiKeyView[]> {
    return (await this.store.tokens.list(this.requireUser(p), 'apikey')).map((t) => this.keyView(t));
  }

  async removeApiKey(p: Principal, name: string): Promise<void> {
    const key = (await this.store.tokens.list(this.requireUser(p), 'apikey')).find((t) => t.name === name);
    if (!key) throw new NotFound(`no such API key: ${name}`);
    await this.store.tokens.delete(key.id);
  }

  private keyView(t: TokenRecord): ApiKeyView {
    return { name: t.name ?? '', createdAt: t.createdAt, expiresAt: t.expiresAt === null ? null : new Date(t.expiresAt).toISOString() };
  }

  private requireUser(p: Principal): string {
    if (!p.userId) throw new InvalidArgument('this caller is not a user; log in first');
    return p.userId;
  }
}
