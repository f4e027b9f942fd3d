/**
 * An OCI distribution-spec (registry v2) client over fetch: manifests and blobs,
 * Bearer-token and Basic challenges, plain HTTP only for loopback or named
 * insecure registries.
 */
import { InvalidArgument, NotFound, Unauthenticated, Unavailable, NimbusError } from '../../core/errors.js';
import { isLoopbackRegistry } from '../../core/image-reference.js';

export interface RegistryClientOptions {
  insecureRegistries?: readonly string[];
  credentials?: { username: string; password: string };
  signal?: AbortSignal;
}

interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

export function parseChallenge(header: string): Challenge | undefined {
  const m = /^(\w+)\s*(.*)$/.exec(header.trim());
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2]!.matchAll(/(\w+)="([^"]*)"/g)) params[p[1]!.toLowerCase()] = p[2]!;
  return { scheme: m[1]!.toLowerCase(), params };
}

export class RegistryClient {
  private readonly base: string;
  private token: string | undefined;
  private basic = false;

  constructor(readonly registry: string, readonly repository: string, private readonly opts: RegistryClientOptions = {}) {
    const plain = isLoopbackRegistry(registry) || (opts.insecureRegistries ?? []).includes(registry);
    const host = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
    this.base = `${plain ? 'http' : 'https'}://${host}/v2/${repository}`;
  }

  private authHeader(): Record<string, string> {
    if (this.token) return { authorization: `Bearer ${this.token}` };
    if (this.basic && this.opts.credentials) {
      const { username, password } = this.opts.credentials;
      return { authorization: `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}` };
    }
    return {};
  }

  private async authenticate(res: Response): Promise<boolean> {
    const ch = parseChallenge(res.headers.get('www-authenticate') ?? '');
    if (!ch) return false;
    if (ch.scheme === 'basic') {
      if (!this.opts.credentials || this.basic) return false;
      this.basic = true;
      return true;
    }
    if (ch.scheme === 'bearer' && ch.params.realm && !this.token) {
      const url = new URL(ch.params.realm);
      if (ch.params.service) url.searchParams.set('service', ch.params.service);
      url.searchParams.set('scope', ch.params.scope ?? `repository:${this.repository}:pull`);
      const headers: Record<string, string> = {};
      if (this.opts.credentials) {
        const { username, password } = this.opts.credentials;
        headers.authorization = `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
      }
      const tr = await this.fetchRaw(url.toString(), { headers });
      if (!tr.ok) throw new Unauthenticated(`registry ${this.registry}: token endpoint answered ${tr.status}`);
      const body = (await tr.json()) as { token?: string; access_token?: string };
      this.token = body.token ?? body.access_token;
      return this.token !== undefined;
    }
    return false;
  }

  private async fetchRaw(url: string, init: RequestInit): Promise<Response> {
    try {
      return await fetch(url, { ...init, redirect: 'follow', ...(this.opts.signal ? { signal: this.opts.signal } : {}) });
    } catch (e) {
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new Unavailable(`cannot reach registry ${this.registry}: ${cause?.code ?? cause?.message ?? String(e)}`, undefined, { cause: e });
    }
  }

  /** GET/HEAD under /v2/<repo>/, answering auth challenges once. */
  async request(method: 'GET' | 'HEAD', path: string, headers: Record<string, string> = {}, what = path): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      const res = await this.fetchRaw(`${this.base}/${path}`, { method, headers: { ...headers, ...this.authHeader() } });
      if (res.status === 401 && attempt === 0 && (await this.authenticate(res))) {
        await res.body?.cancel();
        continue;
      }
      if (res.ok) return res;
      const text = method === 'GET' ? await res.text().catch(() => '') : '';
      const ref = `${this.registry}/${this.repository} ${what}`;
      if (res.status === 401 || res.status === 403) throw new Unauthenticated(`registry refused access to ${ref} (${res.status})${text ? `: ${text.slice(0, 200)}` : ''}`);
      if (res.status === 404) throw new NotFound(`${ref}: not found in registry${/MANIFEST_UNKNOWN|NAME_UNKNOWN/.test(text) ? ` (${/NAME_UNKNOWN/.test(text) ? 'unknown repository' : 'manifest unknown'})` : ''}`);
      if (res.status >= 500) throw new Unavailable(`registry ${this.registry} answered ${res.status} for ${ref}`);
      throw new NimbusError('InvalidArgument', `registry answered ${res.status} for ${ref}: ${text.slice(0, 200)}`);
    }
  }

  async getManifest(reference: string, accept: string, maxBytes: number): Promise<{ body: Buffer; mediaType: string; digest?: string }> {
    const res = await this.request('GET', `manifests/${reference}`, { accept }, reference);
    const len = Number(res.headers.get('content-length') ?? 0);
    if (len > maxBytes) throw new InvalidArgument(`manifest ${reference} is ${len} bytes; the limit is ${maxBytes}`);
    const body = Buffer.from(await res.arrayBuffer());
    if (body.length > maxBytes) throw new InvalidArgument(`manifest ${reference} is larger than ${maxBytes} bytes`);
    const mediaType = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
    const digest = res.headers.get('docker-content-digest') ?? undefined;
    return { body, mediaType, ...(digest ? { digest } : {}) };
  }

  async getBlob(digest: string): Promise<Response> {
    return this.request('GET', `blobs/${digest}`, {}, digest);
  }
}
