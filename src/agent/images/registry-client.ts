/**
 * An OCI distribution-spec (registry v2) client over node:http(s) (http-exchange.ts): manifests and blobs,
 * Bearer-token and Basic challenges, redirects, plain HTTP only for loopback
 * or explicitly insecure registries (as Docker does).
 *
 * Auth flow: a request goes out with whatever this client already holds (a
 * cached Bearer token for its scope, or Basic once a Basic challenge was
 * seen); a 401 carries a challenge which is answered once (twice when a
 * Bearer challenge asks for a different scope), after which a 401 is
 * Unauthenticated. Tokens are cached per realm/service/scope/credentials in a
 * TokenCache (shared by default, so successive pulls reuse them until expiry).
 *
 * Every error names the registry and the repository + reference it was about. A registry is any host a
 * tenant names: its small bodies (manifests, token answers, error texts) are read with a byte limit and a
 * deadline, its blobs with a stall timeout.
 */
import { createHash } from 'node:crypto';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  DataLoss,
  InvalidArgument,
  NimbusError,
  NotFound,
  PermissionDenied,
  Unauthenticated,
  Unavailable,
} from '../../core/errors.js';
import { isLoopbackHost } from '../../core/hostname.js';
import { possessionCheck, type ContentInfo, type ContentIngester, type ContentStore } from '../content/content-store.js';
import { MANIFEST_ACCEPT } from './media-types.js';
import { exchange, type RegistryAnswer } from './http-exchange.js';
import { EgressRefused, egressDenied } from './registry-egress.js';

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface RegistryClientOptions {
  /** Registries (host[:port]) reached over plain HTTP although not loopback. */
  insecureRegistries?: readonly string[];
  /**
   * Registries (host[:port]) an administrator allows on this host's own, loopback or link-local
   * addresses (registry-egress.ts); the insecure ones are allowed too. Every other connection,
   * redirects and token realms included, is refused there.
   */
  allowedRegistries?: readonly string[];
  credentials?: RegistryCredentials;
  signal?: AbortSignal;
  /** Where Bearer tokens are kept; defaults to one process-wide cache. */
  tokenCache?: TokenCache;
  userAgent?: string;
  /** How long to wait for a response's headers. Default 30 s. */
  responseTimeoutMs?: number;
  /**
   * How long a blob download may go without receiving a byte, and how long a small body (a manifest, a
   * token, an error's text) may take in all. Default 60 s.
   */
  stallTimeoutMs?: number;
}

/** Until `w` wants more bytes, or is gone (its reader stopped: the download goes on without it). */
function drained(w: Writable): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.on('drain', done);
    w.on('close', done);
    if (w.destroyed) done();
  });
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

const MAX_REDIRECTS = 5;
/** The reason phrases dockerd's login messages carry (Go's http.StatusText). */
const STATUS_TEXT: Record<number, string> = { 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable' };
const DEFAULT_TOKEN_TTL_S = 60;
/** A token service's answer larger than this is refused (real ones are a few KiB). */
const MAX_TOKEN_BYTES = 1024 * 1024;
/** Of an error's body, this much is read (its first 200 characters are told, and the error code looked for). */
const ERROR_BODY_BYTES = 64 * 1024;

/** Parse a WWW-Authenticate header into its challenges (RFC 7235: quoted or bare values, several challenges). */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = () => {
    while (i < n && /[\s,]/.test(header[i]!)) i++;
  };
  const token = () => {
    const m = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+/.exec(header.slice(i));
    if (!m) return '';
    i += m[0].length;
    return m[0];
  };
  let current: Challenge | undefined;
  while (i < n) {
    skipWs();
    const start = i;
    const name = token();
    if (!name) {
      i++;
      continue;
    }
    let j = i;
    while (j < n && header[j] === ' ') j++;
    if (header[j] === '=' && current) {
      i = j + 1;
      while (i < n && header[i] === ' ') i++;
      let value = '';
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === '\\' && i + 1 < n) i++;
          value += header[i];
          i++;
        }
        i++;
      } else {
        const m = /^[^,\s]*/.exec(header.slice(i))!;
        value = m[0];
        i += value.length;
      }
      current.params[name.toLowerCase()] = value;
    } else if (header[j] === '=' && !current) {
      i = j + 1; // parameter without a scheme: ignore
    } else {
      current = { scheme: name.toLowerCase(), params: {} };
      out.push(current);
      if (i === start) i++;
    }
  }
  return out;
}

/** First challenge of a WWW-Authenticate header. */
export function parseChallenge(header: string): Challenge | undefined {
  return parseChallenges(header)[0];
}

/** Bearer tokens by realm, service, scope and (a hash of) the credentials used to get them. */
export class TokenCache {
  private readonly tokens = new Map<string, { token: string; expires: number }>();
  get(key: string): string | undefined {
    const t = this.tokens.get(key);
    if (!t) return undefined;
    if (Date.now() >= t.expires) {
      this.tokens.delete(key);
      return undefined;
    }
    return t.token;
  }
  set(key: string, token: string, ttlSeconds: number): void {
    // Renew a little early so a token does not expire between lookup and use.
    this.tokens.set(key, { token, expires: Date.now() + Math.max(1, ttlSeconds - 5) * 1000 });
  }
  delete(key: string): void {
    this.tokens.delete(key);
  }
  clear(): void {
    this.tokens.clear();
  }
  get size(): number {
    return this.tokens.size;
  }
}

export const defaultTokenCache = new TokenCache();

/** Does this registry get plain HTTP? Loopback always, others only when listed. */
export function isPlainHttpRegistry(registry: string, insecure: readonly string[] = []): boolean {
  // plain HTTP without configuration: loopback only, as Docker does
  return isLoopbackHost(registry) || insecure.includes(registry);
}

export interface ManifestResponse {
  body: Buffer;
  mediaType: string;
  /** Docker-Content-Digest header, when the registry sent one. */
  digest?: string;
}

export interface ManifestHead {
  mediaType: string;
  digest?: string;
  size?: number;
}

export class RegistryClient {
  /** https://host/v2/<repository> (http for loopback and insecure registries). */
  readonly base: string;
  private readonly cache: TokenCache;
  private bearerKey: string | undefined;
  private basic = false;
  /** Registries (host[:port], as URL.host writes it) an administrator named: connected to without the egress guard. */
  private readonly named: ReadonlySet<string>;

  constructor(
    readonly registry: string,
    readonly repository: string,
    private readonly opts: RegistryClientOptions = {},
  ) {
    const plain = isPlainHttpRegistry(registry, opts.insecureRegistries);
    const host = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
    this.base = `${plain ? 'http' : 'https'}://${host}/v2/${repository}`;
    this.cache = opts.tokenCache ?? defaultTokenCache;
    this.named = new Set([...(opts.allowedRegistries ?? []), ...(opts.insecureRegistries ?? [])]);
  }

  private where(what: string): string {
    return `${this.registry}/${this.repository} ${what}`;
  }

  private basicHeader(): string | undefined {
    const c = this.opts.credentials;
    return c ? `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}` : undefined;
  }

  private authHeader(): Record<string, string> {
    if (this.bearerKey) {
      const t = this.cache.get(this.bearerKey);
      if (t) return { authorization: `Bearer ${t}` };
      this.bearerKey = undefined; // expired: the next 401 fetches a fresh one
    }
    const basic = this.basic ? this.basicHeader() : undefined;
    return basic ? { authorization: basic } : {};
  }

  /** Answer a 401's challenge. Returns false when there is nothing (new) to try. */
  private async authenticate(res: RegistryAnswer, what: string, tried: Set<string>): Promise<boolean> {
    const challenges = parseChallenges(res.headers.get('www-authenticate') ?? '');
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    if (bearer) {
      const realm = bearer.params.realm!;
      const service = bearer.params.service;
      const scope = bearer.params.scope ?? `repository:${this.repository}:pull`;
      const cred = this.opts.credentials;
      const credKey = cred ? createHash('sha256').update(`${cred.username}\0${cred.password}`).digest('hex') : 'anonymous';
      const key = `${realm}|${service ?? ''}|${scope}|${credKey}`;
      if (tried.has(key)) {
        this.cache.delete(key);
        return false;
      }
      tried.add(key);
      if (this.cache.get(key) === undefined || this.bearerKey === key) await this.fetchToken(key, realm, service, scope, what);
      this.bearerKey = key;
      return true;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      if (!this.opts.credentials) {
        throw new Unauthenticated(`registry ${this.registry} requires credentials for ${this.where(what)}`);
      }
      if (tried.has('basic')) return false;
      tried.add('basic');
      this.basic = true;
      return true;
    }
    return false;
  }

  private async fetchToken(key: string, realm: string, service: string | undefined, scope: string | undefined, what: string): Promise<void> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new Unauthenticated(`registry ${this.registry} sent an invalid token realm "${realm}" for ${this.where(what)}`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new Unauthenticated(`registry ${this.registry} sent a token realm with scheme ${url.protocol} for ${this.where(what)}`);
    }
    if (service) url.searchParams.set('service', service);
    if (scope) url.searchParams.set('scope', scope);
    const basic = this.basicHeader();
    const res = await this.send(url.toString(), 'GET', basic ? { authorization: basic } : {}, `token for ${this.where(what)}`);
    if (!res.ok) {
      const text = (await this.readSmall(res, ERROR_BODY_BYTES, `the token service's answer for ${this.where(what)}`, true).catch(() => Buffer.alloc(0))).toString('utf8');
      if (res.status === 401 || res.status === 403) {
        throw new Unauthenticated(
          `registry ${this.registry}: token service ${url.origin} refused ${this.opts.credentials ? `the credentials of ${this.opts.credentials.username}` : 'anonymous access'} for ${this.where(what)} (${res.status})${text ? `: ${text.slice(0, 200)}` : ''}`,
        );
      }
      throw new Unavailable(`registry ${this.registry}: token service ${url.origin} answered ${res.status} for ${this.where(what)}`);
    }
    let body: { token?: string; access_token?: string; expires_in?: number };
    const raw = await this.readSmall(res, MAX_TOKEN_BYTES, `the token service's answer for ${this.where(what)}`);
    try {
      body = JSON.parse(raw.toString('utf8')) as typeof body;
    } catch {
      throw new Unauthenticated(`registry ${this.registry}: token service ${url.origin} answered with invalid JSON for ${this.where(what)}`);
    }
    const token = body.token ?? body.access_token;
    if (!token) throw new Unauthenticated(`registry ${this.registry}: token service ${url.origin} gave no token for ${this.where(what)}`);
    this.cache.set(key, token, typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_TTL_S);
  }

  /**
   * Docker's login check (`docker login`, POST /auth): GET /v2/ answering its challenge with the
   * credentials, as dockerd's loginV2 does: Basic, or a Bearer token asked for without a scope.
   * A 200 is a login (a registry that wants no credentials too); a refusal is Unauthenticated in
   * dockerd's words, which the docker CLI prints as they are.
   */
  async checkLogin(): Promise<void> {
    const endpoint = this.base.slice(0, this.base.indexOf('/v2/') + 4); // the registry's root: https://HOST/v2/
    const what = 'login';
    let res = await this.send(endpoint, 'GET', {}, `${this.registry} ${what}`);
    if (res.status === 401) {
      await res.body?.cancel().catch(() => undefined);
      const challenges = parseChallenges(res.headers.get('www-authenticate') ?? '');
      const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
      let header: Record<string, string>;
      if (bearer) {
        const cred = this.opts.credentials;
        const credKey = cred ? createHash('sha256').update(`${cred.username}\0${cred.password}`).digest('hex') : 'anonymous';
        const key = `${bearer.params.realm}|${bearer.params.service ?? ''}|login|${credKey}`;
        try {
          await this.fetchToken(key, bearer.params.realm!, bearer.params.service, undefined, what);
        } catch (e) {
          if (e instanceof NimbusError && e.code === 'Unauthenticated') throw new Unauthenticated(`Get "${endpoint}": unauthorized: authentication required`, { registry: this.registry });
          throw e;
        }
        header = { authorization: `Bearer ${this.cache.get(key)}` };
      } else {
        const basic = this.basicHeader();
        if (!basic) throw new Unauthenticated(`login attempt to ${endpoint} failed with status: 401 Unauthorized`, { registry: this.registry });
        header = { authorization: basic };
      }
      res = await this.send(endpoint, 'GET', header, `${this.registry} ${what}`);
    }
    await res.body?.cancel().catch(() => undefined);
    if (res.ok) return;
    const text = `login attempt to ${endpoint} failed with status: ${res.status} ${STATUS_TEXT[res.status] ?? ''}`.trim();
    if (res.status === 401 || res.status === 403) throw new Unauthenticated(text, { registry: this.registry });
    if (res.status === 429 || res.status >= 500) throw new Unavailable(text, { registry: this.registry });
    throw new InvalidArgument(text, { registry: this.registry });
  }

  /** One HTTP exchange with manual redirects: credentials never follow a redirect to another origin. */
  private async send(url: string, method: 'GET' | 'HEAD', headers: Record<string, string>, what: string): Promise<RegistryAnswer> {
    let current = url;
    let hdrs: Record<string, string> = { ...headers, ...(this.opts.userAgent ? { 'user-agent': this.opts.userAgent } : {}) };
    for (let hop = 0; ; hop++) {
      const target = new URL(current);
      let res: RegistryAnswer;
      // A registry that accepts the connection and never answers must not hang a pull.
      const timeoutMs = this.opts.responseTimeoutMs ?? 30_000;
      const deadline = new AbortController();
      const timer = setTimeout(() => deadline.abort(), timeoutMs);
      try {
        const signal = this.opts.signal ? AbortSignal.any([this.opts.signal, deadline.signal]) : deadline.signal;
        res = await exchange(current, { method, headers: hdrs, signal, guarded: !this.named.has(target.host) });
      } catch (e) {
        if (this.opts.signal?.aborted) throw this.opts.signal.reason ?? e;
        if ((e as { cause?: unknown }).cause instanceof EgressRefused) throw egressDenied(this.registry, target.host, (e as { cause: EgressRefused }).cause);
        if (deadline.signal.aborted) throw new Unavailable(`registry ${this.registry} did not answer ${what} within ${timeoutMs} ms`);
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        throw new Unavailable(`cannot reach registry ${this.registry} (${target.host}) for ${what}: ${cause?.code ?? cause?.message ?? String(e)}`, undefined, { cause: e });
      } finally {
        clearTimeout(timer);
      }
      const loc = res.headers.get('location');
      if (![301, 302, 303, 307, 308].includes(res.status) || !loc) return res;
      await res.body?.cancel().catch(() => undefined);
      if (hop >= MAX_REDIRECTS) throw new Unavailable(`registry ${this.registry}: too many redirects for ${what}`);
      const next = new URL(loc, target);
      if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new Unavailable(`registry ${this.registry} redirected ${what} to ${next.protocol}`);
      if (next.origin !== target.origin) {
        const { authorization: _dropped, ...rest } = hdrs;
        void _dropped;
        hdrs = rest;
      }
      current = next.toString();
    }
  }

  /** GET/HEAD under /v2/<repo>/, answering auth challenges. Non-2xx becomes a typed error. */
  async request(method: 'GET' | 'HEAD', path: string, headers: Record<string, string> = {}, what = path): Promise<RegistryAnswer> {
    const tried = new Set<string>();
    for (;;) {
      const res = await this.send(`${this.base}/${path}`, method, { ...headers, ...this.authHeader() }, this.where(what));
      if (res.status === 401 && tried.size < 3) {
        const retry = await this.authenticate(res, what, tried);
        if (retry) {
          await res.body?.cancel().catch(() => undefined);
          continue;
        }
      }
      if (res.ok) return res;
      throw await this.errorFor(res, method, what);
    }
  }

  private async errorFor(res: RegistryAnswer, method: string, what: string): Promise<NimbusError> {
    const text = method === 'GET'
      ? (await this.readSmall(res, ERROR_BODY_BYTES, `the error's text for ${this.where(what)}`, true).catch(() => Buffer.alloc(0))).toString('utf8')
      : (await res.body?.cancel().catch(() => undefined), '');
    const ref = this.where(what);
    const detail = text ? `: ${text.slice(0, 200).trim()}` : '';
    if (res.status === 401) {
      return new Unauthenticated(
        `registry ${this.registry} refused access to ${ref} (401)${this.opts.credentials ? ` with the credentials of ${this.opts.credentials.username}` : ' without credentials'}${detail}`,
      );
    }
    if (res.status === 403) return new PermissionDenied(`registry ${this.registry} denied access to ${ref} (403)${detail}`);
    if (res.status === 404) {
      const kind = /NAME_UNKNOWN/.test(text) ? ' (unknown repository)' : /MANIFEST_UNKNOWN/.test(text) ? ' (manifest unknown)' : /BLOB_UNKNOWN/.test(text) ? ' (blob unknown)' : '';
      return new NotFound(`${ref}: not found in registry ${this.registry}${kind}`);
    }
    if (res.status === 429 || res.status >= 500) return new Unavailable(`registry ${this.registry} answered ${res.status} for ${ref}${detail}`);
    return new InvalidArgument(`registry ${this.registry} answered ${res.status} for ${ref}${detail}`);
  }

  /** GET a manifest or index; the body is read with a size limit (no unbounded buffering). */
  async getManifest(reference: string, accept: string = MANIFEST_ACCEPT, maxBytes = 4 * 1024 * 1024): Promise<ManifestResponse> {
    const res = await this.request('GET', `manifests/${reference}`, { accept }, reference);
    const len = Number(res.headers.get('content-length') ?? NaN);
    if (len > maxBytes) {
      await res.body?.cancel().catch(() => undefined);
      throw new InvalidArgument(`manifest ${this.where(reference)} is ${len} bytes; the limit is ${maxBytes}`);
    }
    const body = await this.readSmall(res, maxBytes, `manifest ${this.where(reference)}`);
    const mediaType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    const digest = res.headers.get('docker-content-digest') ?? undefined;
    return { body, mediaType, ...(digest ? { digest } : {}) };
  }

  /** HEAD a manifest: its digest (Docker-Content-Digest), media type and size without the body. */
  async headManifest(reference: string, accept: string = MANIFEST_ACCEPT): Promise<ManifestHead> {
    const res = await this.request('HEAD', `manifests/${reference}`, { accept }, reference);
    const mediaType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    const digest = res.headers.get('docker-content-digest') ?? undefined;
    const size = Number(res.headers.get('content-length') ?? NaN);
    return { mediaType, ...(digest ? { digest } : {}), ...(Number.isFinite(size) ? { size } : {}) };
  }

  /** GET a blob (redirects to blob storage are followed). The caller must consume or cancel the body. */
  async getBlob(digest: string): Promise<RegistryAnswer> {
    return this.request('GET', `blobs/${digest}`, {}, digest);
  }

  /** Does the registry have this blob? */
  async hasBlob(digest: string): Promise<boolean> {
    try {
      await this.request('HEAD', `blobs/${digest}`, {}, digest);
      return true;
    } catch (e) {
      if (e instanceof NimbusError && e.code === 'NotFound') return false;
      throw e;
    }
  }

  /**
   * A small body (a manifest, a token service's answer, an error's text) with a byte limit, all of it within the
   * stall timeout: a registry (any host a tenant names) can neither fill the agent's memory with an endless body
   * nor hold a pull by never finishing one. Past `maxBytes`, `truncate` keeps the first `maxBytes` (an error's
   * text), else InvalidArgument. The rest of the body is dropped.
   */
  private async readSmall(res: RegistryAnswer, maxBytes: number, subject: string, truncate = false): Promise<Buffer> {
    if (!res.body) return Buffer.alloc(0);
    const stallMs = this.opts.stallTimeoutMs ?? 60_000;
    const it = res.body[Symbol.asyncIterator]();
    const parts: Buffer[] = [];
    let total = 0;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Unavailable(`registry ${this.registry}: ${subject} did not arrive within ${stallMs} ms`)), stallMs);
    });
    try {
      for (;;) {
        const next = it.next();
        next.catch(() => undefined); // may settle after the deadline; nobody waits for it then
        const r = await Promise.race([next, late]);
        if (r.done) break;
        total += r.value.length;
        if (total > maxBytes) {
          if (!truncate) throw new InvalidArgument(`${subject} is larger than ${maxBytes} bytes`);
          parts.push(Buffer.from(r.value).subarray(0, r.value.length - (total - maxBytes)));
          break;
        }
        parts.push(Buffer.from(r.value));
      }
    } catch (e) {
      if (e instanceof NimbusError) throw e;
      throw this.streamError(e, subject);
    } finally {
      clearTimeout(timer);
      await res.body.cancel().catch(() => undefined);
    }
    return Buffer.concat(parts);
  }

  /** A connection that broke while `subject` was read (the caller's abort is thrown as it is). */
  private streamError(e: unknown, subject: string): NimbusError {
    if (this.opts.signal?.aborted) throw this.opts.signal.reason ?? e;
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    const why = cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e));
    return new Unavailable(`registry ${this.registry}: connection lost while reading ${subject}: ${why}`, undefined, { cause: e });
  }

  /**
   * Stream a blob into the content store; the store verifies digest and size
   * before the blob becomes visible (DataLoss otherwise, nothing kept).
   * onBytes is called with the running byte count. `tee` gets every byte as it arrives (an unpack
   * that overlaps the download), with backpressure; it is ended when the body ended, destroyed
   * with the error when the download failed, and no longer written once its reader destroyed it.
   * Its bytes are unverified: the returned promise says whether they were the blob.
   */
  async pullBlob(
    desc: { digest: string; size?: number },
    store: ContentStore,
    onBytes?: (bytesDone: number, finished: boolean) => void,
    tee?: Writable,
  ): Promise<ContentInfo> {
    try {
      const info = await this.pullBlobInto(desc, store, onBytes, tee);
      // another pull stored the blob meanwhile and the body was never read: the tee reads the store
      if (tee && !tee.writableEnded && !tee.destroyed) void pipeline(store.openRead(desc.digest), tee).catch(() => undefined);
      return info;
    } catch (e) {
      tee?.destroy(e instanceof Error ? e : new Error(String(e)));
      throw e;
    }
  }

  /**
   * Download a blob and check it, keeping nothing: the registry shows it holds what the host has
   * already (content-store.ts, possessionCheck).
   */
  async verifyBlob(desc: { digest: string; size?: number }, onBytes?: (bytesDone: number, finished: boolean) => void): Promise<ContentInfo> {
    return this.pullBlobInto(desc, possessionCheck, onBytes, undefined);
  }

  private async pullBlobInto(
    desc: { digest: string; size?: number },
    store: ContentIngester,
    onBytes: ((bytesDone: number, finished: boolean) => void) | undefined,
    tee: Writable | undefined,
  ): Promise<ContentInfo> {
    const res = await this.getBlob(desc.digest);
    const len = Number(res.headers.get('content-length') ?? NaN);
    if (desc.size !== undefined && Number.isFinite(len) && len !== desc.size) {
      await res.body?.cancel().catch(() => undefined);
      throw new DataLoss(`blob ${this.where(desc.digest)}: registry sent ${len} bytes, the manifest says ${desc.size}`);
    }
    const body = (res.body ?? []) as AsyncIterable<Uint8Array>;
    const self = this;
    const stallMs = this.opts.stallTimeoutMs ?? 60_000;
    let done = 0;
    async function* counted(): AsyncGenerator<Uint8Array> {
      const it = body[Symbol.asyncIterator]();
      try {
        for (;;) {
          // a stalled transfer fails the pull instead of hanging it
          let timer: NodeJS.Timeout | undefined;
          const stalled = new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Unavailable(`registry ${self.registry}: download of ${self.where(desc.digest)} stalled (no data for ${stallMs} ms)`)), stallMs);
          });
          const next = it.next();
          next.catch(() => undefined); // may settle after a stall; nobody waits for it then
          const r = await Promise.race([next, stalled]).finally(() => clearTimeout(timer));
          if (r.done) break;
          done += r.value.length;
          onBytes?.(done, false);
          if (tee && !tee.destroyed && !tee.write(r.value)) await drained(tee);
          yield r.value;
        }
      } catch (e) {
        if (e instanceof NimbusError) throw e;
        throw self.streamError(e, self.where(desc.digest));
      }
      // the reader may finish while the store syncs and checks the digest
      if (tee && !tee.destroyed) tee.end();
      onBytes?.(done, true);
    }
    try {
      return await store.ingest({ digest: desc.digest, ...(desc.size !== undefined ? { size: desc.size } : {}) }, counted());
    } catch (e) {
      if (e instanceof NimbusError && e.code === 'DataLoss' && !e.message.includes(this.registry)) {
        throw new DataLoss(`${e.message} (blob ${this.where(desc.digest)})`, e.details, { cause: e });
      }
      throw e;
    } finally {
      await res.body?.cancel().catch(() => undefined);
    }
  }
}
