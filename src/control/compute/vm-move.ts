/**
 * A running VM to another host: live migration (docs/vms.md, "Live migration": the guest runs on
 * while its RAM, and its block volumes' data, cross; it stops only for the last pass and resumes
 * at the destination), or, when its host is dead, rebuilt there from its images (healing.ts: an
 * --ha VM). Either way the scheduler's claim moves first, with its capacity check, and back on a
 * failure; the boot images go to the destination first; the record names the destination only
 * once the VM runs there; quota is unchanged.
 */
import type { MigrationTls } from '../../agent/drivers/vm/migration-tls.js';
import { Conflict, InvalidArgument, NotFound, textForAnyone } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { VmCreateRequest, VmHostState, VmMigrationSpec } from '../../agent/agent.js';
import { migrateLive, type MigrationReport } from '../../agent/migration.js';
import { spokenProtocol, tooOldForVolumeMigration } from '../../agent/remote/agent-protocol.js';
import type { Store } from '../../store/store.js';
import type { OperationRecord, VmConfig, VmRecord } from '../../store/records.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';
import type { OperationService } from '../operations/operations.js';
import type { NetworkService } from '../networks/network-service.js';
import type { DiskImageService } from '../images/disk-image-service.js';
import type { Scheduler } from '../scheduler/types.js';
import type { HostAgents } from './hosts.js';

const log = logger('compute-vm');

/**
 * Why a VM cannot be rebuilt on another host from what the control plane holds (an --ha VM must
 * not need its host); undefined when it can: its boot files are images of the image service and
 * it has no block volume (a volume's data is on its host).
 */
export function vmRebuildRefusal(config: VmConfig): string | undefined {
  for (const [role, image] of [['disk', config.diskImage], ['kernel', config.kernelImage], ['initrd', config.initrdImage]] as const) {
    if (config[role] !== undefined && image === undefined) return `its ${role} is a host file (${config[role]}), which another host does not have`;
  }
  if (config.volumes?.length) return 'it has block volumes, whose data is on its host';
  return undefined;
}

/** Most a migration may stop the guest for (QEMU's default limit is 300 ms). */
const MAX_DOWNTIME_LIMIT_MS = 60_000;

/** What moving a VM needs of the VM service. */
export interface VmMoveDeps {
  store: Store;
  agents: HostAgents;
  scheduler: Pick<Scheduler, 'moveClaim'>;
  operations: Pick<OperationService, 'start'>;
  networks?: Pick<NetworkService, 'vmNicsFor' | 'endpointsMoved'> | undefined;
  disks?: Pick<DiskImageService, 'ensureOnHost'> | undefined;
  /** A VM by id or name. */
  get(idOrName: string): Promise<VmRecord>;
  /** Its record now (NotFound when it is gone). */
  current(id: string): Promise<VmRecord>;
  /** The VM's lifecycle lock. */
  locked<T>(id: string, fn: () => Promise<T>): Promise<T>;
  /** Records it running with the host's state, and publishes `action`. */
  running(id: string, state: VmHostState, action: string, attributes?: Record<string, unknown>): Promise<VmRecord>;
  publish(v: VmRecord, action: string, attributes?: Record<string, unknown>): void;
  /**
   * A certificate for one migration, for one agent (short-lived, named `migration.AGENT`): QEMU
   * holds it instead of the agent's own (docs/security.md). Absent: the agents use their own.
   */
  migrationCredentials?: ((agent: string) => Promise<MigrationTls>) | undefined;
}

/**
 * Live migration to another agent, as an Operation: the destination waits for the stream,
 * the source pre-copies RAM while the guest runs and stops it only for the last pass, the
 * guest resumes at the destination. Checked before the operation starts, so a VM that
 * cannot move now is a plain error, not a failed operation.
 */
export async function startMigrate(deps: VmMoveDeps, idOrName: string, to: string, opts: { maxDowntimeMs?: number } = {}): Promise<OperationRecord> {
  const v = await deps.get(idOrName);
  checkMigration(deps, v, to, opts);
  await movingVolumes(deps, v, to);
  return deps.operations.start('vm.migrate', v.id, v.projectId, () => migrateVm(deps, v.id, to, opts));
}

/**
 * The block volumes that move with the VM (their data mirrored like its root disk), or a
 * Conflict saying why one cannot: a shared volume (other VMs may hold it on this host), one with
 * snapshots (they and the clones made from them stay on the host: remove them first), both
 * agents able to carry volumes (protocol 9).
 */
async function movingVolumes(deps: Pick<VmMoveDeps, 'store' | 'agents'>, v: VmRecord, to: string): Promise<VolumeRecord[]> {
  const attached = v.config.volumes ?? [];
  if (!attached.length) return [];
  const out: VolumeRecord[] = [];
  for (const a of attached) {
    const vol = await deps.store.volumes.get(a.volumeId);
    if (!vol) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${a.volumeId} has no record`);
    if (vol.shared) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${vol.name} is shared (other VMs on host ${vol.host} may hold it); detach it first`, { volume: vol.name });
    if (vol.host !== v.agent) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${vol.name} is on host ${vol.host}, not the VM's ${v.agent}`, { volume: vol.name });
    const snaps = await deps.store.volumes.listSnapshots({ volumeId: vol.id });
    if (snaps.length) throw new Conflict(`cannot migrate VM ${v.name}: its volume ${vol.name} has ${snaps.length} snapshot(s), which stay on host ${vol.host} with the clones made from them; remove them first`, { volume: vol.name });
    out.push(vol);
  }
  for (const [agent, host] of [[deps.agents.get(v.agent), v.agent], [deps.agents.get(to), to]] as const) {
    const version = await spokenProtocol(agent);
    const refusal = version === undefined ? undefined : tooOldForVolumeMigration(version, host);
    if (refusal) throw refusal;
  }
  return out;
}

function checkMigration(deps: Pick<VmMoveDeps, 'agents' | 'networks'>, v: VmRecord, to: string, opts: { maxDowntimeMs?: number }): void {
  if (!deps.agents.has(to)) throw new NotFound(`no such agent: ${to}`, { agent: to });
  if (to === v.agent) throw new InvalidArgument(`VM ${v.name} is on agent ${to} already`);
  if (v.status !== 'running') throw new Conflict(`cannot migrate VM ${v.name}: it is ${v.status}; only a running VM migrates live`);
  if (v.config.networks?.length && !deps.networks) throw new InvalidArgument(`cannot migrate VM ${v.name}: it has NICs and networks are not available here`);
  const d = opts.maxDowntimeMs;
  if (d !== undefined && (!Number.isInteger(d) || d < 1 || d > MAX_DOWNTIME_LIMIT_MS)) throw new InvalidArgument(`max downtime must be 1–${MAX_DOWNTIME_LIMIT_MS} ms, got ${d}`);
}

/** The five steps of a live migration across agents (see docs/vms.md); on failure the guest goes on at the source. */
export async function migrateVm(deps: VmMoveDeps, idOrName: string, to: string, opts: { maxDowntimeMs?: number } = {}): Promise<MigrationReport & { from: string; to: string }> {
  const v = await deps.get(idOrName);
  return deps.locked(v.id, async () => {
    const cur = await deps.current(v.id);
    checkMigration(deps, cur, to, opts);
    const volumes = await movingVolumes(deps, cur, to);
    const from = cur.agent;
    const src = deps.agents.get(cur.agent);
    const dst = deps.agents.get(to);
    let next = cur;
    // each volume's file at the destination, empty, of its size: the source mirrors into it
    const made: string[] = [];
    const dropMade = async () => {
      for (const id of made) await dst.removeBlockVolume(id).catch((e: unknown) => log.warn('removing a volume a failed migration made failed', { id, agent: to, error: String(e) }));
    };
    // the host files it boots from, as the destination has them (images carried there first); the record takes them when it moves
    let atDestination: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> = {};
    // the destination's capacity is claimed first, the VM's and its volumes' (checked atomically by
    // the scheduler, as a container move does); a failed move gives it back
    const claims = [v.id, ...volumes.map((vol) => vol.id)];
    const claimed: string[] = [];
    const claimsBack = async (at: string) => {
      for (const consumer of claimed) await deps.scheduler.moveClaim(consumer, at).catch((x: unknown) => log.warn('moving a claim back failed', { id: consumer, error: String(x) }));
    };
    try {
      for (const consumer of claims) {
        await deps.scheduler.moveClaim(consumer, to);
        claimed.push(consumer);
      }
      for (const vol of volumes) {
        made.push(vol.id);
        await dst.createBlockVolume(vol.id, vol.sizeBytes, {});
      }
    } catch (e) {
      await dropMade();
      await claimsBack(from);
      throw e;
    }
    // both sides' certificates for this migration alone, when the source can send over TLS at all:
    // it has a certificate of its own, or says it takes a minted one without (protocol 14: an agent
    // on a unix socket; an older one without a certificate may not take minted ones, and sends in
    // clear). A destination of protocol 10 or older is sent none and answers plain without one of its own.
    let minted: { src: MigrationTls; dst: MigrationTls } | undefined;
    const { report: moved } = await migrateLive(
      v.id,
      {
        spec: async () => {
          const spec = await src.vmMigrationSpec(v.id);
          if ((!spec.tls && !spec.takesMintedCredentials) || !deps.migrationCredentials) return spec;
          minted = { src: await deps.migrationCredentials(from), dst: await deps.migrationCredentials(to) };
          // the destination takes the source's certificate of this move, not any the source agent had
          return { ...spec, tls: minted.src.name };
        },
        send: (uri, o) => src.migrateVmOut(v.id, uri, minted && o.tls ? { ...o, credentials: minted.src } : o),
        // once the guest runs at the destination, a source that cannot let go is only logged
        end: (outcome) => src.endVmMigration(v.id, outcome).catch((e: unknown) => {
          if (outcome === 'resume') throw e;
          log.warn('ending the source half of a migration failed', { id: v.id, agent: from, error: String(e) });
        }),
      },
      {
        prepare: async (spec) => {
          const moving = await specAt(deps, cur, spec, to);
          atDestination = moving.paths;
          return dst.prepareVmIncoming(minted ? { ...moving.spec, credentials: minted.dst } : moving.spec);
        },
        // The guest runs at the destination now: the record says so before the source lets go.
        // (Here, not in migrateLive's synchronous `arrived`: the write is awaited, and if it fails
        // the migration is undone like any failed finish, so the guest goes on where recorded.)
        finish: async (h) => {
          const fin = await dst.finishVmIncoming(v.id, h);
          next = await deps.store.vms.update(v.id, { agent: to, status: 'running', pid: fin.state.pid ?? null, ...(Object.keys(atDestination).length ? { config: { ...cur.config, ...atDestination } } : {}) });
          // its volumes are the destination's now (their files there have every write the guest made)
          for (const vol of volumes) await deps.store.volumes.moveHost(vol.id, to);
          // the overlay's forwarding entries follow now: the guest answers at the destination already
          if (cur.config.networks?.length) deps.networks?.endpointsMoved(v.id);
          return fin;
        },
        abandon: () => dst.abandonVmIncoming(v.id),
      },
      {
        ...(opts.maxDowntimeMs !== undefined ? { maxDowntimeMs: opts.maxDowntimeMs } : {}),
        // the VM's project reads its events: QEMU's words without the destination's address, no host path
        failed: (e) => deps.publish(cur, 'migrate-failed', { from, to, error: textForAnyone(e) }),
      },
    ).catch(async (e: unknown) => {
      // the guest goes on at the source (or, if the record moved, where it says): the claim follows the record
      const at = (await deps.store.vms.get(v.id))?.agent ?? from;
      if (at !== to) {
        await claimsBack(at);
        await dropMade(); // the source's volumes are the ones the guest writes
      }
      throw e;
    });
    // the source's copies of its volumes go (its QEMU has let go); a failure leaves them to the host's reconcile
    for (const vol of volumes) await src.removeBlockVolume(vol.id).catch((e: unknown) => log.warn('removing a moved volume at its old host failed', { id: vol.id, agent: from, error: String(e) }));
    const report = { ...moved, from, to };
    deps.publish(next, 'migrate', { ...report });
    log.info('vm migrated', { ...report });
    return report;
  });
}

/**
 * An --ha VM of a host that does not answer, made again on `to` (healing.ts): from its images
 * (a fresh overlay over its disk image: what the dead host held is not reachable), with its id,
 * name, size and NICs (same addresses, hence MACs), then started. The claim moves first (the
 * capacity checked); the record names `to` only once the VM runs there. Quota is unchanged.
 */
export async function rebuildVm(deps: VmMoveDeps, id: string, to: string): Promise<VmRecord> {
  return deps.locked(id, async () => {
    const cur = await deps.current(id);
    const from = cur.agent;
    const why = vmRebuildRefusal(cur.config);
    if (why) throw new Conflict(`VM ${cur.name} cannot be rebuilt on another host: ${why}`);
    if (cur.status !== 'running' && cur.status !== 'paused') throw new Conflict(`VM ${cur.name} is ${cur.status}: only a running VM is rebuilt`);
    // refused before the claim moves, as a migration refuses it (checkMigration)
    if (cur.config.networks?.length && !deps.networks) throw new Conflict(`VM ${cur.name} cannot be rebuilt on another host: it has NICs and networks are not available here`);
    const dst = deps.agents.get(to);
    await deps.scheduler.moveClaim(id, to);
    let created = false;
    try {
      const config: VmConfig = { ...cur.config, ...(await imagesOn(deps, cur.config, to)) };
      const req: VmCreateRequest = { id, name: cur.name, ...config };
      if (cur.config.networks?.length) req.nics = await deps.networks!.vmNicsFor(id, cur.name, to);
      created = true; // from the call on, the destination may hold it
      await dst.createVm(req);
      const state = await dst.startVm(id);
      await deps.store.vms.update(id, { agent: to, config });
      if (cur.config.networks?.length) deps.networks?.endpointsMoved(id);
      const v = await deps.running(id, state, 'start');
      deps.publish(v, 'heal', { from, to });
      log.warn('VM rebuilt on another host: its host does not answer', { id, name: v.name, from, to });
      return v;
    } catch (e) {
      if (created) await dst.removeVm(id).catch(() => undefined);
      await deps.scheduler.moveClaim(id, from).catch((x: unknown) => log.warn('moving a claim back after a failed rebuild failed', { id, error: String(x) }));
      throw e;
    }
  });
}

/** The VM's boot files from the image service at `to`'s paths (carried there when it lacks them); host paths are not here. */
async function imagesOn(deps: Pick<VmMoveDeps, 'agents' | 'disks'>, config: VmConfig, to: string): Promise<Pick<VmConfig, 'disk' | 'kernel' | 'initrd'>> {
  const paths: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> = {};
  for (const [role, image] of [['kernel', config.kernelImage], ['initrd', config.initrdImage], ['disk', config.diskImage]] as const) {
    if (!image) continue;
    if (!deps.disks) throw new InvalidArgument('images for VMs are not available');
    paths[role] = await deps.disks.ensureOnHost({ ...image, kind: role }, to, deps.agents);
  }
  return paths;
}

/**
 * The source's spec as the destination needs it: boot files at the destination's paths (images
 * carried there when it lacks them; host paths stay as they are, and the destination checks
 * them as a create would), the base under a local disk likewise, and the NICs with their
 * networks laid out there.
 */
async function specAt(deps: Pick<VmMoveDeps, 'agents' | 'disks' | 'networks'>, v: VmRecord, spec: VmMigrationSpec, to: string): Promise<{ spec: VmMigrationSpec; paths: Pick<VmConfig, 'disk' | 'kernel' | 'initrd'> }> {
  const paths = await imagesOn(deps, v.config, to);
  const config = { ...spec.config };
  if (paths.kernel) config.kernel = paths.kernel;
  if (paths.initrd) config.initrd = paths.initrd;
  const storage = spec.storage && (paths.disk && spec.storage.backing ? { ...spec.storage, backing: paths.disk } : spec.storage);
  const nics = v.config.networks?.length ? await deps.networks!.vmNicsFor(v.id, v.name, to) : [];
  return { spec: { ...spec, config, ...(storage ? { storage } : {}), ...(nics.length ? { nics } : {}) }, paths };
}
