/**
 * The agents this control plane drives: the embedded one (in-process, always there) and the
 * ones registered from other processes or hosts (`nimbusd agent`), reached over the agent
 * protocol (src/agent/remote/). Registrations are stored, so a restarted control plane
 * reconnects to them; an agent registers again on every start (its address may change).
 *
 * TCP agents are reached over mutual TLS with certificates from this control plane's CA
 * (agent-ca.ts), which an agent gets once by redeeming a one-time join token; unix-socket
 * agents over plain HTTP with their bearer token.
 */
import { randomBytes } from 'node:crypto';
import { Conflict, InvalidArgument, NotFound, Unauthenticated, Unavailable, Unreachable, toNimbusError } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { Agent, AgentInfo } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { AgentRecord } from '../../store/records.js';
import { CONTROL_PLANE_CERT_NAME, SPOKEN_PROTOCOL, negotiateProtocol, type ProtocolRange } from '../../agent/remote/agent-protocol.js';
import { formatJoinToken, joinSecretHash, parseJoinToken } from '../../agent/remote/join-token.js';
import { RemoteAgent } from '../../agent/remote/remote-agent.js';
import type { AgentCa } from './agent-ca.js';
import type { HostCandidate } from '../scheduler/types.js';

/** This host's CPU architecture in OCI spelling. */
function hostArchitecture(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch;
}

const log = logger('agents');

/** An agent as `GET /agents` shows it (never its token). */
export interface AgentSummary {
  name: string;
  /** The embedded agent, in the control plane's own process. */
  local: boolean;
  url?: string;
  registeredAt?: string;
  state: 'up' | 'down';
  /** Why it is down. */
  reason?: string;
  hostname?: string;
  cpus?: number;
  memoryBytes?: number;
  accelerator?: string;
  vms: number;
}

/** How a registered agent is reached (a RemoteAgent in the daemon; tests may pass their own). */
export type AgentConnector = (rec: AgentRecord) => Agent & { close(): Promise<void> };

/** The daemon's connector: RemoteAgents, over mutual TLS with the CA's client certificate for https:// agents. */
export function remoteAgentConnector(ca: AgentCa | undefined): AgentConnector {
  return (rec) => new RemoteAgent({ name: rec.name, url: rec.url, token: rec.token, ...(ca ? { tls: ca.clientTls } : {}) });
}

/** Join tokens live this long unless asked otherwise, and never longer than a day. */
export const DEFAULT_JOIN_TOKEN_TTL_MS = 10 * 60_000;
export const MAX_JOIN_TOKEN_TTL_MS = 24 * 3600_000;

export interface AgentRegistration {
  name: string;
  url: string;
  token: string;
  /** The versions the agent speaks; absent: an agent from before versions (protocol 1). */
  protocol?: ProtocolRange;
}

/** Every method of an agent that could not even be connected to fails with the reason (so it is listed down, and can be removed). */
function unconnectable(reason: string): Agent & { close(): Promise<void> } {
  const quiet = new Set(['onVmExit', 'onContainerExit', 'setAddressProvider', 'close', 'claimWarmContainer']);
  return new Proxy({} as Agent & { close(): Promise<void> }, {
    get: (_t, prop) => {
      if (typeof prop !== 'string' || prop === 'then') return undefined;
      if (quiet.has(prop)) return async () => undefined;
      return async () => {
        throw new Unavailable(reason);
      };
    },
  });
}

/** A refusal with both sides' versions; no call is made to an agent that speaks none of ours. */
function checkProtocol(name: string, theirs: ProtocolRange | undefined): void {
  if (!theirs) {
    throw new Conflict(`agent ${name} sent no protocol versions, so it speaks agent protocol 1; this control plane speaks ${SPOKEN_PROTOCOL.min}..${SPOKEN_PROTOCOL.max}: upgrade the agent`, {
      agent: name,
      ours: SPOKEN_PROTOCOL,
    });
  }
  negotiateProtocol(SPOKEN_PROTOCOL, theirs, { ours: 'this control plane', theirs: `agent ${name}` });
}

export class AgentDirectory {
  private readonly remotes = new Map<string, Agent>();
  private readonly exitListeners: Array<(agent: string, id: string) => void> = [];

  private constructor(
    private readonly store: Store,
    readonly local: Agent,
    readonly localName: string,
    private readonly connect: AgentConnector,
    private readonly ca: AgentCa | undefined,
  ) {}

  /** The directory with the stored registrations connected again. Without a CA, only unix-socket agents can be registered. */
  static async open(store: Store, local: Agent, localName: string, connect: AgentConnector, ca?: AgentCa): Promise<AgentDirectory> {
    const d = new AgentDirectory(store, local, localName, connect, ca);
    local.onVmExit((id) => d.emitExit(localName, id));
    for (const rec of await store.agents.list()) d.attach(rec);
    return d;
  }

  private emitExit(agent: string, id: string): void {
    for (const l of this.exitListeners) l(agent, id);
  }

  private attach(rec: AgentRecord): Agent {
    let a: Agent & { close(): Promise<void> };
    try {
      a = this.connect(rec);
    } catch (e) {
      // a registration from before TLS (http://): kept, listed down with the reason, removable
      const reason = `agent ${rec.name} at ${rec.url}: ${toNimbusError(e).message}`;
      log.warn('a stored agent cannot be connected to', { agent: rec.name, url: rec.url, error: reason });
      a = unconnectable(reason);
    }
    a.onVmExit((id) => this.emitExit(rec.name, id));
    this.remotes.set(rec.name, a);
    return a;
  }

  /** A VM exit on any agent (for remote ones a hint: re-check the state). */
  onVmExit(listener: (agent: string, id: string) => void): void {
    this.exitListeners.push(listener);
  }

  names(): string[] {
    return [this.localName, ...this.remotes.keys()];
  }

  has(name: string): boolean {
    return name === this.localName || this.remotes.has(name);
  }

  /** NotFound for a name no agent has. */
  get(name: string): Agent {
    if (name === this.localName) return this.local;
    const a = this.remotes.get(name);
    if (!a) throw new NotFound(`no such agent: ${name}`, { agent: name });
    return a;
  }

  /**
   * An agent (re-)registering: it must answer under the name it gives, with the token it
   * gave, before it is stored; a previous registration of the name is replaced.
   */
  async register(req: AgentRegistration): Promise<AgentRecord> {
    this.checkName(req.name);
    if (/^http:\/\//.test(req.url)) throw new InvalidArgument(`agent url "${req.url}": TCP agents are reached over TLS only (https://, a certificate from nimbusd agent --join-token); plain HTTP is for unix sockets`);
    if (!/^(https:\/\/[^/\s]+\/?|unix:\/\S+)$/.test(req.url)) throw new InvalidArgument(`agent url must be https://HOST:PORT or unix:/PATH, got "${req.url}"`);
    if (req.url.startsWith('https:') && !this.ca) throw new Conflict('this control plane has no agent CA, so it cannot reach TCP agents');
    if (req.token.length < 16) throw new InvalidArgument('agent token too short (at least 16 characters)');
    checkProtocol(req.name, req.protocol);
    const rec: AgentRecord = { name: req.name, url: req.url, token: req.token, registeredAt: new Date().toISOString() };
    let probe: Agent & { close(): Promise<void> };
    try {
      probe = this.connect(rec);
    } catch (e) {
      throw new InvalidArgument(`agent ${req.name} at ${req.url}: ${toNimbusError(e).message}`, { agent: req.name });
    }
    let info: AgentInfo;
    try {
      info = await probe.info();
    } catch (e) {
      await probe.close();
      const err = toNimbusError(e);
      // the agent speaks no version of ours: its own words, naming both
      if (err.code === 'Conflict') throw err;
      // 502, not 503: the control plane is up; what the request named is not
      throw new Unreachable(`agent ${req.name} at ${req.url} does not answer: ${err.message}`, { agent: req.name });
    }
    if (info.name !== req.name) {
      await probe.close();
      throw new InvalidArgument(`the agent at ${req.url} calls itself "${info.name}", not "${req.name}"`);
    }
    try {
      await this.store.agents.put(rec);
    } catch (e) {
      await probe.close().catch(() => undefined);
      throw e;
    }
    // read after the write: a registration of the same name that finished meanwhile is the one replaced
    const old = this.remotes.get(req.name);
    probe.onVmExit((id) => this.emitExit(rec.name, id));
    this.remotes.set(rec.name, probe);
    await old?.close().catch(() => undefined);
    log.info('agent registered', { agent: rec.name, url: rec.url, hostname: info.hostname });
    // exits it saw while it was away: every VM it has is re-checked
    for (const id of await probe.listVms().catch(() => [] as string[])) this.emitExit(rec.name, id);
    return rec;
  }

  private checkName(name: string): void {
    if (!isValidName(name)) throw new InvalidArgument(`invalid agent name "${name}"`);
    if (name === this.localName) throw new Conflict(`"${name}" is the embedded agent's name`);
    if (name === CONTROL_PLANE_CERT_NAME) throw new InvalidArgument(`"${name}" is the control plane's own certificate name`);
  }

  private requireCa(): AgentCa {
    if (!this.ca) throw new Conflict('this control plane has no agent CA (TCP agents and join tokens need one)');
    return this.ca;
  }

  /** A one-time join token (shown once: only its secret's hash is stored). */
  async issueJoinToken(o: { ttlMs?: number } = {}, now = Date.now()): Promise<{ token: string; id: string; expiresAt: string }> {
    const ca = this.requireCa();
    const ttl = o.ttlMs ?? DEFAULT_JOIN_TOKEN_TTL_MS;
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_JOIN_TOKEN_TTL_MS) throw new InvalidArgument(`a join token lives 1 ms to ${MAX_JOIN_TOKEN_TTL_MS / 3600_000} h`);
    const id = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    await this.store.joinTokens.deleteStale(now - MAX_JOIN_TOKEN_TTL_MS);
    await this.store.joinTokens.insert({ id, hash: joinSecretHash(secret), createdAt: new Date(now).toISOString(), expiresAt: now + ttl, usedAt: null, usedBy: null });
    log.info('agent join token issued', { id, expiresAt: new Date(now + ttl).toISOString() });
    return { token: formatJoinToken({ id, secret, caFingerprint: ca.fingerprint }), id, expiresAt: new Date(now + ttl).toISOString() };
  }

  /**
   * An agent redeeming a join token: its CSR signed for its name (a server certificate from
   * the CA), with the CA's certificate. The token is burned; an unknown, used, expired or
   * forged one is refused with one message for all (which it was is not told).
   */
  async join(req: { joinToken: string; name: string; csr: string; protocol?: ProtocolRange }, now = Date.now()): Promise<{ certificate: string; caCertificate: string }> {
    const ca = this.requireCa();
    this.checkName(req.name);
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
    const stored = await this.store.joinTokens.get(token.id);
    if (!stored || stored.hash !== hash || stored.usedAt !== null || stored.expiresAt <= now) throw refused();
    // signed before the burn, so a malformed CSR does not use the token up
    const certificate = await ca.signAgent(req.csr, req.name);
    if (!(await this.store.joinTokens.redeem(token.id, hash, req.name, now))) throw refused();
    log.info('agent joined', { agent: req.name, tokenId: token.id });
    return { certificate, caCertificate: ca.certificate };
  }

  /** The caller checks that no instance lives on it. */
  async remove(name: string): Promise<void> {
    if (name === this.localName) throw new Conflict('the embedded agent cannot be removed');
    const a = this.remotes.get(name);
    if (!a) throw new NotFound(`no such agent: ${name}`, { agent: name });
    // the record first: if its removal fails, the agent stays in the directory as stored
    await this.store.agents.delete(name);
    this.remotes.delete(name);
    await a.close().catch(() => undefined);
    log.info('agent removed', { agent: name });
  }

  /** Every agent with what it says of itself now (a short timeout each: a down agent does not hold the listing up). */
  async list(vmsOn: (agent: string) => number | Promise<number>): Promise<AgentSummary[]> {
    const recs = new Map((await this.store.agents.list()).map((r) => [r.name, r]));
    return Promise.all(this.names().map(async (name): Promise<AgentSummary> => {
      const rec = recs.get(name);
      const base = {
        name, local: name === this.localName, vms: await vmsOn(name),
        ...(rec ? { url: rec.url, registeredAt: rec.registeredAt } : {}),
      };
      try {
        const info = await withTimeout(this.get(name).info(), 3000, `agent ${name} did not answer within 3 s`);
        return {
          ...base, state: 'up', hostname: info.hostname, cpus: info.cpus, memoryBytes: info.memoryBytes,
          ...(info.vm ? { accelerator: info.vm.accelerator } : {}),
        };
      } catch (e) {
        return { ...base, state: 'down', reason: toNimbusError(e).message };
      }
    }));
  }

  /** The hosts as the scheduler sees them (HostSource). FIRST CUT: the hosts change gives it zone, labels, disabled and cached facts. */
  async candidates(): Promise<HostCandidate[]> {
    return Promise.all(this.names().map(async (name): Promise<HostCandidate> => {
      const base = { name, disabled: false, zone: 'default', labels: {}, cpus: 0, memoryBytes: 0, diskBytes: 0, runtimes: [], architecture: hostArchitecture() };
      try {
        const info = await withTimeout(this.get(name).info(), 3000, `agent ${name} did not answer within 3 s`);
        return {
          ...base, state: 'up', cpus: info.cpus, memoryBytes: info.memoryBytes,
          runtimes: info.runtimes.filter((r) => r.usable).map((r) => r.name),
          ...(info.vm ? { accelerator: info.vm.accelerator } : {}),
        };
      } catch {
        return { ...base, state: 'down' };
      }
    }));
  }

  /** The remote connections (the embedded agent is closed by the daemon). */
  async close(): Promise<void> {
    await Promise.all([...this.remotes.values()].map((a) => a.close().catch(() => undefined)));
    this.remotes.clear();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Unavailable(message)), ms);
      timer.unref();
    }),
  ]);
}
