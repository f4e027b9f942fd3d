/**
 * The embedded DNS server of container networks: one UDP socket per network,
 * bound to the network's gateway address, answering container names from the
 * network's zone and forwarding everything else to the host's upstreams.
 *
 * UDP only: there is no TCP listener, so a client that retries over TCP after
 * a truncated (TC) answer gets nothing more than the truncated answer.
 */
import dgram from 'node:dgram';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';
import { InvalidArgument, Unavailable } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import {
  DnsClass,
  DnsFormatError,
  DnsType,
  Opcode,
  Rcode,
  buildError,
  buildResponse,
  ipToBytes,
  parseMessage,
  parseQuery,
  type DnsAnswer,
  type DnsQuery,
  type DnsQuestion,
} from './dns-message.js';

const log = logger('agent.network.dns');

export interface DnsZone {
  /** Addresses for a name asked on this network (name lowercased, without trailing dot; also called with the search-domain-stripped form, see below); undefined = not ours. */
  resolve(name: string): string[] | undefined;
  /** Reverse lookup for an IPv4 address of this network (for PTR queries of in-addr.arpa); undefined = not ours. */
  reverse?(ip: string): string | undefined;
}

export interface ListenOptions {
  /** The gateway IP to bind. */
  address: string;
  /** Default 53; 0 binds an ephemeral port (see the address listen() resolves to). */
  port?: number;
  zone: DnsZone;
  /** Upstream resolvers for names that are not ours, as "ip", "ip:port" or "[ipv6]:port"; empty/absent = answer NXDOMAIN (internal networks). */
  upstreams?: string[];
  /** Optional domain (e.g. "nimbus") that is stripped before resolve(): "web.nimbus" → "web". Unknown names under it are NXDOMAIN, never forwarded. */
  domain?: string;
  /**
   * TTL of our answers in seconds. Default 10: containers come and go and
   * change addresses, so caching clients (nginx, the JVM) must re-ask soon,
   * while a burst of lookups from one process still hits its cache.
   */
  ttl?: number;
  /** How long to wait for each upstream before trying the next. Default 2000 ms. */
  forwardTimeoutMs?: number;
}

export interface EmbeddedDnsOptions {
  /** Forwarded queries awaiting an upstream, across all networks; more are dropped (the client retries). Default 256. */
  maxInflightForwards?: number;
}

export const DEFAULT_TTL_SECONDS = 10;
export const DEFAULT_FORWARD_TIMEOUT_MS = 2000;
export const DEFAULT_MAX_INFLIGHT_FORWARDS = 256;

interface Upstream {
  host: string;
  port: number;
  bytes: Buffer;
  family: 4 | 6;
}

interface Config {
  zone: DnsZone;
  upstreams: Upstream[];
  domain: string | undefined;
  ttl: number;
  forwardTimeoutMs: number;
}

interface Server {
  key: string;
  address: string;
  port: number;
  bytes: Buffer;
  socket: dgram.Socket;
  config: Config;
  closed: boolean;
}

interface Forward {
  server: Server;
  socket: dgram.Socket | undefined;
  timer: NodeJS.Timeout | undefined;
  finished: boolean;
}

interface Client {
  address: string;
  port: number;
}

export class EmbeddedDns {
  private readonly servers = new Map<string, Server>();
  private readonly binding = new Map<string, Promise<Server | undefined>>();
  private readonly forwards = new Map<string, Forward>();
  private readonly maxInflight: number;
  private readonly warned = new Map<string, { at: number; suppressed: number }>();

  constructor(opts: EmbeddedDnsOptions = {}) {
    this.maxInflight = opts.maxInflightForwards ?? DEFAULT_MAX_INFLIGHT_FORWARDS;
  }

  /**
   * Serves `opts.zone` on address:port. Listening again on the same
   * address:port swaps zone, upstreams, domain and TTL without rebinding.
   * Resolves to the bound endpoint (useful with port 0).
   */
  async listen(opts: ListenOptions): Promise<{ address: string; port: number }> {
    const config = toConfig(opts);
    const bytes = ipToBytes(opts.address);
    if (!bytes || isIP(opts.address) === 0) throw new InvalidArgument(`embedded DNS address ${JSON.stringify(opts.address)} is not an IP address`);
    const port = opts.port ?? 53;
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgument(`embedded DNS port ${port} is out of range`);

    if (port !== 0) {
      const key = keyOf(bytes, port);
      // No await unless a bind is under way, so two concurrent first calls cannot both bind.
      let existing = this.servers.get(key);
      const underWay = this.binding.get(key);
      if (!existing && underWay) existing = await underWay;
      if (existing && !existing.closed) {
        existing.config = config;
        return { address: existing.address, port: existing.port };
      }
      const pending = this.bind(opts.address, bytes, port, config);
      this.binding.set(key, pending.catch(() => undefined));
      try {
        const server = await pending;
        return { address: server.address, port: server.port };
      } finally {
        this.binding.delete(key);
      }
    }
    const server = await this.bind(opts.address, bytes, 0, config);
    return { address: server.address, port: server.port };
  }

  /** Stops serving address:port (default 53); cancels its forwarded queries. Idempotent. */
  async close(address: string, port = 53): Promise<void> {
    const bytes = ipToBytes(address);
    if (!bytes) return;
    const key = keyOf(bytes, port);
    await this.binding.get(key);
    const server = this.servers.get(key);
    if (!server) return;
    await this.shut(server);
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.binding.values()]);
    await Promise.all([...this.servers.values()].map((s) => this.shut(s)));
  }

  listening(): Array<{ address: string; port: number }> {
    return [...this.servers.values()].map((s) => ({ address: s.address, port: s.port }));
  }

  private bind(address: string, bytes: Buffer, port: number, config: Config): Promise<Server> {
    const socket = dgram.createSocket({ type: bytes.length === 4 ? 'udp4' : 'udp6', reuseAddr: false });
    return new Promise<Server>((resolve, reject) => {
      const onBindError = (err: Error) => {
        try {
          socket.close();
        } catch {
          // never bound
        }
        const errno = (err as NodeJS.ErrnoException).code;
        reject(new Unavailable(`embedded DNS cannot bind ${address}:${port}: ${err.message}`, { address, port, errno }, { cause: err }));
      };
      socket.once('error', onBindError);
      socket.bind({ address, port, exclusive: true }, () => {
        socket.off('error', onBindError);
        const bound = socket.address();
        const server: Server = { key: keyOf(bytes, bound.port), address: bound.address, port: bound.port, bytes, socket, config, closed: false };
        // After bind, errors are per-packet trouble (e.g. ICMP unreachable): log and keep serving.
        socket.on('error', (err) => this.warnThrottled(`socket:${server.key}`, 'embedded DNS socket error', { address: server.address, port: server.port, err }));
        socket.on('message', (msg, rinfo) => this.onMessage(server, msg, rinfo));
        this.servers.set(server.key, server);
        log.info('embedded DNS listening', { address: server.address, port: server.port });
        resolve(server);
      });
    });
  }

  private async shut(server: Server): Promise<void> {
    if (server.closed) return;
    server.closed = true;
    this.servers.delete(server.key);
    for (const [key, fwd] of this.forwards) if (fwd.server === server) this.endForward(key, fwd);
    await new Promise<void>((resolve) => {
      try {
        server.socket.close(() => resolve());
      } catch {
        resolve(); // already closed
      }
    });
    log.info('embedded DNS closed', { address: server.address, port: server.port });
  }

  private onMessage(server: Server, msg: Buffer, client: dgram.RemoteInfo): void {
    try {
      this.handle(server, msg, client);
    } catch (err) {
      // A bug here must not take nimbusd down with it; the client times out and retries.
      this.warnThrottled(`handle:${server.key}`, 'embedded DNS failed to answer a query', { address: server.address, err });
    }
  }

  private handle(server: Server, msg: Buffer, client: Client): void {
    let query: DnsQuery;
    try {
      query = parseQuery(msg);
    } catch (err) {
      if (!(err instanceof DnsFormatError)) throw err;
      log.debug('malformed DNS message', { from: client.address, reason: err.reason });
      if (!err.answerable) return;
      const reply = buildError(msg, Rcode.FORMERR);
      if (reply) this.reply(server, reply, client);
      return;
    }
    if (query.opcode !== Opcode.QUERY) return this.reply(server, buildError(query, Rcode.NOTIMP), client);
    const question = query.questions[0];
    if (!question) return; // parseQuery guarantees one; keeps the type checker honest
    const { config } = server;

    let local: Buffer | undefined;
    try {
      local = this.answerLocally(config, query, question);
    } catch (err) {
      this.warnThrottled(`zone:${server.key}`, 'embedded DNS zone lookup failed', { address: server.address, err });
      return this.reply(server, buildError(query, Rcode.SERVFAIL), client);
    }
    if (local) return this.reply(server, local, client);
    if (config.upstreams.length === 0) return this.reply(server, buildError(query, Rcode.NXDOMAIN), client);
    this.forward(server, query, msg, client);
  }

  /** Our answer, or undefined when the name is not ours and should go upstream. */
  private answerLocally(config: Config, query: DnsQuery, q: DnsQuestion): Buffer | undefined {
    if (q.class !== DnsClass.IN && q.class !== DnsClass.ANY) return undefined;
    const ours = { authoritative: true, recursionAvailable: config.upstreams.length > 0 };
    const answer = (answers: DnsAnswer[]) => buildResponse(query, { rcode: Rcode.NOERROR, answers, ...ours });

    if (q.type === DnsType.PTR && q.name.endsWith('.in-addr.arpa')) {
      const ip = reverseNameToIPv4(q.name);
      const target = ip === undefined ? undefined : config.zone.reverse?.(ip);
      return target === undefined ? undefined : answer([{ name: q.askedName ?? q.name, type: DnsType.PTR, ttl: config.ttl, data: target }]);
    }

    const { domain } = config;
    const inDomain = domain !== undefined && q.name.endsWith('.' + domain);
    let addresses = config.zone.resolve(q.name);
    if (addresses === undefined && inDomain) addresses = config.zone.resolve(q.name.slice(0, -(domain.length + 1)));
    if (addresses === undefined) {
      // Our own domain is ours alone: unknown names in it must not leak upstream.
      // The apex gets NODATA, not NXDOMAIN, which would deny every name below it (RFC 8020).
      if (q.name === domain) return answer([]);
      if (inDomain) return buildResponse(query, { rcode: Rcode.NXDOMAIN, answers: [], ...ours });
      return undefined;
    }

    const owner = q.askedName ?? q.name;
    const answers: DnsAnswer[] = [];
    const wantA = q.type === DnsType.A || q.type === DnsType.ANY;
    const wantAAAA = q.type === DnsType.AAAA || q.type === DnsType.ANY;
    for (const ip of addresses) {
      // Today zones hand out IPv4 only, so AAAA ends up NOERROR with no answers (NODATA).
      const family = ipToBytes(ip)?.length;
      if (family === 4 && wantA) answers.push({ name: owner, type: DnsType.A, ttl: config.ttl, data: ip });
      else if (family === 16 && wantAAAA) answers.push({ name: owner, type: DnsType.AAAA, ttl: config.ttl, data: ip });
    }
    return answer(answers);
  }

  /**
   * Sends the client's bytes with a fresh random id from a fresh socket (random
   * source port) to each upstream in turn, and relays the first fitting reply
   * with the client's id restored. SERVFAIL once every upstream failed.
   */
  private forward(server: Server, query: DnsQuery, raw: Buffer, client: Client): void {
    const question = query.questions[0];
    if (!question) return;
    const key = `${server.key}|${client.address}|${client.port}|${query.id}`;
    if (this.forwards.has(key)) return; // a retransmission of a query already under way
    if (this.forwards.size >= this.maxInflight) {
      this.warnThrottled('forward-limit', 'embedded DNS forward limit reached, dropping queries', { limit: this.maxInflight });
      return;
    }
    // Never forward to ourselves: an upstream list copied from the host could name a gateway.
    const upstreams = server.config.upstreams.filter((u) => !this.isOwnEndpoint(u));
    const timeoutMs = server.config.forwardTimeoutMs;
    const id = randomInt(0, 0x10000);
    const packet = Buffer.from(raw);
    packet.writeUInt16BE(id, 0);
    const fwd: Forward = { server, socket: undefined, timer: undefined, finished: false };
    this.forwards.set(key, fwd);

    const finish = (reply: Buffer) => {
      if (fwd.finished) return;
      this.endForward(key, fwd);
      this.reply(server, reply, client);
    };
    const attempt = (index: number): void => {
      if (fwd.finished) return;
      stopAttempt(fwd);
      const upstream = upstreams[index];
      if (!upstream) {
        log.debug('all upstreams failed', { network: server.address, upstreams: upstreams.length });
        return finish(buildError(query, Rcode.SERVFAIL));
      }
      let moved = false;
      const next = () => {
        if (moved) return;
        moved = true;
        attempt(index + 1);
      };
      const socket = dgram.createSocket(upstream.family === 4 ? 'udp4' : 'udp6');
      fwd.socket = socket;
      socket.on('error', (err) => {
        log.debug('upstream socket error', { upstream: upstream.host, err });
        next();
      });
      socket.on('message', (msg, from) => {
        if (from.port !== upstream.port || !ipToBytes(from.address)?.equals(upstream.bytes)) return;
        const verdict = judgeReply(msg, id, question);
        if (verdict === 'ignore') return;
        if (verdict === 'next') return next();
        const relayed = Buffer.from(msg);
        relayed.writeUInt16BE(query.id, 0);
        finish(relayed);
      });
      fwd.timer = setTimeout(next, timeoutMs);
      socket.send(packet, upstream.port, upstream.host, (err) => {
        if (!err) return;
        log.debug('upstream send failed', { upstream: upstream.host, err });
        next();
      });
    };
    attempt(0);
  }

  private endForward(key: string, fwd: Forward): void {
    fwd.finished = true;
    stopAttempt(fwd);
    this.forwards.delete(key);
  }

  private isOwnEndpoint(u: Upstream): boolean {
    return this.servers.has(keyOf(u.bytes, u.port));
  }

  private reply(server: Server, buf: Buffer, client: Client): void {
    if (server.closed) return;
    try {
      server.socket.send(buf, client.port, client.address, (err) => {
        if (err) log.debug('DNS reply not sent', { to: client.address, err });
      });
    } catch (err) {
      log.debug('DNS reply not sent', { to: client.address, err });
    }
  }

  /** One warning per kind per 10 s, so a misbehaving container cannot flood the log. */
  private warnThrottled(kind: string, msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    const last = this.warned.get(kind);
    if (last && now - last.at < 10_000) {
      last.suppressed++;
      return;
    }
    this.warned.set(kind, { at: now, suppressed: 0 });
    log.warn(msg, last?.suppressed ? { ...fields, suppressed: last.suppressed } : fields);
  }
}

function stopAttempt(fwd: Forward): void {
  if (fwd.timer) clearTimeout(fwd.timer);
  fwd.timer = undefined;
  const socket = fwd.socket;
  fwd.socket = undefined;
  if (!socket) return;
  socket.removeAllListeners('message');
  try {
    socket.close();
  } catch {
    // already closed after an error
  }
}

/** Accept a reply only if it answers exactly what we sent; SERVFAIL/REFUSED move on to the next upstream. */
function judgeReply(msg: Buffer, id: number, question: DnsQuestion): 'ignore' | 'next' | 'accept' {
  let reply;
  try {
    reply = parseMessage(msg, { answers: false });
  } catch {
    return 'ignore';
  }
  const q = reply.questions[0];
  if (!reply.response || reply.id !== id || reply.questions.length !== 1 || !q) return 'ignore';
  if (q.name !== question.name || q.type !== question.type || q.class !== question.class) return 'ignore';
  return reply.rcode === Rcode.SERVFAIL || reply.rcode === Rcode.REFUSED ? 'next' : 'accept';
}

function keyOf(bytes: Buffer, port: number): string {
  return `${bytes.toString('hex')}|${port}`;
}

/** "4.3.2.1.in-addr.arpa" → "1.2.3.4"; anything else (partial names, leading zeros) → undefined. */
function reverseNameToIPv4(name: string): string | undefined {
  const labels = name.slice(0, -'.in-addr.arpa'.length).split('.');
  if (labels.length !== 4) return undefined;
  const ip = labels.reverse().join('.');
  return ipToBytes(ip)?.length === 4 ? ip : undefined;
}

function toConfig(opts: ListenOptions): Config {
  const ttl = opts.ttl ?? DEFAULT_TTL_SECONDS;
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 0x7fffffff) throw new InvalidArgument(`embedded DNS ttl ${ttl} is not a whole number of seconds`);
  const forwardTimeoutMs = opts.forwardTimeoutMs ?? DEFAULT_FORWARD_TIMEOUT_MS;
  if (!Number.isFinite(forwardTimeoutMs) || forwardTimeoutMs <= 0) throw new InvalidArgument(`embedded DNS forwardTimeoutMs ${forwardTimeoutMs} must be positive`);
  const domain = opts.domain?.toLowerCase().replace(/^\.+|\.+$/g, '') || undefined;
  return { zone: opts.zone, upstreams: (opts.upstreams ?? []).map(parseUpstream), domain, ttl, forwardTimeoutMs };
}

/** "ip", "ip:port", "[ipv6]:port" or a bare IPv6 address. */
function parseUpstream(text: string): Upstream {
  let host = text;
  let port = 53;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const hostPort = /^([^:]+):(\d+)$/.exec(text);
  if (bracketed) {
    host = bracketed[1] ?? '';
    if (bracketed[2] !== undefined) port = Number(bracketed[2]);
  } else if (hostPort) {
    host = hostPort[1] ?? '';
    port = Number(hostPort[2]);
  }
  const family = isIP(host);
  const bytes = ipToBytes(host);
  if ((family !== 4 && family !== 6) || !bytes || port < 1 || port > 65535) {
    throw new InvalidArgument(`embedded DNS upstream ${JSON.stringify(text)} is not "ip" or "ip:port"`);
  }
  return { host, port, bytes, family };
}
