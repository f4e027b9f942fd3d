/**
 * What a container's host agent serves directly, outside the lifecycle (no lock, no state
 * change): logs, exec, attach and its terminal's size, top, stats, and docker cp and export.
 * The control plane's part is the container's lookup and the checks of its state.
 */
import { Conflict, InvalidArgument } from '../../core/errors.js';
import type { Agent, ContainerArchiveResult, ContainerPathStat, LayerUsage, ProcessTable } from '../../agent/agent.js';
import { logger } from '../../core/log.js';
import { withDeadline } from './deadline.js';
import { badTerminalSize, type AttachRequest, type AttachSession, type ExecRequest, type ExecSession, type InstanceStats, type LogRecord } from '../../agent/drivers/instance-driver.js';
import type { Readable } from 'node:stream';
import type { ContainerRecord } from '../../store/records.js';

export interface AgentCallDeps {
  /** By id, name or unique id prefix (NotFound otherwise). */
  get(idOrName: string): Promise<ContainerRecord>;
  agentOf(c: { host: string }): Agent;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
}

const log = logger('compute');
/** How long one host may take to measure its containers' layers before they are shown unmeasured. */
const LAYER_USAGE_DEADLINE_MS = 30_000;

export class ContainerAgentCalls {
  constructor(private readonly deps: AgentCallDeps) {}

  /**
   * What these containers' writable layers hold (docker ps -s, system df), asked of each host at
   * once. A host that is down, too old (protocol 12 and before) or slow leaves its containers out:
   * they show as unmeasured rather than fail the listing.
   */
  async layerUsage(containers: readonly Pick<ContainerRecord, 'id' | 'host'>[]): Promise<Map<string, LayerUsage>> {
    const byHost = new Map<string, string[]>();
    for (const c of containers) byHost.set(c.host, [...(byHost.get(c.host) ?? []), c.id]);
    const out = new Map<string, LayerUsage>();
    await Promise.all([...byHost].map(async ([host, ids]) => {
      try {
        const usage = await withDeadline(this.deps.agentOf({ host }).containerLayerUsage(ids), LAYER_USAGE_DEADLINE_MS, `host ${host}'s layer usage`);
        for (const [id, u] of Object.entries(usage)) out.set(id, u);
      } catch (e) {
        log.info('writable layers left unmeasured', { host, containers: ids.length, error: String(e) });
      }
    }));
    return out;
  }

  async logs(idOrName: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): Promise<AsyncIterable<LogRecord>> {
    const c = await this.deps.get(idOrName);
    return this.deps.agentOf(c).containerLogs(c.id, opts);
  }

  async exec(idOrName: string, req: ExecRequest): Promise<ExecSession> {
    const c = await this.deps.get(idOrName);
    if (c.status !== 'running') throw new Conflict(`container ${c.name} is ${c.status}; exec needs it running`);
    if (!req.args.length) throw new InvalidArgument('exec needs a command');
    this.deps.publish(c, 'exec', { args: req.args, ...(req.tty ? { tty: true } : {}) });
    return this.deps.agentOf(c).execInContainer(c.id, req);
  }

  /**
   * Attach to its main process on its host: the output from now on and, with `stdin`, its input
   * (Conflict when it was made without an open stdin). A created container can be attached before
   * its start (docker run attaches first); an exited one has no process to attach to.
   */
  async attach(idOrName: string, req: AttachRequest): Promise<AttachSession> {
    const c = await this.deps.get(idOrName);
    if (req.stdin && !c.config.openStdin) throw new Conflict(`container ${c.name} was created without an open stdin (docker run -i)`);
    if (c.status !== 'created' && c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is ${c.status}; attach needs it created or running`);
    return this.deps.agentOf(c).attachContainer(c.id, req);
  }

  /** Its main process's terminal's new size (Conflict for a container without -t). */
  async resize(idOrName: string, rows: number, cols: number): Promise<void> {
    const c = await this.deps.get(idOrName);
    if (!c.config.tty) throw new Conflict(`container ${c.name} has no terminal (docker run -t)`);
    const bad = badTerminalSize(rows, cols);
    if (bad) throw new InvalidArgument(bad);
    if (c.status !== 'created' && c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is not running`);
    await this.deps.agentOf(c).resizeContainer(c.id, rows, cols);
  }

  /** Its processes as `ps -ef` shows them, from its host (running or paused containers). */
  async top(idOrName: string): Promise<ProcessTable> {
    const c = await this.deps.get(idOrName);
    if (c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is not running`);
    return this.deps.agentOf(c).containerTop(c.id);
  }

  async stats(idOrName: string): Promise<InstanceStats & { id: string; name: string }> {
    const c = await this.deps.get(idOrName);
    if (c.status !== 'running' && c.status !== 'paused') throw new Conflict(`container ${c.name} is ${c.status}; no stats`);
    return { id: c.id, name: c.name, ...(await this.deps.agentOf(c).containerStats(c.id)) };
  }

  /**
   * The counters of its current or, once it ended, its last run, as its host reads them (metering):
   * an ended run's cgroup stays until removal, so its CPU up to the exit is still there.
   */
  async runCounters(id: string): Promise<InstanceStats> {
    const c = await this.deps.get(id);
    return this.deps.agentOf(c).containerStats(c.id);
  }

  /** docker cp: a path's stat in the container, running or not, from its host (which resolves it inside the rootfs). */
  async pathStat(idOrName: string, path: string): Promise<ContainerPathStat> {
    const c = await this.deps.get(idOrName);
    return this.deps.agentOf(c).containerPathStat(c.id, path);
  }

  /** docker cp out: the path as a tar stream and its stat; the caller consumes or destroys the stream. */
  async readArchive(idOrName: string, path: string): Promise<{ stat: ContainerPathStat; bytes: Readable }> {
    const c = await this.deps.get(idOrName);
    return this.deps.agentOf(c).readContainerArchive(c.id, path);
  }

  /**
   * docker export: the container's whole filesystem as its processes see it (its image's layers
   * and its writable layer merged; what is mounted on it, volumes and the like, not) as one flat
   * tar, running (frozen while its tree is walked) or stopped: docker cp's read of "/" on its host.
   */
  async exportFs(idOrName: string): Promise<Readable> {
    return (await this.readArchive(idOrName, '/')).bytes;
  }

  /** docker cp in: the tar extracted under the directory path, into the container's writable layer. */
  async writeArchive(idOrName: string, path: string, opts: { noOverwriteDirNonDir?: boolean; copyUIDGID?: boolean }, bytes: AsyncIterable<Uint8Array>): Promise<ContainerArchiveResult> {
    const c = await this.deps.get(idOrName);
    return this.deps.agentOf(c).writeContainerArchive(c.id, path, opts, bytes);
  }
}
