/**
 * A container moved to another host, cold (issue 15; docs/overlay.md, "Moving containers"): it is
 * stopped, its writable layer (the overlayfs upper directory) and its named volumes' data travel
 * as tar streams from the source agent through the control plane to the destination's, which
 * checks them as hostile input; there it is created with the request it was created with here
 * (same id, name, address, MAC and aliases), its log carried into place (its output so far,
 * before what it writes there) and started if it was running. Only then does the
 * record change host (the switch); the source copy is removed after.
 *
 * The move is an explicit state machine (MOVE_TRANSITIONS). Nothing is lost on failure: before
 * the switch the source copy is untouched but for the stop, and a failure rolls back (the
 * destination's copy, volumes and claims gone, the container started again at the source if it
 * was running). After the switch the container runs at the destination whatever happens; a
 * source that cannot let go is logged, and its leftovers are orphans its reconcile removes.
 *
 * Quota is charged per container and volume, not per host: a move charges nothing. The
 * scheduler's claims (the host's capacity) move to the destination first, atomically with its
 * capacity check, and back on a rollback.
 */
import type { Readable } from 'node:stream';
import { Conflict, DataLoss, Internal, InvalidArgument, NotFound, Unavailable, logMessage, textForAnyone } from '../../core/errors.js';
import { StreamDigest } from '../../core/stream-digest.js';
import { logger } from '../../core/log.js';
import type { Agent, ContainerCreateRequest, TreeImportResult } from '../../agent/agent.js';
import { containerDiskBytes } from '../quota/quota-service.js';
import type { RuntimeState } from '../../agent/drivers/instance-driver.js';
import { spokenProtocol, tooOldFor } from '../../agent/remote/agent-protocol.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord, ImageRecord, OperationRecord } from '../../store/records.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';
import type { HostAgents } from './hosts.js';
import type { Scheduler } from '../scheduler/types.js';
import type { OperationHandle, OperationService } from '../operations/operations.js';
import type { ImageService } from '../images/image-service.js';
import type { NetworkService } from '../networks/network-service.js';
import { checkLiveHosts, liveMoveRefusal } from './live-move-rules.js';

const log = logger('compute-move');

export type MovePhase =
  | 'checking' | 'stopping' | 'claiming' | 'preparing' | 'copying-layer' | 'copying-volumes' | 'creating' | 'copying-log' | 'starting'
  // a live move's own (--live): the checkpoint at the source instead of the stop, the restore at the destination instead of the create and start
  | 'checkpointing' | 'copying-checkpoint' | 'restoring'
  | 'switching' | 'cleaning' | 'done' | 'rolling-back' | 'rolled-back';

/** What may follow each phase. A failure anywhere before the switch leads to rolling-back; after it, the move is done. */
export const MOVE_TRANSITIONS: Readonly<Record<MovePhase, readonly MovePhase[]>> = {
  checking: ['stopping', 'claiming', 'rolling-back'],
  stopping: ['claiming', 'rolling-back'],
  claiming: ['preparing', 'rolling-back'],
  preparing: ['copying-layer', 'checkpointing', 'rolling-back'],
  // live: the processes dumped (and gone at the source) before the layer is read
  checkpointing: ['copying-layer', 'rolling-back'],
  'copying-layer': ['copying-volumes', 'rolling-back'],
  'copying-volumes': ['creating', 'copying-checkpoint', 'rolling-back'],
  'copying-checkpoint': ['restoring', 'rolling-back'],
  // restored and running at the destination; its log follows
  restoring: ['copying-log', 'rolling-back'],
  creating: ['copying-log', 'rolling-back'],
  // the log goes into the created container before its first start (conmon opened a new file at the create)
  'copying-log': ['starting', 'switching', 'rolling-back'],
  starting: ['switching', 'rolling-back'],
  switching: ['cleaning', 'rolling-back'],
  cleaning: ['done'],
  done: [],
  'rolling-back': ['rolled-back'],
  'rolled-back': [],
};

/** The phases before the switch: a failure in them rolls back to the source. */
export const BEFORE_SWITCH: ReadonlySet<MovePhase> = new Set(['checking', 'stopping', 'claiming', 'preparing', 'checkpointing', 'copying-layer', 'copying-volumes', 'copying-checkpoint', 'restoring', 'creating', 'copying-log', 'starting', 'switching']);

/** The move's current phase, with the transitions checked (a wrong one is a bug: Internal). */
export class MoveMachine {
  private current: MovePhase = 'checking';
  readonly history: Array<{ phase: MovePhase; at: number }> = [{ phase: 'checking', at: Date.now() }];
  constructor(private readonly onEnter: (phase: MovePhase) => void = () => undefined) {}

  get phase(): MovePhase {
    return this.current;
  }

  to(next: MovePhase): void {
    if (!MOVE_TRANSITIONS[this.current].includes(next)) throw new Internal(`container move: no transition from ${this.current} to ${next}`);
    this.current = next;
    this.history.push({ phase: next, at: Date.now() });
    this.onEnter(next);
  }

  /** Whether a failure now rolls back (the record still names the source). */
  get rollsBack(): boolean {
    return BEFORE_SWITCH.has(this.current);
  }
}

export interface MoveOptions {
  /** The destination; absent: the scheduler's choice among the other hosts. */
  to?: string;
  /** Live (CRIU): checkpointed at the source, restored at the destination, its processes continuing (live-move-rules.ts says what is refused). */
  live?: boolean;
}

export interface MoveReport {
  id: string;
  name: string;
  from: string;
  to: string;
  /** Whether it was running (and so was started at the destination). */
  restarted: boolean;
  totalMs: number;
  /** From the stop (live: the checkpoint) at the source to the start (live: the restore) at the destination; 0 when it was not running. */
  downtimeMs: number;
  /** Moved live: the checkpoint's images (bytes carried, the dump's time) and the restore's time. */
  live?: { checkpointBytes: number; checkpointMs: number; restoreMs: number };
  layer: { bytes: number; entries: number };
  volumes: Array<{ name: string; bytes: number; entries: number }>;
  /** Its log's generations carried (tar bytes, files); `skipped` says why none were (an agent older than protocol 8). */
  log: { bytes: number; files: number; skipped?: string };
}

/** What the move needs of the container service (its lock, its stop and start, its events and exits). */
export interface MoveDeps {
  store: Store;
  hosts: HostAgents;
  scheduler: Scheduler;
  images: Pick<ImageService, 'ensureOnHost'>;
  networks: Pick<NetworkService, 'vmNicsFor' | 'endpointsMoved'>;
  operations: Pick<OperationService, 'start'>;
  /** The agent of a host, its exits listened to. */
  agentOn(host: string): Agent;
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  cancelRestart(id: string): Promise<void>;
  /** Graceful stop at the record's host, as `nimbus stop` (under the lock the caller holds). */
  stop(id: string): Promise<ContainerRecord>;
  /** Start at the record's host, as `nimbus start` (under the lock the caller holds). */
  start(id: string): Promise<ContainerRecord>;
  publish(c: ContainerRecord, action: string, attributes?: Record<string, unknown>): void;
  /** An exit reported for the container now (detached: it takes the lock). */
  exitMaybe(id: string): void;
  /** An agent call bounded in time. */
  bounded<T>(id: string, op: string, p: Promise<T>): Promise<T>;
}

/** The image a container was made from: its project's record of it, else any project's (NotFound when the store has none). */
export async function containerImage(store: Store, c: ContainerRecord): Promise<ImageRecord> {
  const image = (await store.images.ref(c.projectId, c.imageDigest)) ?? (await store.images.list()).find((i) => i.digest === c.imageDigest);
  if (!image) throw new NotFound(`container ${c.name}'s image ${c.imageDigest} is gone from the store`);
  return image;
}

/** What may not move, and why; undefined when it may. */
export async function moveRefusal(deps: Pick<MoveDeps, 'store'>, c: ContainerRecord): Promise<Error | undefined> {
  if (c.status === 'paused') return new Conflict(`container ${c.name} is paused: unpause it before moving it`);
  if (c.status === 'restarting') return new Conflict(`container ${c.name} is restarting: stop it or wait before moving it`);
  if (c.status !== 'running' && c.status !== 'created' && c.status !== 'exited') return new Conflict(`container ${c.name} is ${c.status}: it cannot move`);
  if (c.runtime === 'vm' || c.config.runtime === 'vm') return new Conflict(`container ${c.name} is a secure container (--runtime vm): those do not move between hosts yet`);
  const net = c.config.network ?? 'bridge';
  if (net === 'host') return new Conflict(`container ${c.name} is on the host network: its addresses and ports are its host's, so it cannot move`);
  if (net.startsWith('container:')) return new Conflict(`container ${c.name} shares the network namespace of ${net.slice('container:'.length)}: it runs on that container's host and cannot move alone`);
  const binds = (c.config.mounts ?? []).filter((m) => m.type === 'bind');
  if (binds.length) return new Conflict(`container ${c.name} binds host path${binds.length > 1 ? 's' : ''} ${binds.map((m) => m.source).join(', ')}: host paths are on their host and cannot move with it`);
  const sharers = (await deps.store.containers.list({ projectId: c.projectId })).filter((o) => {
    const ref = o.id !== c.id && o.config.network?.startsWith('container:') ? o.config.network.slice('container:'.length) : undefined;
    return ref !== undefined && (ref === c.id || ref === c.name || (ref.length >= 3 && c.id.startsWith(ref)));
  });
  if (sharers.length) return new Conflict(`container${sharers.length > 1 ? 's' : ''} ${sharers.map((o) => o.name).join(', ')} share${sharers.length > 1 ? '' : 's'} the network namespace of ${c.name}: it cannot move without them`);
  for (const m of c.config.mounts ?? []) {
    if (m.type !== 'volume') continue;
    const others = (await deps.store.containers.list({ projectId: c.projectId })).filter((o) => o.id !== c.id && (o.config.mounts ?? []).some((x) => x.type === 'volume' && x.volumeId === m.volumeId));
    if (others.length) return new Conflict(`volume ${m.name} of container ${c.name} is used by ${others.map((o) => o.name).join(', ')} too: a volume moves with its only container`);
  }
  return undefined;
}

/**
 * The destination: `to` checked as the scheduler would place there (a host down, disabled or
 * lacking the container's runtime or room is refused, with the filter's reason), or the
 * scheduler's best host other than the current one.
 */
export async function chooseDestination(deps: Pick<MoveDeps, 'hosts' | 'scheduler' | 'store'>, c: ContainerRecord, to: string | undefined): Promise<string> {
  if (to !== undefined) {
    if (!deps.hosts.has(to)) throw new NotFound(`no such host: ${to}`, { host: to });
    if (to === c.host) throw new InvalidArgument(`container ${c.name} is on host ${to} already`, { host: to });
    if (deps.hosts.isDown?.(to)) throw new Unavailable(`host ${to} is down: it cannot take container ${c.name}`, { host: to });
  }
  const image = await deps.store.images.get(c.imageDigest);
  const volumeBytes = await Promise.all((c.config.mounts ?? []).map(async (m) => (m.type === 'volume' ? (await deps.store.volumes.get(m.volumeId))?.sizeBytes ?? 0 : 0)));
  const runtime = c.config.runtime;
  const explained = await deps.scheduler.explain({
    consumerId: c.id, projectId: c.projectId, kind: 'container',
    vcpus: c.config.cpus ?? 0, memoryBytes: c.config.memoryBytes ?? 0, diskBytes: volumeBytes.reduce((a, b) => a + b, containerDiskBytes(c.config)),
    ...(runtime && runtime !== 'auto' ? { runtime } : {}),
    ...(image?.config.architecture ? { architecture: image.config.architecture } : {}),
    ...(image ? { imageChainId: image.chainId } : {}),
  });
  if (to !== undefined) {
    const v = explained.hosts.find((h) => h.host === to);
    if (!v) throw new NotFound(`no such host: ${to}`, { host: to });
    if (v.rejectedBy) throw new Conflict(`host ${to} cannot take container ${c.name}: ${v.rejectedBy.filter}: ${v.rejectedBy.reason}`, { host: to, filter: v.rejectedBy.filter });
    return to;
  }
  const best = explained.hosts.filter((h) => h.host !== c.host && !h.rejectedBy && deps.hosts.has(h.host)).sort((a, b) => (b.weight ?? 0) - (a.weight ?? 0))[0];
  if (!best) {
    const why = explained.hosts.filter((h) => h.host !== c.host).map((h) => `${h.host}: ${h.rejectedBy ? `${h.rejectedBy.filter}: ${h.rejectedBy.reason}` : 'unknown'}`);
    throw new Conflict(`no other host can take container ${c.name}${why.length ? ` (${why.join('; ')})` : ': there is no other host'}`, { hosts: explained.hosts });
  }
  return best.host;
}

/**
 * Both hosts can take part before anything is touched: agents of protocol 6 (a remote agent says
 * which it speaks; the embedded one is this process's), keeping writable layers as overlayfs upper
 * directories (a native snapshot is a whole copy, not a layer).
 */
async function checkHosts(from: Agent, to: Agent, names: { from: string; to: string }): Promise<void> {
  for (const [agent, host, method] of [[from, names.from, 'exportContainerLayer'], [to, names.to, 'importContainerLayer']] as const) {
    const version = await spokenProtocol(agent);
    const refusal = version === undefined ? undefined : tooOldFor(method, version, host);
    if (refusal) throw refusal;
    const info = await agent.info();
    if (info.snapshotter !== 'overlayfs') throw new Conflict(`host ${host} keeps containers on the ${info.snapshotter} snapshotter: only overlayfs layers move between hosts`, { host });
  }
}

/** Why a container's log cannot travel between these agents (one older than protocol 8), or undefined when it can. */
async function logsTooOld(from: Agent, to: Agent, names: { from: string; to: string }): Promise<string | undefined> {
  for (const [agent, host, method] of [[from, names.from, 'exportContainerLogs'], [to, names.to, 'importContainerLogs']] as const) {
    const version = await spokenProtocol(agent);
    const refusal = version === undefined ? undefined : tooOldFor(method, version, host);
    if (refusal) return refusal.message;
  }
  return undefined;
}

/** A tree in flight that moves no byte for this long (or whose answer takes this long once sent) is given up: the lock is not held for ever. */
const TREE_IDLE_MS = 120_000;

/**
 * A tree from one agent into another, through this process: hashed as it passes, and the
 * destination's account of what it received compared (DataLoss when they differ). The source's
 * stream is destroyed whatever happens (a refused import must not leave it hanging); a transfer
 * idle for idleMs fails (Unavailable).
 */
export async function carry(out: Readable, into: (bytes: AsyncIterable<Uint8Array>) => Promise<TreeImportResult>, onBytes: (n: number) => void, what: string, idleMs = TREE_IDLE_MS): Promise<TreeImportResult> {
  const hash = new StreamDigest(); // on the digest thread: a moved layer can be gigabytes
  let sent = 0;
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Unavailable(`${what}: nothing moved for ${Math.round(idleMs / 1000)} s (${sent} bytes sent)`)), idleMs);
  });
  async function* tapped(): AsyncGenerator<Uint8Array> {
    for await (const chunk of out as AsyncIterable<Uint8Array>) {
      timer?.refresh();
      hash.update(chunk);
      sent += chunk.length;
      onBytes(sent);
      yield chunk;
      if (hash.pending) await hash.drained();
    }
    timer?.refresh(); // all sent: the destination has as long again to answer
  }
  try {
    const got = await Promise.race([into(tapped()), idle]);
    const digest = await hash.digest();
    if (got.bytes !== sent || got.digest !== digest) {
      throw new DataLoss(`${what}: the destination received ${got.bytes} bytes (${got.digest}), ${sent} were sent (${digest})`);
    }
    return got;
  } finally {
    hash.dispose();
    clearTimeout(timer);
    if (!out.destroyed) out.destroy();
  }
}

/** Checked before an Operation starts (a container that cannot move is a plain error), then the move as `container.move`. */
export async function startMove(deps: MoveDeps, c: ContainerRecord, opts: MoveOptions): Promise<OperationRecord> {
  const refusal = (await moveRefusal(deps, c)) ?? (opts.live ? liveMoveRefusal(c) : undefined);
  if (refusal) throw refusal;
  if (deps.hosts.isDown?.(c.host) || !deps.hosts.has(c.host)) throw new Unavailable(`container ${c.name}'s host ${c.host} does not answer: its layer cannot be read`, { host: c.host });
  const to = await chooseDestination(deps, c, opts.to);
  if (opts.live) await checkLiveHosts([{ name: c.host, agent: deps.agentOn(c.host) }, { name: to, agent: deps.agentOn(to) }]);
  return deps.operations.start('container.move', c.id, c.projectId, (op) => moveContainer(deps, c.id, to, op, { live: opts.live === true }));
}

/** The move itself, under the container's lock (see the file comment). */
export function moveContainer(deps: MoveDeps, id: string, to: string, op?: Pick<OperationHandle, 'progress'>, opts: { live?: boolean } = {}): Promise<MoveReport> {
  return deps.locked(id, async () => {
    const t0 = Date.now();
    const c = await deps.store.containers.get(id);
    if (!c) throw new NotFound(`no such container: ${id}`);
    const from = c.host;
    let progress: Record<string, unknown> = { from, to };
    const report = (p: Record<string, unknown>) => {
      progress = { ...progress, ...p };
      op?.progress(progress);
    };
    const m = new MoveMachine((phase) => report({ phase }));
    report({ phase: m.phase });
    // checked again under the lock: the container may have changed since the operation was asked for
    const live = opts.live === true;
    const refusal = (await moveRefusal(deps, c)) ?? (live ? liveMoveRefusal(c) : undefined);
    if (refusal) throw refusal;
    if (to === from) throw new InvalidArgument(`container ${c.name} is on host ${to} already`);
    const src = deps.agentOn(from);
    const dst = deps.agentOn(to);
    const volumes: VolumeRecord[] = [];
    for (const mnt of c.config.mounts ?? []) {
      if (mnt.type !== 'volume') continue;
      const v = await deps.store.volumes.get(mnt.volumeId);
      if (!v) throw new NotFound(`volume ${mnt.name} of container ${c.name} is gone`);
      if (v.status !== 'ready' || v.host !== from) throw new Conflict(`volume ${v.name} is ${v.status} on host ${v.host}: it cannot move with container ${c.name} now`);
      volumes.push(v);
    }
    const wasRunning = c.status === 'running';
    const done = { claims: [] as string[], volumesMade: [] as string[], created: false, stoppedAt: 0, checkpointed: undefined as ContainerCreateRequest | undefined };
    let result: MoveReport = { id, name: c.name, from, to, restarted: wasRunning, totalMs: 0, downtimeMs: 0, layer: { bytes: 0, entries: 0 }, volumes: [], log: { bytes: 0, files: 0 } };
    let state: (RuntimeState & { warnings?: string[]; runtime?: string }) | undefined;
    let created: { warnings: string[]; runtime: string } | undefined;
    try {
      await checkHosts(src, dst, { from, to });
      if (live) await checkLiveHosts([{ name: from, agent: src }, { name: to, agent: dst }]);
      await deps.cancelRestart(id);
      if (wasRunning && !live) {
        m.to('stopping');
        await deps.stop(id);
        done.stoppedAt = Date.now();
      }
      m.to('claiming');
      // the destination's capacity, checked atomically as the claims move; moved back on a rollback
      for (const consumer of [id, ...volumes.map((v) => v.id)]) {
        await deps.scheduler.moveClaim(consumer, to);
        done.claims.push(consumer);
      }
      m.to('preparing');
      const image = await containerImage(deps.store, c);
      await deps.images.ensureOnHost(image, to);
      const saved: ContainerCreateRequest = await deps.bounded(id, 'saved request', src.containerRequest(id));
      // as the host saved it at its create, but for its names as the record has them now (a rename since)
      const names = [c.name, ...(c.config.aliases ?? [])];
      const request: ContainerCreateRequest = {
        ...saved, name: c.name,
        ...(saved.network?.mode === 'networks' ? { network: { ...saved.network, endpoints: saved.network.endpoints.map((e) => ({ ...e, dnsNames: names })) } } : {}),
      };
      // every network it has an address on laid out at the destination (its leases, eth0 first); those
      // connected after its create (network connect) are not in the saved request: connected again there
      const leased = request.network?.mode === 'networks' ? await deps.networks.vmNicsFor(id, c.name, to) : [];
      const inRequest = new Set(request.network?.mode === 'networks' ? request.network.endpoints.map((e) => e.network.id) : []);
      const connected = leased.filter((e) => !inRequest.has(e.network.id));
      let checkpoint: { bytes: number; ms: number } | undefined;
      if (live) {
        m.to('checkpointing');
        done.stoppedAt = Date.now();
        // a refusal (what CRIU cannot dump) leaves it running at the source: the rollback has nothing to restore
        checkpoint = await deps.bounded(id, 'checkpoint', src.checkpointContainer(id));
        done.checkpointed = saved;
        report({ checkpointBytes: checkpoint.bytes, checkpointMs: checkpoint.ms });
      }
      m.to('copying-layer');
      // from the first byte sent the destination may hold a layer for it (an answer lost on the way): a rollback removes it
      done.created = true;
      const layer = await carry(await deps.bounded(id, 'layer export', src.exportContainerLayer(id)), (bytes) => dst.importContainerLayer(id, request.imageChainId, bytes, request.storageBytes !== undefined ? { storageBytes: request.storageBytes } : {}),
        (n) => report({ layerBytes: n }), `the writable layer of ${c.name}`);
      result.layer = { bytes: layer.bytes, entries: layer.entries };
      m.to('copying-volumes');
      for (const v of volumes) {
        // a fresh volume of the same id and size at the destination (one a failed move left is replaced)
        await deps.bounded(id, 'volume removal', dst.removeVolume(v.id));
        await deps.bounded(id, 'volume create', dst.createVolume(v.id, v.sizeBytes));
        done.volumesMade.push(v.id);
        const got = await carry(await deps.bounded(id, 'volume export', src.exportVolume(v.id)), (bytes) => dst.importVolume(v.id, bytes),
          (n) => report({ volume: v.name, volumeBytes: n }), `volume ${v.name}`);
        result.volumes.push({ name: v.name, bytes: got.bytes, entries: got.entries });
      }
      if (live) {
        m.to('copying-checkpoint');
        await carry(await deps.bounded(id, 'checkpoint export', src.exportCheckpoint(id)), (bytes) => dst.importCheckpoint(id, bytes),
          (n) => report({ checkpointBytesSent: n }), `the checkpoint of ${c.name}`);
        m.to('restoring');
        const t = Date.now();
        state = await deps.bounded(id, 'restore', dst.restoreContainer(request));
        created = { warnings: state.warnings ?? [], runtime: state.runtime ?? 'runc' };
        result.live = { checkpointBytes: checkpoint!.bytes, checkpointMs: checkpoint!.ms, restoreMs: Date.now() - t };
      } else {
        m.to('creating');
        const made = await deps.bounded(id, 'create', dst.createContainer(request));
        created = { warnings: made.warnings, runtime: made.runtime };
      }
      for (const e of connected) await deps.bounded(id, 'connect', dst.connectContainer(id, { ...e, dnsNames: names }));
      m.to('copying-log');
      const logRefusal = await logsTooOld(src, dst, { from, to });
      if (logRefusal) {
        // an older agent moves the container without its log, as before protocol 8
        result.log = { bytes: 0, files: 0, skipped: logRefusal };
        log.warn('a moved container\'s log stays behind', { id, from, to, reason: logRefusal });
      } else {
        const got = await carry(await deps.bounded(id, 'log export', src.exportContainerLogs(id)), (bytes) => dst.importContainerLogs(id, bytes),
          (n) => report({ logBytes: n }), `the log of ${c.name}`);
        result.log = { bytes: got.bytes, files: got.entries };
      }
      if (wasRunning && !live) {
        m.to('starting');
        state = await deps.bounded(id, 'start', dst.startContainer(id));
      }
      m.to('switching');
      // the switch: one transaction moves the record and its volumes' rows to the destination
      const now = new Date().toISOString();
      const moved = await deps.store.transaction(async () => {
        for (const v of volumes) await deps.store.volumes.moveHost(v.id, to);
        return deps.store.containers.update(id, {
          host: to,
          ...(created ? { runtime: created.runtime, warnings: created.warnings } : {}),
          ...(wasRunning
            // live: the same processes, started when they were
            ? { status: 'running' as const, pid: state?.pid ?? null, startedAt: live && c.startedAt ? c.startedAt : now, finishedAt: null, exitCode: null, oomKilled: false, stoppedByUser: c.stoppedByUser }
            : {}),
        });
      });
      result.downtimeMs = wasRunning ? Date.now() - done.stoppedAt : 0;
      // the overlay's forwarding entries follow at once: it answers at the destination already
      deps.networks.endpointsMoved(id);
      deps.publish(moved, 'move', { from, to, downtimeMs: result.downtimeMs });
      if (wasRunning) {
        deps.publish(moved, 'start', { pid: moved.pid });
        if (state?.status === 'stopped') deps.exitMaybe(id); // it exited at once: recorded now the record names its host
      }
      m.to('cleaning');
    } catch (e) {
      if (!m.rollsBack) throw e;
      const failedIn = m.phase;
      m.to('rolling-back');
      await rollBack(deps, { c, from, to, wasRunning, done, error: e, failedIn });
      m.to('rolled-back');
      throw e;
    }
    // after the switch: the source's copy goes; a failure is logged (its reconcile removes what the store no longer holds there)
    await deps.bounded(id, 'source removal', src.removeContainer(id)).catch((x: unknown) => log.warn('removing a moved container at its source failed', { id, host: from, error: String(x) }));
    for (const v of volumes) {
      await deps.bounded(id, 'source volume removal', src.removeVolume(v.id)).catch((x: unknown) => log.warn('removing a moved volume at its source failed', { id: v.id, host: from, error: String(x) }));
    }
    // the source's endpoint is gone now: its host's entries pushed again (a learned one of the old port is not left)
    deps.networks.endpointsMoved(id);
    m.to('done');
    result = { ...result, totalMs: Date.now() - t0 };
    report({ ...result, phase: 'done' });
    log.info('container moved', { id, name: c.name, from, to, live, totalMs: result.totalMs, downtimeMs: result.downtimeMs, layerBytes: result.layer.bytes, logBytes: result.log.bytes });
    return result;
  });
}

/** Back to the source: the destination's copy and volumes gone, the claims back, the container started again if it ran. */
async function rollBack(
  deps: MoveDeps,
  r: { c: ContainerRecord; from: string; to: string; wasRunning: boolean; done: { claims: string[]; volumesMade: string[]; created: boolean; checkpointed?: ContainerCreateRequest | undefined }; error: unknown; failedIn: MovePhase },
): Promise<void> {
  const { c, from, to } = r;
  const dst = deps.agentOn(to);
  const warn = (what: string) => (x: unknown) => log.warn(`move rollback: ${what} failed`, { id: c.id, from, to, error: String(x) });
  if (r.done.created) await deps.bounded(c.id, 'removal', dst.removeContainer(c.id)).catch(warn('removing the destination\'s copy'));
  for (const v of r.done.volumesMade) await deps.bounded(c.id, 'volume removal', dst.removeVolume(v)).catch(warn(`removing volume ${v} at the destination`));
  for (const consumer of r.done.claims) await deps.scheduler.moveClaim(consumer, from).catch(warn(`moving claim ${consumer} back`));
  // the record never left the source; started again there if it ran (a failure is the caller's to see in the log: the move's error is the one thrown)
  const now = await deps.store.containers.get(c.id);
  if (now && now.host !== from) {
    log.error('move rollback: the record names another host than the source', { id: c.id, host: now.host, from });
    return;
  }
  // checkpointed (a live move): restored at the source from the images it kept, its processes continuing; else started afresh
  const restored = r.done.checkpointed
    ? await deps.bounded(c.id, 'restore at the source', deps.agentOn(from).restoreContainer(r.done.checkpointed)).then(() => true, (x: unknown) => {
      warn('restoring it at the source')(x);
      return false;
    })
    : false;
  if (r.wasRunning && now && !restored && r.done.checkpointed) {
    // its processes are lost: started afresh at the source (the record says running, so not through deps.start)
    await deps.bounded(c.id, 'start at the source', deps.agentOn(from).startContainer(c.id)).then(async (st) => {
      const rec = await deps.store.containers.update(c.id, { status: 'running', pid: st.pid ?? null, startedAt: st.startedAt ?? new Date().toISOString(), finishedAt: null, exitCode: null });
      deps.publish(rec, 'start', { pid: rec.pid });
    }, warn('starting it again at the source'));
  } else if (r.wasRunning && now && now.status !== 'running') await deps.start(c.id).catch(warn('starting it again at the source'));
  if (now) deps.publish(now, 'move-failed', { from, to, phase: r.failedIn, error: textForAnyone(r.error) });
  log.warn('container move rolled back', { id: c.id, from, to, phase: r.failedIn, error: logMessage(r.error) });
}

