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
 *
 * This class holds the rows as last read and ties the parts together: the connections
 * (agent-connections.ts), registration (agent-registration.ts) and join tokens (join-tokens.ts),
 * the settings (host-settings.ts), reachability (host-reach.ts), facts (host-facts.ts) and how
 * a host is shown (host-summary.ts).
 */
import { Conflict, NotFound, logMessage } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent, AgentInfo } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { AgentRecord } from '../../store/records.js';
import { EMBEDDED_AGENT_URL } from '../../store/repos/agents.js';
import type { ProtocolRange } from '../../agent/remote/agent-protocol.js';
import type { AgentCa } from './agent-ca.js';
import type { HostCandidate, HostSource } from '../scheduler/types.js';
import { AgentConnections, type AgentConnector } from './agent-connections.js';
import { admitAgent, type AgentRegistration } from './agent-registration.js';
import { FailureThrottle } from '../../core/failure-throttle.js';
import { sharedFailureLog } from '../identity/shared-failure-log.js';
import { JoinTokens } from './join-tokens.js';
import { HostSettings, type HostSettingsChange } from './host-settings.js';
import { HOST_ANSWER_TIMEOUT_MS, HostReachability } from './host-reach.js';
import { factsOf, factsWorthStoring } from './host-facts.js';
import { ADMIN_VIEWER, hostCandidate, hostSummary, tallyOn, type AgentSummary, type HostCounts, type HostTally, type HostViewer } from './host-summary.js';

const log = logger('agents');

/** How often every host is asked for its facts. */
export const HOST_REFRESH_INTERVAL_MS = 10_000;
/** How long candidates() may answer from its last list when nothing changed meanwhile. */
const CANDIDATES_MAX_AGE_MS = 250;
/** The stored settings are read again at most this often for placement (other replicas' changes show within it). */
const SETTINGS_MAX_AGE_MS = 1_000;

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

export class AgentDirectory implements HostSource {
  /** Failed registrations over TLS per caller's address (registerOverTls), counted by every replica together. */
  private readonly unprovenRegistrations: FailureThrottle;
  private readonly connections: AgentConnections;
  private readonly reach: HostReachability;
  private readonly settings: HostSettings;
  private readonly joinTokens: JoinTokens;
  private readonly exitListeners: Array<(agent: string, id: string) => void> = [];
  /** The stored rows as last read (settings and facts), by name. */
  private records = new Map<string, AgentRecord>();
  private recordsReadAt = 0;
  private recordsReading: Promise<void> | undefined;
  /** Bumped by every change made here, so a read of the rows that raced it is not applied. */
  private changes = 0;
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
    this.embedded = opts.embedded ?? true;
    this.unprovenRegistrations = new FailureThrottle({ limit: 10, windowMs: 60_000 }, sharedFailureLog(store, 'agent-registration'), this.now);
    const dropCandidates = () => (this.candidatesMemo = undefined);
    this.reach = new HostReachability({
      now: this.now,
      answerTimeoutMs: opts.answerTimeoutMs ?? HOST_ANSWER_TIMEOUT_MS,
      isCurrent: (name, a) => this.connections.remote(name) === a,
      ask: (name) => this.ask(name),
      dropCandidates,
    });
    this.connections = new AgentConnections({
      local, localName, connect,
      onExit: (name, id) => this.emitExit(name, id),
      watchLink: (name, a) => this.reach.watchLink(name, a),
      forget: (name) => this.reach.forget(name),
      isStored: (name) => this.records.has(name),
    });
    this.settings = new HostSettings({ store, now: this.now, requireHost: (name) => this.requireHost(name), changed: (rec) => this.changed(rec) });
    this.joinTokens = new JoinTokens({ store, ca, localName });
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
      const refresh = () => d.refresh().catch((e: unknown) => log.warn('host refresh failed', { error: logMessage(e) }));
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

  /**
   * Called when this process sees a host go down or come up (not on every refresh): the daemon
   * publishes these as `host` events for operators. Returns the unsubscribe.
   */
  onHostStateChange(listener: (host: string, state: 'up' | 'down', reason?: string) => void): () => void {
    return this.reach.onHostStateChange(listener);
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
        await this.connections.sync(rows);
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
    return this.connections.names();
  }

  has(name: string): boolean {
    return this.connections.has(name);
  }

  /** True while the background refresh finds the host down (missed answers, refused connection). */
  isDown(name: string): boolean {
    return this.reach.isDown(name);
  }

  /** The hosts: names() less the embedded stand-in of a control plane that runs no agent. */
  hostNames(): string[] {
    return this.embedded ? this.names() : this.connections.remoteNames();
  }

  /** NotFound for a name no agent has. */
  get(name: string): Agent {
    return this.connections.get(name);
  }

  /**
   * An agent (re-)registering: it must answer under the name it gives, with the token it
   * gave, before it is stored; a previous registration of the name is replaced (its host
   * settings are kept).
   */
  async register(req: AgentRegistration): Promise<AgentRecord> {
    const { rec, info, probe } = await admitAgent(req, { store: this.store, connect: this.connect, localName: this.localName, hasCa: !!this.ca, now: this.now });
    this.changed(rec);
    const old = this.connections.adopt(rec, probe);
    this.reach.answered(rec.name);
    this.candidatesMemo = undefined;
    await old?.close().catch(() => undefined);
    log.info('agent registered', { agent: rec.name, url: rec.url, hostname: info.hostname });
    // exits it saw while it was away: every VM it has is re-checked
    for (const id of await probe.listVms().catch(() => [] as string[])) this.emitExit(rec.name, id);
    return rec;
  }

  /**
   * A registration without a credential (POST /agents/tls: the proof is the mutual-TLS handshake
   * with the URL it names). It makes this process dial whatever the caller names, so failures are
   * throttled per caller's address (`source`): a port scan through it runs at 10 probes a minute.
   */
  async registerOverTls(req: AgentRegistration, source: string): Promise<AgentRecord> {
    await this.unprovenRegistrations.check(source, 'agent registration');
    try {
      return await this.register(req);
    } catch (e) {
      // the refusal stands whatever happens to its count
      await this.unprovenRegistrations.fail(source).catch((fe: unknown) => log.warn('a failed agent registration could not be counted', { source, error: String(fe) }));
      throw e;
    }
  }

  /** A one-time join token (shown once: only its secret's hash is stored). */
  issueJoinToken(o: { ttlMs?: number } = {}, now = Date.now()): Promise<{ token: string; id: string; expiresAt: string }> {
    return this.joinTokens.issue(o, now);
  }

  /** An agent redeeming a join token for its certificate (join-tokens.ts). */
  join(req: { joinToken: string; name: string; csr: string; protocol?: ProtocolRange }, now = Date.now()): Promise<{ certificate: string; caCertificate: string }> {
    return this.joinTokens.redeem(req, now);
  }

  /**
   * Forget a host: the registration and its settings. The caller checks that no instance is
   * recorded on it. The embedded agent cannot be removed; a stale embedded row (an agent name
   * this control plane no longer uses) can.
   */
  async remove(name: string): Promise<void> {
    if (name === this.localName) throw new Conflict('the embedded agent cannot be removed');
    const a = this.connections.remote(name);
    if (!a && (await this.store.agents.get(name))?.url !== EMBEDDED_AGENT_URL) throw new NotFound(`no such agent: ${name}`, { agent: name });
    // the record first: if its removal fails, the agent stays in the directory as stored
    await this.store.agents.delete(name);
    this.changes++;
    this.candidatesMemo = undefined;
    this.records.delete(name);
    this.connections.drop(name);
    this.reach.forget(name);
    await a?.close().catch(() => undefined);
    log.info('agent removed', { agent: name });
  }

  // ---- host lifecycle: settings an administrator makes (host-settings.ts)

  /** No new placements on it (its instances stay); disabling a disabled host updates the reason. */
  async disable(name: string, o: { reason?: string; by: string }): Promise<AgentSummary> {
    await this.settings.disable(name, o);
    return this.summary(name, { vms: 0 }, ADMIN_VIEWER);
  }

  async enable(name: string): Promise<AgentSummary> {
    await this.settings.enable(name);
    return this.summary(name, { vms: 0 }, ADMIN_VIEWER);
  }

  /** Zone, labels set and unset, allocation ratios; checked first, applied in one transaction (no lost label). */
  async updateSettings(name: string, change: HostSettingsChange): Promise<AgentSummary> {
    await this.settings.update(name, change);
    return this.summary(name, { vms: 0 }, ADMIN_VIEWER);
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
      log.warn('host rows could not be read', { error: logMessage(e) });
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
    const answer = await this.reach.ask(name, () => this.get(name).info());
    if (!answer) return;
    const facts = factsOf(answer.info ?? ({} as AgentInfo), answer.at);
    if (!factsWorthStoring(this.records.get(name)?.facts, facts)) return;
    try {
      if (await this.store.agents.recordFacts(name, facts)) {
        const cur = this.records.get(name);
        if (cur) this.records.set(name, { ...cur, facts });
        this.candidatesMemo = undefined;
      }
    } catch (e) {
      log.warn('host facts could not be stored', { host: name, error: logMessage(e) });
    }
  }

  private summary(name: string, tally: HostTally, viewer: HostViewer): AgentSummary {
    const rec = this.records.get(name);
    return hostSummary(name, rec, { local: name === this.localName, state: this.reach.stateOf(name, rec?.facts?.seenAt), tally, admin: viewer.admin === true });
  }

  /**
   * Every host with its state now: each is asked first (a short timeout each: a down host does
   * not hold the listing up). `counts` as a function counts VMs only (the agents listing).
   * How each host is reached only for an administrator `viewer` (host-summary.ts).
   */
  async list(counts: HostCounts | HostCounts['vmsOn'], viewer: HostViewer = {}): Promise<AgentSummary[]> {
    const c: HostCounts = typeof counts === 'function' ? { vmsOn: counts } : counts;
    await this.refresh();
    return Promise.all(this.hostNames().map(async (name) => this.summary(name, await tallyOn(c, name), viewer)));
  }

  /** One host as the listing shows it (asked first). */
  async show(name: string, counts: HostCounts, viewer: HostViewer = {}): Promise<AgentSummary> {
    await this.requireHost(name);
    await this.refresh([name]);
    return this.summary(name, await tallyOn(counts, name), viewer);
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
    if (this.firstRefresh && this.hostNames().some((n) => !this.reach.heardOf(n))) await this.firstRefresh;
    const memo = this.candidatesMemo;
    if (memo && this.now() - memo.at < CANDIDATES_MAX_AGE_MS) return memo.list;
    const list = this.hostNames().map((name): HostCandidate => {
      const rec = this.records.get(name);
      return hostCandidate(name, rec, this.reach.stateOf(name, rec?.facts?.seenAt).state);
    });
    this.candidatesMemo = { at: this.now(), list };
    return list;
  }

  /** The refresh stopped and the remote connections closed (the embedded agent is closed by the daemon). */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.connections.closeAll();
  }
}
