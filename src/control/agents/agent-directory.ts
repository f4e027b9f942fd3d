/**
 * The agents this control plane drives: the embedded one (in-process, always there) and the
 * ones registered from other processes or hosts (`nimbusd agent`), reached over the agent
 * protocol (src/agent/remote/). Registrations are stored, so a restarted control plane
 * reconnects to them; an agent registers again on every start (its address may change).
 *
 * TCP agents are reached over mutual TLS with certificates from this control plane's CA
 * (agent-ca.ts), which an agent gets once by redeeming a one-time join token; unix-socket
 * agents over plain HTTP with their bearer token.
 *
 * Every agent is a host (docs/architecture.md, "Hosts"): an administrator's settings (zone,
 * labels, disabled, allocation ratios) are stored on its row (the embedded agent has one too,
 * url "embedded:"), and a background refresh asks each host for its facts every 10 s, keeps
 * its state (up, down, unknown) and stores the facts, so placement answers from memory.
 */
import { randomBytes } from 'node:crypto';
import { Conflict, InvalidArgument, NotFound, Unauthenticated, Unavailable, Unreachable, toNimbusError } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { Agent, AgentInfo, LinkWatch } from '../../agent/agent.js';
import type { AgentRegistrationRecord, Store } from '../../store/store.js';
import type { AgentRecord, AllocationRatios, HostFacts } from '../../store/records.js';
import { EMBEDDED_AGENT_URL } from '../../store/repos/agents.js';
import { CONTROL_PLANE_CERT_NAME, SPOKEN_PROTOCOL, negotiateProtocol, type ProtocolRange } from '../../agent/remote/agent-protocol.js';
import { formatJoinToken, joinSecretHash, parseJoinToken } from '../../agent/remote/join-token.js';
import { RemoteAgent } from '../../agent/remote/remote-agent.js';
import type { AgentCa } from './agent-ca.js';
import type { HostCandidate, HostSource } from '../scheduler/types.js';

/** This host's CPU architecture in OCI spelling. */
function hostArchitecture(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch;
}

const log = logger('agents');

/** How this process last found a host: its state, why it is down, since when, answers missed in a row. */
interface HostReach { state: 'up' | 'down'; reason?: string; at: number; misses?: number }

/**
 * Over-commit allowed when an administrator set none (Nova's initial_*_allocation_ratio since
 * Stein): CPU is shared by time (containers and vCPUs mostly idle), memory and disk are not
 * compressible, so over-committing them trades an OOM kill or ENOSPC for density.
 */
export const DEFAULT_ALLOCATION_RATIOS: Readonly<AllocationRatios> = Object.freeze({ cpu: 4, memory: 1, disk: 1 });
/** Ratios an administrator may set: above 0, at most this. */
export const MAX_ALLOCATION_RATIO = 1000;

/** How often every host is asked for its facts, and how long each may take to answer. */
export const HOST_REFRESH_INTERVAL_MS = 10_000;
export const HOST_ANSWER_TIMEOUT_MS = 3_000;
/** How long candidates() may answer from its last list when nothing changed meanwhile. */
const CANDIDATES_MAX_AGE_MS = 250;
/** Answers missed in a row (timeouts, not refusals) before a host that was up is down. */
export const TIMEOUTS_BEFORE_DOWN = 2;
/** A host not heard from since this process started is unknown unless its stored facts are younger than this. */
export const HOST_UNKNOWN_AFTER_MS = 60_000;
/** Unchanged facts are stored again at most this often (their time tells other replicas the host answers). */
const FACTS_STORE_EVERY_MS = 30_000;
/** The stored settings are read again at most this often for placement (other replicas' changes show within it). */
const SETTINGS_MAX_AGE_MS = 1_000;

export type HostState = 'up' | 'down' | 'unknown';

/** A host as `GET /hosts` (and `GET /agents`) shows it (never its token). */
export interface AgentSummary {
  name: string;
  /** The embedded agent, in the control plane's own process. */
  local: boolean;
  url?: string;
  registeredAt?: string;
  /** Reachability: up (answered the last ask), down (did not: reason), unknown (not asked yet, no recent facts). */
  state: HostState;
  /** Why it is down or unknown. */
  reason?: string;
  zone: string;
  labels: Record<string, string>;
  /** An administrator's flag beside the state: no new placements. */
  disabled: boolean;
  disabledReason?: string;
  disabledAt?: string;
  disabledBy?: string;
  /** In effect (the defaults where none was set). */
  allocationRatios: AllocationRatios;
  /** The last facts (absent: never heard from). */
  hostname?: string;
  kernel?: string;
  architecture?: string;
  cpus?: number;
  memoryBytes?: number;
  diskBytes?: number;
  accelerator?: string;
  runtimes?: string[];
  /** Whether containers move live to or from it (CRIU), and why not (docs/overlay.md, "Moving containers live"). */
  liveMove?: { usable: boolean; reason?: string; version?: string };
  /** When those facts were reported. */
  lastSeenAt?: string;
  vms: number;
  /** Containers recorded on it (absent where the caller did not count them). */
  containers?: number;
  /** Resources claimed by placements on it (the scheduler's claims; absent until it reports them). */
  allocated?: HostAllocation;
}
export type HostSummary = AgentSummary;

export interface HostAllocation {
  vcpus: number;
  memoryBytes: number;
  diskBytes: number;
  instances: number;
}

/** Counts that make a listing: by the caller, since what a user may see of them depends on who asks. */
export interface HostCounts {
  vmsOn: (host: string) => number | Promise<number>;
  containersOn?: (host: string) => number | Promise<number>;
  /** The scheduler's claims per host (the seam for `nimbus host ls` ALLOCATED columns). */
  allocatedOn?: (host: string) => HostAllocation | undefined | Promise<HostAllocation | undefined>;
}

/** An administrator's change (PATCH /hosts/{name}); absent fields are kept. */
export interface HostSettingsChange {
  zone?: string;
  /** Labels set (added or replaced). */
  labels?: Record<string, string>;
  /** Labels removed (after the ones set). */
  unsetLabels?: string[];
  /** A ratio set, or null to go back to the default. */
  allocationRatios?: { [K in keyof AllocationRatios]?: number | null };
}

export interface AgentDirectoryOptions {
  /**
   * false (nimbusd --no-agent): `local` is only a stand-in, not a host: it gets no row, is not
   * asked, listed nor offered to placement (the compute services hide it: withoutEmbedded()).
   */
  embedded?: boolean;
  /** The background refresh's period; 0: none (tests drive refresh() themselves). */
  refreshIntervalMs?: number;
  answerTimeoutMs?: number;
  /** The clock (tests). */
  now?: () => number;
}

const ZONE_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
/** Kubernetes' label syntax: an optional DNS prefix and a name; values short and plain. */
const LABEL_KEY_RE = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$/;
const LABEL_VALUE_RE = /^([a-zA-Z0-9]([a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?)?$/;
const MAX_LABELS = 64;

export function checkZone(zone: string): void {
  if (!ZONE_RE.test(zone)) throw new InvalidArgument(`invalid zone "${zone}": letters, digits, "_", "." and "-", at most 63, starting with a letter or digit`);
}

export function checkLabel(key: string, value?: string): void {
  if (!LABEL_KEY_RE.test(key)) throw new InvalidArgument(`invalid label key "${key}": [prefix/]name, the name up to 63 letters, digits, "_", "." or "-" (as Kubernetes labels)`);
  if (value !== undefined && !LABEL_VALUE_RE.test(value)) throw new InvalidArgument(`invalid value "${value}" for label ${key}: up to 63 letters, digits, "_", "." or "-", starting and ending with a letter or digit`);
}

export function effectiveRatios(set: Partial<AllocationRatios>): AllocationRatios {
  return { ...DEFAULT_ALLOCATION_RATIOS, ...set };
}

/** The facts worth keeping from what a host says of itself. */
export function factsOf(info: AgentInfo, seenAt: number): HostFacts {
  // answers are not schema-checked on the wire: a missing field is "not reported", never a crash
  const count = (n: unknown) => (typeof n === 'number' && Number.isFinite(n) && n >= 0 ? n : 0);
  return {
    cpus: count(info.cpus), memoryBytes: count(info.memoryBytes), diskBytes: count(info.diskBytes),
    ...(typeof info.vm?.accelerator === 'string' ? { accelerator: info.vm.accelerator } : {}),
    runtimes: Array.isArray(info.runtimes) ? info.runtimes.filter((r) => r?.usable).map((r) => String(r.name)) : [],
    ...(info.liveMove && typeof info.liveMove.usable === 'boolean'
      ? { liveMove: { usable: info.liveMove.usable, ...(info.liveMove.reason ? { reason: String(info.liveMove.reason) } : {}), ...(info.liveMove.version ? { version: String(info.liveMove.version) } : {}) } }
      : {}),
    // an agent from before it reported its architecture: assume this host's (a mixed cloud upgrades its agents)
    architecture: info.architecture ?? hostArchitecture(),
    hostname: String(info.hostname ?? ''), kernel: String(info.kernel ?? ''), seenAt,
  };
}

function sameFacts(a: HostFacts | null | undefined, b: HostFacts): boolean {
  return !!a && JSON.stringify({ ...a, seenAt: 0 }) === JSON.stringify({ ...b, seenAt: 0 });
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
      // no link to watch: it is listed down with the reason already
      if (typeof prop !== 'string' || prop === 'then' || prop === 'onLinkChange') return undefined;
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

export class AgentDirectory implements HostSource {
  private readonly remotes = new Map<string, Agent>();
  /** The url and token each remote connection was made with (a changed row is connected again). */
  private readonly connectedAs = new Map<string, string>();
  private readonly exitListeners: Array<(agent: string, id: string) => void> = [];
  /** The stored rows as last read (settings and facts), by name. */
  private records = new Map<string, AgentRecord>();
  private recordsReadAt = 0;
  private recordsReading: Promise<void> | undefined;
  /** Bumped by every change made here, so a read of the rows that raced it is not applied. */
  private changes = 0;
  /** What each host answered last since this process started. */
  private readonly reach = new Map<string, HostReach>();
  /**
   * What candidates() answered last: a placement asks for every host's view, and building a
   * thousand of them per placement was a tenth of a decision's time (bench/schedule-scale.ts).
   * Dropped on any change seen here, and after CANDIDATES_MAX_AGE_MS (time alone turns a host
   * unknown, and other replicas' rows are re-read).
   */
  private candidatesMemo: { at: number; list: HostCandidate[] } | undefined;
  private readonly asking = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  /** The refresh open() starts, until it ends: candidates() waits for it rather than call a host not heard from yet unknown. */
  private firstRefresh: Promise<void> | undefined;
  private readonly now: () => number;
  private readonly answerTimeoutMs: number;
  private readonly embedded: boolean;

  private constructor(
    private readonly store: Store,
    readonly local: Agent,
    readonly localName: string,
    private readonly connect: AgentConnector,
    private readonly ca: AgentCa | undefined,
    opts: AgentDirectoryOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.answerTimeoutMs = opts.answerTimeoutMs ?? HOST_ANSWER_TIMEOUT_MS;
    this.embedded = opts.embedded ?? true;
  }

  /**
   * The directory with the stored registrations connected again, the embedded agent's row made
   * if missing, and the background refresh started (unref'd; close() stops it). Without a CA,
   * only unix-socket agents can be registered.
   */
  static async open(store: Store, local: Agent, localName: string, connect: AgentConnector, ca?: AgentCa, opts: AgentDirectoryOptions = {}): Promise<AgentDirectory> {
    const d = new AgentDirectory(store, local, localName, connect, ca, opts);
    local.onVmExit((id) => d.emitExit(localName, id));
    if (d.embedded) await store.agents.ensureEmbedded(localName, new Date(d.now()).toISOString());
    await d.readRecords();
    const every = opts.refreshIntervalMs ?? HOST_REFRESH_INTERVAL_MS;
    if (every > 0) {
      const refresh = () => d.refresh().catch((e: unknown) => log.warn('host refresh failed', { error: toNimbusError(e).message }));
      const tick = () => void refresh();
      d.firstRefresh = refresh().finally(() => (d.firstRefresh = undefined));
      d.timer = setInterval(tick, every);
      d.timer.unref();
    }
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
    this.watchLink(rec.name, a);
    this.remotes.set(rec.name, a);
    this.connectedAs.set(rec.name, `${rec.url} ${rec.token}`);
    return a;
  }

  /**
   * A remote host whose events stream is lost (reset, or three pings missed: a host cut off or
   * frozen) is down at once, not at the next refresh; when the stream is back its facts are
   * asked again, which calls it up. Changes of a connection that was replaced are ignored.
   */
  /** Listeners of hosts going down and coming up (this process's view). */
  private readonly stateListeners = new Set<(host: string, state: 'up' | 'down', reason?: string) => void>();

  /**
   * Called when this process sees a host go down or come up (not on every refresh): the daemon
   * publishes these as `host` events for operators. Returns the unsubscribe.
   */
  onHostStateChange(listener: (host: string, state: 'up' | 'down', reason?: string) => void): () => void {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Every change of a host's reachability goes through here, so a change of state is told once. */
  private setReach(name: string, next: HostReach): void {
    const before = this.reach.get(name)?.state;
    this.reach.set(name, next);
    if (before === next.state || (before === undefined && next.state === 'up')) return; // first seen up: nothing changed
    for (const l of this.stateListeners) {
      try {
        l(name, next.state, next.reason);
      } catch (e) {
        log.warn('a host state listener failed', { host: name, error: String(e) });
      }
    }
  }

  private watchLink(name: string, a: Agent): void {
    (a as Partial<LinkWatch>).onLinkChange?.((up, reason) => {
      if (this.remotes.get(name) !== a) return;
      if (up) {
        void this.ask(name);
        return;
      }
      const prev = this.reach.get(name);
      if (prev?.state === 'down') return;
      this.setReach(name, { state: 'down', reason: `its events stream was lost: ${reason ?? 'no reason given'}`, at: this.now(), misses: TIMEOUTS_BEFORE_DOWN });
      this.candidatesMemo = undefined;
      log.warn('host down', { host: name, reason });
    });
  }

  /**
   * The rows read again: settings and facts cached, and the connections brought in line with
   * them (an agent registered or removed through another control-plane process shows here).
   */
  private readRecords(): Promise<void> {
    this.recordsReading ??= (async () => {
      const before = this.changes;
      try {
        const rows = await this.store.agents.list();
        if (this.changes !== before) return; // a change made here meanwhile: the next read applies
        this.records = new Map(rows.map((r) => [r.name, r]));
        this.recordsReadAt = this.now();
        this.candidatesMemo = undefined;
        for (const r of rows) {
          if (r.url === EMBEDDED_AGENT_URL || r.name === this.localName) continue;
          if (this.connectedAs.get(r.name) === `${r.url} ${r.token}`) continue;
          const old = this.remotes.get(r.name);
          this.attach(r);
          this.reach.delete(r.name);
          await old?.close().catch(() => undefined);
        }
        for (const name of [...this.remotes.keys()]) {
          if (this.records.has(name)) continue;
          const gone = this.remotes.get(name);
          this.remotes.delete(name);
          this.connectedAs.delete(name);
          this.reach.delete(name);
          await gone?.close().catch(() => undefined);
        }
      } finally {
        this.recordsReading = undefined;
      }
    })();
    return this.recordsReading;
  }

  private async freshRecords(): Promise<void> {
    if (this.now() - this.recordsReadAt >= SETTINGS_MAX_AGE_MS) await this.readRecords();
  }

  /** A row changed here: cached at once (readers in this process see it before the next read). */
  private changed(rec: AgentRecord): void {
    this.changes++;
    this.candidatesMemo = undefined;
    this.records.set(rec.name, rec);
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

  /** True while the background refresh finds the host down (missed answers, refused connection). */
  isDown(name: string): boolean {
    return this.reach.get(name)?.state === 'down';
  }

  /** The hosts: names() less the embedded stand-in of a control plane that runs no agent. */
  hostNames(): string[] {
    return this.embedded ? this.names() : [...this.remotes.keys()];
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
   * gave, before it is stored; a previous registration of the name is replaced (its host
   * settings are kept).
   */
  async register(req: AgentRegistration): Promise<AgentRecord> {
    this.checkName(req.name);
    if (/^http:\/\//.test(req.url)) throw new InvalidArgument(`agent url "${req.url}": TCP agents are reached over TLS only (https://, a certificate from nimbusd agent --join-token); plain HTTP is for unix sockets`);
    if (!/^(https:\/\/[^/\s]+\/?|unix:\/\S+)$/.test(req.url)) throw new InvalidArgument(`agent url must be https://HOST:PORT or unix:/PATH, got "${req.url}"`);
    if (req.url.startsWith('https:') && !this.ca) throw new Conflict('this control plane has no agent CA, so it cannot reach TCP agents');
    if (req.token.length < 16) throw new InvalidArgument('agent token too short (at least 16 characters)');
    checkProtocol(req.name, req.protocol);
    const reg: AgentRegistrationRecord = { name: req.name, url: req.url, token: req.token, registeredAt: new Date(this.now()).toISOString() };
    let probe: Agent & { close(): Promise<void> };
    try {
      probe = this.connect({ ...reg, zone: 'default', labels: {}, disabled: null, allocationRatios: {}, facts: null });
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
    let rec: AgentRecord | undefined;
    try {
      const facts = factsOf(info, this.now());
      rec = await this.store.transaction(async () => {
        await this.store.agents.put({ ...reg, facts });
        await this.store.agents.recordFacts(reg.name, facts);
        return this.store.agents.get(reg.name);
      });
    } catch (e) {
      await probe.close().catch(() => undefined);
      throw e;
    }
    if (!rec) throw new Unavailable(`agent ${req.name}: its row went away while it registered`);
    this.changed(rec);
    // read after the write: a registration of the same name that finished meanwhile is the one replaced
    const old = this.remotes.get(req.name);
    probe.onVmExit((id) => this.emitExit(rec.name, id));
    this.remotes.set(rec.name, probe);
    this.watchLink(rec.name, probe);
    this.connectedAs.set(rec.name, `${rec.url} ${rec.token}`);
    this.setReach(rec.name, { state: 'up', at: this.now() });
    this.candidatesMemo = undefined;
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

  /**
   * Forget a host: the registration and its settings. The caller checks that no instance is
   * recorded on it. The embedded agent cannot be removed; a stale embedded row (an agent name
   * this control plane no longer uses) can.
   */
  async remove(name: string): Promise<void> {
    if (name === this.localName) throw new Conflict('the embedded agent cannot be removed');
    const a = this.remotes.get(name);
    if (!a && (await this.store.agents.get(name))?.url !== EMBEDDED_AGENT_URL) throw new NotFound(`no such agent: ${name}`, { agent: name });
    // the record first: if its removal fails, the agent stays in the directory as stored
    await this.store.agents.delete(name);
    this.changes++;
    this.candidatesMemo = undefined;
    this.records.delete(name);
    this.remotes.delete(name);
    this.connectedAs.delete(name);
    this.reach.delete(name);
    await a?.close().catch(() => undefined);
    log.info('agent removed', { agent: name });
  }

  // ---- host lifecycle: settings an administrator makes

  /** No new placements on it (its instances stay); disabling a disabled host updates the reason. */
  async disable(name: string, o: { reason?: string; by: string }): Promise<AgentSummary> {
    await this.requireHost(name);
    const rec = await this.store.agents.updateSettings(name, { disabled: { reason: o.reason ?? '', at: new Date(this.now()).toISOString(), by: o.by } });
    this.changed(rec);
    log.info('host disabled', { host: name, reason: o.reason ?? '', by: o.by });
    return this.summary(name, { vms: 0 });
  }

  async enable(name: string): Promise<AgentSummary> {
    await this.requireHost(name);
    const rec = await this.store.agents.updateSettings(name, { disabled: null });
    this.changed(rec);
    log.info('host enabled', { host: name });
    return this.summary(name, { vms: 0 });
  }

  /** Zone, labels set and unset, allocation ratios; checked first, applied in one transaction (no lost label). */
  async updateSettings(name: string, change: HostSettingsChange): Promise<AgentSummary> {
    if (change.zone !== undefined) checkZone(change.zone);
    const set = Object.entries(change.labels ?? {});
    for (const [k, v] of set) checkLabel(k, v);
    for (const k of change.unsetLabels ?? []) checkLabel(k);
    for (const [k, v] of Object.entries(change.allocationRatios ?? {})) {
      if (!(k in DEFAULT_ALLOCATION_RATIOS)) throw new InvalidArgument(`unknown allocation ratio "${k}" (cpu, memory, disk)`);
      if (v !== null && v !== undefined && !(Number.isFinite(v) && v > 0 && v <= MAX_ALLOCATION_RATIO)) {
        throw new InvalidArgument(`allocation ratio ${k} must be above 0 and at most ${MAX_ALLOCATION_RATIO}, got ${v}`);
      }
    }
    await this.requireHost(name);
    const rec = await this.store.transaction(async () => {
      const cur = await this.store.agents.get(name);
      if (!cur) throw new NotFound(`no such host: ${name}`, { host: name });
      const labels = { ...cur.labels, ...Object.fromEntries(set) };
      for (const k of change.unsetLabels ?? []) delete labels[k];
      if (Object.keys(labels).length > MAX_LABELS) throw new InvalidArgument(`a host has at most ${MAX_LABELS} labels`);
      const ratios: Partial<AllocationRatios> = { ...cur.allocationRatios };
      for (const [k, v] of Object.entries(change.allocationRatios ?? {}) as Array<[keyof AllocationRatios, number | null | undefined]>) {
        if (v === null) delete ratios[k];
        else if (v !== undefined) ratios[k] = v;
      }
      return this.store.agents.updateSettings(name, { ...(change.zone !== undefined ? { zone: change.zone } : {}), labels, allocationRatios: ratios });
    });
    this.changed(rec);
    log.info('host settings changed', { host: name, zone: rec.zone, labels: rec.labels, allocationRatios: rec.allocationRatios });
    return this.summary(name, { vms: 0 });
  }

  /** NotFound unless the name is a host of this directory (or a row another replica made). */
  private async requireHost(name: string): Promise<void> {
    const known = () => this.hostNames().includes(name);
    if (known()) return;
    await this.readRecords();
    if (!known()) throw new NotFound(`no such host: ${name}`, { host: name });
  }

  // ---- host state: the background refresh

  /**
   * Ask every host (or those named) for its facts, each within the answer timeout, and keep
   * the state; the facts are stored when they changed (or every 30 s, so other replicas see
   * the host answer). A host that stops answering is down: nothing of it is forgotten.
   */
  async refresh(names?: string[]): Promise<void> {
    try {
      await this.readRecords();
    } catch (e) {
      log.warn('host rows could not be read', { error: toNimbusError(e).message });
    }
    const hosts = this.hostNames();
    await Promise.all((names ?? hosts).filter((n) => hosts.includes(n)).map((n) => this.ask(n)));
  }

  private ask(name: string): Promise<void> {
    let p = this.asking.get(name);
    if (!p) {
      p = this.askNow(name).finally(() => this.asking.delete(name));
      this.asking.set(name, p);
    }
    return p;
  }

  private async askNow(name: string): Promise<void> {
    const before = this.reach.get(name)?.state;
    let info: AgentInfo;
    try {
      info = await withTimeout(this.get(name).info(), this.answerTimeoutMs, `agent ${name} did not answer within ${this.answerTimeoutMs / 1000} s`);
    } catch (e) {
      const reason = toNimbusError(e).message;
      const prev = this.reach.get(name);
      // A slow answer is not a dead host: this process's own event loop may be what was busy
      // (a burst of placements). Down after TIMEOUTS_BEFORE_DOWN missed answers in a row; a
      // refused or reset connection (the agent process is gone) is down at once.
      const timedOut = e instanceof AnswerTimeout;
      const misses = (prev?.misses ?? 0) + 1;
      if (timedOut && prev?.state === 'up' && misses < TIMEOUTS_BEFORE_DOWN) {
        this.setReach(name, { ...prev, misses });
        log.info('host slow to answer', { host: name, reason, misses });
        return;
      }
      this.setReach(name, { state: 'down', reason, at: this.now(), misses });
      this.candidatesMemo = undefined;
      if (before !== 'down') log.warn('host down', { host: name, reason });
      return;
    }
    const now = this.now();
    this.setReach(name, { state: 'up', at: now });
    if (before !== 'up') this.candidatesMemo = undefined;
    if (before === 'down') log.info('host up again', { host: name });
    const facts = factsOf(info ?? ({} as AgentInfo), now);
    const stored = this.records.get(name);
    if (stored && sameFacts(stored.facts, facts) && now - stored.facts!.seenAt < FACTS_STORE_EVERY_MS) return;
    try {
      if (await this.store.agents.recordFacts(name, facts)) {
        const cur = this.records.get(name);
        if (cur) this.records.set(name, { ...cur, facts });
        this.candidatesMemo = undefined;
      }
    } catch (e) {
      log.warn('host facts could not be stored', { host: name, error: toNimbusError(e).message });
    }
  }

  private stateOf(name: string, rec: AgentRecord | undefined): { state: HostState; reason?: string } {
    const r = this.reach.get(name);
    if (r) return r.reason !== undefined ? { state: r.state, reason: r.reason } : { state: r.state };
    // not asked yet from here: another replica's recent facts say it answers
    const seen = rec?.facts?.seenAt;
    if (seen !== undefined && this.now() - seen < HOST_UNKNOWN_AFTER_MS) return { state: 'up' };
    return { state: 'unknown', reason: seen === undefined ? 'never heard from' : `not heard from since ${new Date(seen).toISOString()}` };
  }

  private summary(name: string, counts: { vms: number; containers?: number; allocated?: HostAllocation }): AgentSummary {
    const rec = this.records.get(name);
    const f = rec?.facts;
    const remote = rec && rec.url !== EMBEDDED_AGENT_URL;
    return {
      name, local: name === this.localName,
      ...(remote ? { url: rec.url, registeredAt: rec.registeredAt } : {}),
      ...this.stateOf(name, rec),
      zone: rec?.zone ?? 'default', labels: rec?.labels ?? {},
      disabled: !!rec?.disabled,
      ...(rec?.disabled ? { disabledReason: rec.disabled.reason, disabledAt: rec.disabled.at, disabledBy: rec.disabled.by } : {}),
      allocationRatios: effectiveRatios(rec?.allocationRatios ?? {}),
      ...(f
        ? {
            hostname: f.hostname, kernel: f.kernel, architecture: f.architecture, cpus: f.cpus, memoryBytes: f.memoryBytes, diskBytes: f.diskBytes,
            ...(f.accelerator !== undefined ? { accelerator: f.accelerator } : {}), runtimes: f.runtimes, ...(f.liveMove ? { liveMove: f.liveMove } : {}), lastSeenAt: new Date(f.seenAt).toISOString(),
          }
        : {}),
      vms: counts.vms,
      ...(counts.containers !== undefined ? { containers: counts.containers } : {}),
      ...(counts.allocated ? { allocated: counts.allocated } : {}),
    };
  }

  /**
   * Every host with its state now: each is asked first (a short timeout each: a down host does
   * not hold the listing up). `counts` as a function counts VMs only (the agents listing).
   */
  async list(counts: HostCounts | HostCounts['vmsOn']): Promise<AgentSummary[]> {
    const c: HostCounts = typeof counts === 'function' ? { vmsOn: counts } : counts;
    await this.refresh();
    return Promise.all(this.hostNames().map(async (name) => {
      const [vms, containers, allocated] = await Promise.all([c.vmsOn(name), c.containersOn?.(name), c.allocatedOn?.(name)]);
      return this.summary(name, { vms, ...(containers !== undefined ? { containers } : {}), ...(allocated ? { allocated } : {}) });
    }));
  }

  /** One host as the listing shows it (asked first). */
  async show(name: string, counts: HostCounts): Promise<AgentSummary> {
    await this.requireHost(name);
    await this.refresh([name]);
    const [vms, containers, allocated] = await Promise.all([counts.vmsOn(name), counts.containersOn?.(name), counts.allocatedOn?.(name)]);
    return this.summary(name, { vms, ...(containers !== undefined ? { containers } : {}), ...(allocated ? { allocated } : {}) });
  }

  /**
   * The hosts as the scheduler sees them (HostSource), from memory: no host is called. The
   * stored settings are read again when older than a second (another replica's disable).
   */
  async candidates(): Promise<HostCandidate[]> {
    await this.freshRecords();
    // Hosts this process has not heard from yet while its first refresh (open()) is under way are
    // waited for, not placed as "unknown": a VM created as the daemon reported ready was refused
    // (507, "local: state unknown") while the embedded agent's first answer was on its way.
    if (this.firstRefresh && this.hostNames().some((n) => !this.reach.has(n))) await this.firstRefresh;
    const memo = this.candidatesMemo;
    if (memo && this.now() - memo.at < CANDIDATES_MAX_AGE_MS) return memo.list;
    const list = this.hostNames().map((name): HostCandidate => {
      const rec = this.records.get(name);
      const f = rec?.facts;
      return {
        name, state: this.stateOf(name, rec).state, disabled: !!rec?.disabled, zone: rec?.zone ?? 'default', labels: rec?.labels ?? {},
        cpus: f?.cpus ?? 0, memoryBytes: f?.memoryBytes ?? 0, diskBytes: f?.diskBytes ?? 0,
        ...(f?.accelerator !== undefined ? { accelerator: f.accelerator } : {}),
        runtimes: f?.runtimes ?? [], architecture: f?.architecture ?? hostArchitecture(),
        allocationRatios: effectiveRatios(rec?.allocationRatios ?? {}),
      };
    });
    this.candidatesMemo = { at: this.now(), list };
    return list;
  }

  /** The refresh stopped and the remote connections closed (the embedded agent is closed by the daemon). */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await Promise.all([...this.remotes.values()].map((a) => a.close().catch(() => undefined)));
    this.remotes.clear();
    this.connectedAs.clear();
  }
}

/** No answer within the time allowed (as opposed to a refusal). */
class AnswerTimeout extends Unavailable {}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AnswerTimeout(message)), ms);
      timer.unref();
    }),
  ]);
}
