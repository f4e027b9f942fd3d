/**
 * The agents this control plane drives: the embedded one (in-process, always there) and the
 * ones registered from other processes or hosts (`nimbusd agent`), reached over the agent
 * protocol (src/agent/remote/). Registrations are stored, so a restarted control plane
 * reconnects to them; an agent registers again on every start (its address may change).
 */
import { Conflict, InvalidArgument, NotFound, Unavailable, Unreachable, toNimbusError } from '../../core/errors.js';
import { isValidName } from '../../core/ids.js';
import { logger } from '../../core/log.js';
import type { Agent, AgentInfo } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { AgentRecord } from '../../store/records.js';

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

export class AgentDirectory {
  private readonly remotes = new Map<string, Agent>();
  private readonly exitListeners: Array<(agent: string, id: string) => void> = [];

  constructor(
    private readonly store: Store,
    readonly local: Agent,
    readonly localName: string,
    private readonly connect: AgentConnector,
  ) {
    this.local.onVmExit((id) => this.emitExit(localName, id));
    for (const rec of store.agents.list()) this.attach(rec);
  }

  private emitExit(agent: string, id: string): void {
    for (const l of this.exitListeners) l(agent, id);
  }

  private attach(rec: AgentRecord): Agent {
    const a = this.connect(rec);
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
  async register(req: { name: string; url: string; token: string }): Promise<AgentRecord> {
    if (!isValidName(req.name)) throw new InvalidArgument(`invalid agent name "${req.name}"`);
    if (req.name === this.localName) throw new Conflict(`"${req.name}" is the embedded agent's name`);
    if (!/^(https?:\/\/[^/\s]+\/?|unix:\/\S+)$/.test(req.url)) throw new InvalidArgument(`agent url must be http://HOST:PORT or unix:/PATH, got "${req.url}"`);
    if (req.token.length < 16) throw new InvalidArgument('agent token too short (at least 16 characters)');
    const rec: AgentRecord = { name: req.name, url: req.url, token: req.token, registeredAt: new Date().toISOString() };
    const probe = this.connect(rec);
    let info: AgentInfo;
    try {
      info = await probe.info();
    } catch (e) {
      await probe.close();
      const err = toNimbusError(e);
      // 502, not 503: the control plane is up; what the request named is not
      throw new Unreachable(`agent ${req.name} at ${req.url} does not answer: ${err.message}`, { agent: req.name });
    }
    if (info.name !== req.name) {
      await probe.close();
      throw new InvalidArgument(`the agent at ${req.url} calls itself "${info.name}", not "${req.name}"`);
    }
    const old = this.remotes.get(req.name);
    this.store.agents.put(rec);
    probe.onVmExit((id) => this.emitExit(rec.name, id));
    this.remotes.set(rec.name, probe);
    await old?.close().catch(() => undefined);
    log.info('agent registered', { agent: rec.name, url: rec.url, hostname: info.hostname });
    // exits it saw while it was away: every VM it has is re-checked
    for (const id of await probe.listVms().catch(() => [] as string[])) this.emitExit(rec.name, id);
    return rec;
  }

  /** The caller checks that no instance lives on it. */
  async remove(name: string): Promise<void> {
    if (name === this.localName) throw new Conflict('the embedded agent cannot be removed');
    const a = this.remotes.get(name);
    if (!a) throw new NotFound(`no such agent: ${name}`, { agent: name });
    this.remotes.delete(name);
    this.store.agents.delete(name);
    await a.close().catch(() => undefined);
    log.info('agent removed', { agent: name });
  }

  /** Every agent with what it says of itself now (a short timeout each: a down agent does not hold the listing up). */
  async list(vmsOn: (agent: string) => number): Promise<AgentSummary[]> {
    const recs = new Map(this.store.agents.list().map((r) => [r.name, r]));
    return Promise.all(this.names().map(async (name): Promise<AgentSummary> => {
      const rec = recs.get(name);
      const base = {
        name, local: name === this.localName, vms: vmsOn(name),
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
