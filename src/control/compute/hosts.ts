/**
 * What the compute, image and network services need of the hosts: an agent by host name, and
 * the placement fields a create may carry. The daemon passes the AgentDirectory (which has these
 * members); tests pass oneHost().
 */
import { NotFound, PermissionDenied } from '../../core/errors.js';
import type { Agent } from '../../agent/agent.js';
import type { PlacementRequest } from '../scheduler/types.js';
import type { Store } from '../../store/store.js';

export interface HostAgents {
  /** The embedded agent's name; undefined when the control plane runs none (--no-agent). */
  readonly localName: string | undefined;
  names(): string[];
  has(name: string): boolean;
  /** NotFound for a name no agent has. */
  get(name: string): Agent;
  /** True while the host is known not to answer (the directory's background refresh); absent: never. */
  isDown?(name: string): boolean;
}

/** The placement fields of a create request (API and CLI: --host, --zone, --constraint, --group). */
export interface PlacementInput {
  /** Pinned host (administrators only). */
  host?: string;
  zone?: string;
  constraints?: Record<string, string>;
  /** Server group name or id in the instance's project. */
  group?: string;
}

/** One host only: tests, and a daemon that has only its embedded agent. */
export function oneHost(agent: Agent, name = 'local'): HostAgents {
  return {
    localName: name,
    names: () => [name],
    has: (n) => n === name,
    get: (n) => {
      if (n !== name) throw new NotFound(`no such host: ${n}`, { host: n });
      return agent;
    },
  };
}

/**
 * The hosts without the embedded agent (nimbusd --no-agent): everything is placed on registered
 * agents. The directory still holds a stand-in under the embedded name; it is hidden here.
 */
export function withoutEmbedded(dir: HostAgents): HostAgents {
  const hidden = dir.localName;
  return {
    localName: undefined,
    names: () => dir.names().filter((n) => n !== hidden),
    has: (n) => n !== hidden && dir.has(n),
    get: (n) => {
      if (n === hidden) throw new NotFound(`no such host: ${n} (this control plane runs no embedded agent)`, { host: n });
      return dir.get(n);
    },
    isDown: (n) => dir.isDown?.(n) ?? false,
  };
}

/** --host is for system administrators: a tenant must not pick (or probe for) hosts. */
export function checkPinnedHost(p: PlacementInput, isSystemAdmin: boolean, field = 'host'): void {
  if (p.host !== undefined && !isSystemAdmin) throw new PermissionDenied(`only a system administrator may pin an instance to a host (${field})`);
}

/** The request fields the scheduler takes from a create's placement input (absent ones left out). */
export function placementFields(p: PlacementInput): Pick<PlacementRequest, 'host' | 'zone' | 'constraints' | 'group'> {
  return {
    ...(p.host !== undefined ? { host: p.host } : {}),
    ...(p.zone !== undefined ? { zone: p.zone } : {}),
    ...(p.constraints && Object.keys(p.constraints).length ? { constraints: p.constraints } : {}),
    ...(p.group !== undefined ? { group: p.group } : {}),
  };
}

/** A server group named in a create (its id, or its name in the instance's project) as the id the scheduler takes. */
export async function resolveGroup(store: Pick<Store, 'placement'>, projectId: string, ref: string): Promise<string> {
  const byId = await store.placement.group(ref);
  if (byId && byId.projectId === projectId) return byId.id;
  const byName = await store.placement.groupByName(projectId, ref);
  if (byName) return byName.id;
  throw new NotFound(`no server group "${ref}" in this project`, { group: ref });
}

/** The placement input with its group resolved (the same input when it names none). */
export async function withGroupResolved(store: Pick<Store, 'placement'>, projectId: string, p: PlacementInput): Promise<PlacementInput> {
  return p.group === undefined ? p : { ...p, group: await resolveGroup(store, projectId, p.group) };
}

/**
 * Work for each agent connection not handled yet. A host that registers (again: an agent
 * restarted, a host rebooted, one that joined after the daemon's start) is a new connection
 * object in the directory. Every `everyMs` the directory is looked at (no host is called to
 * look); a host known to be down is left for a later look, and a failed `handle` forgets the
 * connection, so the next look tries it again.
 */
export class NewConnections {
  private readonly handled = new WeakSet<Agent>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly hosts: () => HostAgents | undefined,
    private readonly handle: (host: string, agent: Agent) => Promise<unknown>,
    private readonly failed: (host: string, e: unknown) => void,
  ) {}

  /** Handled already (the daemon's start did it). */
  markHandled(agent: Agent): void {
    this.handled.add(agent);
  }

  /** Every connection the directory holds now counts as handled. */
  markAllHandled(): void {
    this.forEachConnection((_host, agent) => this.handled.add(agent));
  }

  start(everyMs = 5000): void {
    this.timer ??= setInterval(() => this.look(), everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private look(): void {
    const hosts = this.hosts();
    this.forEachConnection((host, agent) => {
      if (this.handled.has(agent) || hosts?.isDown?.(host)) return;
      this.handled.add(agent);
      void this.handle(host, agent).catch((e: unknown) => {
        this.handled.delete(agent); // tried again at the next look
        this.failed(host, e);
      });
    });
  }

  private forEachConnection(fn: (host: string, agent: Agent) => void): void {
    const hosts = this.hosts();
    for (const host of hosts?.names() ?? []) {
      let agent: Agent;
      try {
        agent = hosts!.get(host);
      } catch {
        continue; // removed meanwhile
      }
      fn(host, agent);
    }
  }
}
