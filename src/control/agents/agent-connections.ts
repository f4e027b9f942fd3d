/**
 * The connections this control plane holds to its agents: the embedded one (in-process, always
 * there) and one per registered agent, made from its stored row (url and token), made again when
 * the row changes and closed when it goes. TCP agents are reached over mutual TLS with the CA's
 * client certificate (agent-ca.ts), unix-socket agents over plain HTTP with their bearer token.
 */
import { NotFound, Unavailable, toNimbusError } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Agent } from '../../agent/agent.js';
import type { AgentRecord } from '../../store/records.js';
import { EMBEDDED_AGENT_URL } from '../../store/repos/agents.js';
import { RemoteAgent } from '../../agent/remote/remote-agent.js';
import type { AgentCa } from './agent-ca.js';

const log = logger('agents');

/** How a registered agent is reached (a RemoteAgent in the daemon; tests may pass their own). */
export type AgentConnector = (rec: AgentRecord) => Agent & { close(): Promise<void> };

/** The daemon's connector: RemoteAgents, over mutual TLS with the CA's client certificate for https:// agents. */
export function remoteAgentConnector(ca: AgentCa | undefined): AgentConnector {
  return (rec) => new RemoteAgent({ name: rec.name, url: rec.url, token: rec.token, ...(ca ? { tls: ca.clientTls } : {}) });
}

/**
 * Every method of an agent that could not even be connected to fails with the reason (so it is
 * listed down, and can be removed): tenants are told that much; why, with its URL, is for
 * administrators and the log.
 */
function unconnectable(name: string, reason: string): Agent & { close(): Promise<void> } {
  const quiet = new Set(['onVmExit', 'onContainerExit', 'setAddressProvider', 'close', 'claimWarmContainer']);
  return new Proxy({} as Agent & { close(): Promise<void> }, {
    get: (_t, prop) => {
      // no link to watch: it is listed down with the reason already
      if (typeof prop !== 'string' || prop === 'then' || prop === 'onLinkChange') return undefined;
      if (quiet.has(prop)) return async () => undefined;
      return async () => {
        throw new Unavailable(`agent ${name} cannot be connected to as registered: an administrator registers it again or removes it`, { agent: name }, { adminMessage: reason });
      };
    },
  });
}

/** What the directory lends: the embedded agent, how to connect, and what follows a connection made or dropped. */
export interface AgentConnectionsDeps {
  local: Agent;
  localName: string;
  connect: AgentConnector;
  /** A VM exit seen on the agent `name`. */
  onExit(name: string, id: string): void;
  /** A new connection: its link is watched for the host's reachability. */
  watchLink(name: string, a: Agent): void;
  /** A connection replaced or dropped while the rows were read: what was found of its host is void. */
  forget(name: string): void;
  /** Whether the host still has a row (one registered here while the rows were read is kept). */
  isStored(name: string): boolean;
}

export class AgentConnections {
  private readonly remotes = new Map<string, Agent>();
  /** The url and token each remote connection was made with (a changed row is connected again). */
  private readonly connectedAs = new Map<string, string>();

  constructor(private readonly deps: AgentConnectionsDeps) {}

  /** The embedded agent's name first, then the registered ones. */
  names(): string[] {
    return [this.deps.localName, ...this.remotes.keys()];
  }

  remoteNames(): string[] {
    return [...this.remotes.keys()];
  }

  has(name: string): boolean {
    return name === this.deps.localName || this.remotes.has(name);
  }

  /** NotFound for a name no agent has. */
  get(name: string): Agent {
    if (name === this.deps.localName) return this.deps.local;
    const a = this.remotes.get(name);
    if (!a) throw new NotFound(`no such agent: ${name}`, { agent: name });
    return a;
  }

  /** The registered agent's connection, if any (not the embedded agent). */
  remote(name: string): Agent | undefined {
    return this.remotes.get(name);
  }

  /**
   * The connections brought in line with the stored rows: a row new or changed (url, token) is
   * connected (again), a connection whose row is gone is closed. A row that cannot be connected
   * to (a registration from before TLS) is kept, its agent failing every call with the reason.
   */
  async sync(rows: AgentRecord[]): Promise<void> {
    for (const r of rows) {
      if (r.url === EMBEDDED_AGENT_URL || r.name === this.deps.localName) continue;
      if (this.connectedAs.get(r.name) === `${r.url} ${r.token}`) continue;
      const old = this.remotes.get(r.name);
      this.install(r, this.connectOrExplain(r));
      this.deps.forget(r.name);
      await old?.close().catch(() => undefined);
    }
    for (const name of [...this.remotes.keys()]) {
      if (this.deps.isStored(name)) continue;
      const gone = this.drop(name);
      this.deps.forget(name);
      await gone?.close().catch(() => undefined);
    }
  }

  /** A registration's probe (it answered under its name) kept as the connection; returns the one it replaces, to be closed. */
  adopt(rec: AgentRecord, probe: Agent): Agent | undefined {
    // read after the write: a registration of the same name that finished meanwhile is the one replaced
    const old = this.remotes.get(rec.name);
    this.install(rec, probe);
    return old;
  }

  /** The connection forgotten (not closed: the caller closes what is returned). */
  drop(name: string): Agent | undefined {
    const a = this.remotes.get(name);
    this.remotes.delete(name);
    this.connectedAs.delete(name);
    return a;
  }

  /** Every remote connection closed (the embedded agent is closed by the daemon). */
  async closeAll(): Promise<void> {
    await Promise.all([...this.remotes.values()].map((a) => a.close().catch(() => undefined)));
    this.remotes.clear();
    this.connectedAs.clear();
  }

  private connectOrExplain(rec: AgentRecord): Agent {
    try {
      return this.deps.connect(rec);
    } catch (e) {
      // a registration from before TLS (http://): kept, listed down with the reason, removable
      const reason = `agent ${rec.name} at ${rec.url}: ${toNimbusError(e).message}`;
      log.warn('a stored agent cannot be connected to', { agent: rec.name, url: rec.url, error: reason });
      return unconnectable(rec.name, reason);
    }
  }

  private install(rec: AgentRecord, a: Agent): void {
    a.onVmExit((id) => this.deps.onExit(rec.name, id));
    this.remotes.set(rec.name, a);
    this.deps.watchLink(rec.name, a);
    this.connectedAs.set(rec.name, `${rec.url} ${rec.token}`);
  }
}
