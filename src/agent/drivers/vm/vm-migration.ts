/**
 * Live migration of a VM, both sides. Five steps, each on one side, so that the two sides can
 * be two agent processes (the control plane drives them over the agent protocol) or two
 * drivers in one (VmDriver.migrateTo):
 *   source: migrationSpec → destination: prepareIncoming → source: migrateOut
 *   → destination: finishIncoming → source: endMigration('moved')
 * On failure: destination abandonIncoming, source endMigration('resume').
 * RAM goes by QMP migrate, disks by an NBD mirror (disk-mirror.ts), over TLS when both agents
 * have a certificate (migration-tls.ts), on connections the agents make and hand to QEMU, which has
 * no network (qemu-peer-sockets.ts).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AlreadyExists, Conflict, InvalidArgument, NimbusError, NotFound, toNimbusError } from '../../../core/errors.js';
import { runOk } from '../../../core/exec.js';
import { logger } from '../../../core/log.js';
import { processAlive } from '../../../core/proc.js';
import { STREAM_TOKEN_BYTES, STREAM_TOKEN_PATTERN, type IncomingMigrationTarget, type MigrateOutOptions, type OutgoingMigration, type VmMigrationSpec } from '../../agent.js';
import { consoleBytes, forgetConsoleLog, type ConsoleLogLimits } from './console-log.js';
import { clearMirrors, endDiskExports, exportDisksForMigration, finishMirrors, ROOT_DISK, startMirrors, volumeDisk, type MovingDisk } from './disk-mirror.js';
import { acceptOnlyFrom, addTlsCreds, clearTls, sourceNames, useTlsForMigration, type MigrationTls } from './migration-tls.js';
import { blockVolumeNames, qemuArgv, type Accelerator } from './qemu.js';
import { launchQemu, readPid, sleep, withQmp } from './qemu-process.js';
import { QmpClient, type QmpEvent } from './qmp.js';
import { acceptOneForQemu, connectForQemu, takesDescriptors, tcpUriAddress, type OneConnection } from './qemu-peer-sockets.js';
import { pinVcpus } from './vcpu-pinning.js';
import { consoleHistory } from './vm-console.js';
import type { VmRecord, VmRecords } from './vm-record.js';
import type { VmRunner } from './vm-runner.js';
import { confinementOf, launchJailOf, prepareJail, qemuView, type QemuUsers } from './qemu-user.js';

// the driver's name: its log lines read as they did before migration had a file of its own
const log = logger('vm-driver');

/** The most a live migration may take, disk mirror included, before it is called off and the guest goes on here. */
const MIGRATION_TIMEOUT_MS = 300_000;

/** What the destination needs to rebuild the VM (the source's record less its host paths). */
export type MigrationSpec = VmMigrationSpec;

/** What a migration needs of the driver's settings. */
export interface MigrationOptions {
  /** The QEMU binary the destination launches. */
  readonly qemu: string;
  /** The driver's options, read when a migration runs: this host's accelerator and certificate. */
  readonly settings: { readonly accel: Accelerator; readonly tls?: MigrationTls };
  readonly consoleLimits: ConsoleLogLimits;
  /** The users VMs' QEMUs drop to (qemu-user.ts). */
  readonly users: QemuUsers;
}

export class VmMigration {
  /** Incoming live migrations in flight here: a QMP session open from before the stream starts. */
  private readonly incoming = new Map<string, IncomingMigration>();

  constructor(
    private readonly records: VmRecords,
    /** The arriving VM's exit is watched from finishIncoming on; the departed one's no longer. */
    private readonly exits: Pick<VmRunner, 'watch' | 'unwatch'>,
    private readonly o: MigrationOptions,
  ) {}

  /**
   * Source, step 1: what the destination needs. A local root disk goes with the VM (mirrored
   * over NBD while RAM moves): the spec says its size and the base image under the overlay, so
   * that the destination can make an overlay on its own copy of that base (a template's clone
   * is backed by this host's template: its whole disk travels). NICs are the agent's (taps).
   */
  async migrationSpec(id: string): Promise<MigrationSpec> {
    const r = await this.records.load(id);
    if (r.lifecycle !== 'running') throw new Conflict(`VM ${id} is ${r.lifecycle}; only a running VM migrates live`, { id });
    const shared = r.config.blockVolumes?.find((b) => b.shared);
    if (shared) throw new Conflict(`VM ${id} has the shared volume ${shared.volumeId} attached: other VMs may hold it on this host, so it cannot move with this one (detach it first)`, { id });
    const { paths: _hostPaths, ...config } = r.config;
    // without a certificate of its own it still sends over TLS with one minted for the move (protocol 14)
    const spec: MigrationSpec = { id: r.id, name: r.name, createdAt: r.createdAt, config: config as Record<string, unknown>, ...(r.pin ? { pin: r.pin } : {}), ...(this.o.settings.tls ? { tls: this.o.settings.tls.name } : { takesMintedCredentials: true }) };
    // a one-time secret the stream's connection opens with, when the agent makes that connection
    // (a QEMU launched by an older agent connects itself and could not send it)
    if (takesDescriptors(this.records.paths(id).qmpSocket)) spec.streamToken = randomBytes(STREAM_TOKEN_BYTES).toString('hex');
    if (r.config.rootDisk) {
      // -U: QEMU holds the image's lock while it runs; its header is all that is read
      const info = JSON.parse(await runOk('qemu-img', ['info', '-U', '--output=json', r.config.rootDisk.path])) as { 'virtual-size': number; 'full-backing-filename'?: string; 'backing-filename-format'?: string };
      const fmt = info['backing-filename-format'];
      spec.storage = {
        virtualSize: info['virtual-size'],
        ...(!r.template && info['full-backing-filename'] && (fmt === 'raw' || fmt === 'qcow2') ? { backing: info['full-backing-filename'], backingFormat: fmt } : {}),
      };
    }
    return spec;
  }

  /**
   * Destination, step 2: a QEMU with the VM's devices, waiting for the stream on host:port
   * (the agent listens there and hands QEMU the connection: QEMU has no network), *not* started
   * paused, so QEMU resumes the guest itself the moment the last pass is in (no QMP round trip
   * inside the downtime). Over TLS when both agents have a certificate: the port opens only once
   * the credentials are set (-incoming defer), so no plain stream is taken.
   */
  async prepareIncoming(spec: MigrationSpec, host: string): Promise<IncomingMigrationTarget> {
    const p = this.records.paths(spec.id);
    if (existsSync(p.record)) throw new AlreadyExists(`VM ${spec.id} already exists at the destination`, { id: spec.id });
    const config = spec.config as unknown as VmRecord['config'];
    if (config.accel !== this.o.settings.accel) {
      throw new Conflict(`VM ${spec.id} runs under ${config.accel} and this host's VMs under ${this.o.settings.accel}; a migration needs the same accelerator`, { id: spec.id });
    }
    if (config.rootDisk && !spec.storage) throw new InvalidArgument(`VM ${spec.id} has a root disk but the migration says nothing of its storage`, { id: spec.id });
    if (spec.streamToken !== undefined && !STREAM_TOKEN.test(spec.streamToken)) throw new InvalidArgument(`a migration's stream token is ${STREAM_TOKEN_BYTES * 2} hex digits`, { id: spec.id });
    // this migration's own certificate when the control plane minted one (QEMU never holds the agent's), else the agent's
    const mine = spec.credentials ?? this.o.settings.tls;
    const tls = spec.tls && mine ? mine : undefined;
    if (!tls) logInClear(spec.id, host, !mine ? 'this agent has no certificate' : 'the source agent has no certificate');
    const r: VmRecord = {
      id: spec.id, name: spec.name, createdAt: spec.createdAt, lifecycle: 'created',
      config: { ...config, paths: { qmpSocket: p.qmpSocket, consoleSocket: p.consoleSocket, consoleLog: p.consoleLog, pidFile: p.pidFile } },
    };
    if (spec.pin) r.pin = spec.pin;
    await mkdir(p.dir, { recursive: true, mode: 0o700 });
    try {
      await writeFile(p.consoleLog, '');
      if (spec.storage) {
        // an empty overlay of its own: on the same base (only the source overlay's clusters then
        // travel), or standalone of the disk's size (all of it does)
        const s = spec.storage;
        await runOk('qemu-img', s.backing
          ? ['create', '-q', '-f', 'qcow2', '-F', s.backingFormat ?? 'raw', '-b', path.resolve(s.backing), p.overlay]
          : ['create', '-q', '-f', 'qcow2', p.overlay, String(s.virtualSize)]);
        r.config.rootDisk = { path: p.overlay, format: 'qcow2' };
      }
      const confined = confinementOf(this.o.users, r, p.dir, this.o.qemu);
      await prepareJail(confined);
      const launched = await launchQemu(this.o.qemu, qemuArgv({ ...r.config, startPaused: false, incoming: 'defer', ...confined }), p, launchJailOf(r.config, confined));
      r.qemuPid = launched.qemuPid;
      r.supervisorPid = launched.supervisorPid;
      await this.records.save(r);
      const events = await QmpClient.connect(p.qmpSocket, { timeoutMs: 5000 });
      // listen before the stream starts: the guest may resume before anyone asks
      const resumed = events.waitForEvent('RESUME', 300_000);
      resumed.catch(() => undefined);
      const incoming: IncomingMigration = { events, resumed, tls: !!tls };
      this.incoming.set(spec.id, incoming);
      if (tls) {
        await addTlsCreds(events, tls, 'server', qemuView(launched.qemuPid));
        await useTlsForMigration(events);
        // only from the source the control plane named, not from any certificate of the CA
        if (spec.tls) await acceptOnlyFrom(events, sourceNames(spec.tls));
      }
      // the agent takes the stream's connection and hands it to QEMU, which has no network (qemu-peer-sockets.ts)
      // (only after the move's token when the source sent one: a stranger's connection does not fail it)
      incoming.stream = await acceptOneForQemu(p.qmpSocket, host, INCOMING_STREAM, { execute: 'migrate-incoming', arguments: { uri: `fd:${INCOMING_STREAM}` } }, { context: { id: spec.id }, ...(spec.streamToken ? { token: spec.streamToken } : {}) });
      const uri = `tcp:${host.includes(':') ? `[${host}]` : host}:${incoming.stream.port}`;
      const exports = await exportDisksForMigration(events, p.qmpSocket, host, movingDisks(r.config), !!tls, !!(tls && spec.tls));
      const { root: nbd, ...volumes } = exports;
      return { uri, ...(nbd ? { nbd } : {}), ...(Object.keys(volumes).length ? { nbdVolumes: volumes } : {}), ...(tls ? { tls: tls.name } : {}), ...(spec.streamToken ? { checksStreamToken: true } : {}) };
    } catch (e) {
      await this.abandonIncoming(spec.id);
      throw e;
    }
  }

  /**
   * Source, step 3: QMP migrate with the downtime limit and a high bandwidth cap (loopback);
   * QEMU pre-copies RAM while the guest runs and stops it only for the final pass. On
   * failure the guest goes on here.
   */
  migrateOut(id: string, uri: string, opts: MigrateOutOptions): Promise<OutgoingMigration> {
    return this.records.locked(id, async () => {
      const r = await this.records.load(id);
      if (r.lifecycle !== 'running') throw new Conflict(`VM ${id} is ${r.lifecycle}; only a running VM migrates live`, { id });
      if (r.config.rootDisk && !opts.nbd) throw new Conflict(`VM ${id} has a local disk and the destination offers nothing to copy it into`, { id });
      const lacking = r.config.blockVolumes?.find((b) => !opts.nbdVolumes?.[b.volumeId]);
      if (lacking) throw new Conflict(`VM ${id} has volume ${lacking.volumeId} attached and the destination offers nothing to copy it into (an agent of protocol 8 or older: volumes stay)`, { id });
      const disks = movingDisks(r.config);
      const targets = disks.map((d) => ({ disk: d, nbd: d.key === 'root' ? opts.nbd! : opts.nbdVolumes![d.key]!, wholeDisk: d.key === 'root' ? !!r.template : true }));
      const tls = opts.tls ? (opts.credentials ?? this.o.settings.tls) : undefined;
      if (opts.tls && !tls) throw new Conflict(`the destination takes VM ${id} over TLS only and this agent has no certificate`, { id });
      if (!opts.tls) logInClear(id, tcpUriAddress(uri)?.host ?? uri, 'the destination asked for no TLS');
      const p = this.records.paths(id);
      const t0 = performance.now();
      const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
      let stoppedAt: number | undefined;
      let downtimeLimitMs: number | undefined;
      let info: QmpMigrateInfo | undefined;
      let diskBytes = 0;
      let volumeBytes: Record<string, number> = {};
      let switched = false;
      try {
        await withQmp(p, async (c) => {
          const off = c.onEvent((e) => {
            if (e.event === 'STOP') stoppedAt = e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000;
          });
          try {
            if (tls) {
              await addTlsCreds(c, tls, 'client', qemuView(r.qemuPid));
              await useTlsForMigration(c, opts.tls);
            }
            await c.execute('migrate-set-parameters', { 'downtime-limit': opts.maxDowntimeMs, 'max-bandwidth': opts.maxBandwidthBytes ?? 4 * 1024 ** 3 });
            // the limit as QEMU holds it, for the report: what was honoured, not what was asked
            downtimeLimitMs = (await c.execute<{ 'downtime-limit'?: number }>('query-migrate-parameters'))['downtime-limit'];
            // the disks first, until both sides are in sync; they stay in sync while RAM moves.
            // A QEMU without a network takes its connections from the agent (qemu-peer-sockets.ts)
            const connectFor = takesDescriptors(p.qmpSocket) ? p.qmpSocket : undefined;
            await startMirrors(c, targets, { deadline, ...(opts.tls ? { tlsPeer: opts.tls } : {}), ...(connectFor ? { connectFor } : {}) });
            if (connectFor) {
              const to = tcpUriAddress(uri);
              if (!to) throw new InvalidArgument(`not a tcp:HOST:PORT migration URI: ${uri}`);
              await connectForQemu(connectFor, to.host, to.port, OUTGOING_STREAM, { execute: 'migrate', arguments: { uri: `fd:${OUTGOING_STREAM}` } }, opts.streamToken).catch((e: unknown) => {
                throw new NimbusError('Internal', `migration of ${id} failed: ${toNimbusError(e).message}`, undefined, { cause: e });
              });
            } else {
              if (opts.streamToken) throw new Conflict(`VM ${id}'s QEMU connects by itself (launched by an older agent) and cannot send the stream's token the destination waits for`, { id });
              await c.execute('migrate', { uri });
            }
            for (;;) {
              const m = await c.execute<QmpMigrateInfo>('query-migrate');
              if (m.status === 'completed') {
                info = m;
                break;
              }
              // the guest is stopped here (only with disks: pause-before-switchover): their last writes go first
              if (m.status === 'pre-switchover' && !switched) {
                switched = true; // the state lingers a moment after migrate-continue
                const { root, ...volumes } = await finishMirrors(c, disks, deadline);
                diskBytes = root ?? 0;
                volumeBytes = volumes;
              }
              if (m.status === 'failed' || m.status === 'cancelled') throw new NimbusError('Internal', `migration of ${id} failed: ${m['error-desc'] ?? m.status}`);
              if (Date.now() > deadline) throw new NimbusError('Unavailable', `migration of ${id} did not complete within ${MIGRATION_TIMEOUT_MS / 1000} s`);
              await sleep(5);
            }
          } catch (e) {
            if (disks.length) await c.execute('migrate_cancel').catch(() => undefined);
            throw e;
          } finally {
            off();
            await clearMirrors(c, disks);
            // after the mirror's NBD client, which holds the credentials
            if (tls) await clearTls(c);
          }
        }, MIGRATION_TIMEOUT_MS + 5_000);
      } catch (e) {
        await this.resumeHere(id);
        throw withoutDestination(e, [uri, opts.nbd, ...Object.values(opts.nbdVolumes ?? {})]);
      }
      // the console's history travels with the VM (complete now: the guest no longer runs here)
      const history = await consoleBytes(p.consoleLog, this.o.consoleLimits, consoleHistory(p));
      return {
        ...(stoppedAt !== undefined ? { stoppedAt } : {}),
        qemuDowntimeMs: info?.downtime ?? -1,
        ...(downtimeLimitMs !== undefined ? { downtimeLimitMs } : {}),
        totalMs: Math.round(performance.now() - t0),
        bytes: info?.ram?.transferred ?? 0,
        iterations: info?.ram?.['dirty-sync-count'] ?? 0,
        diskBytes,
        ...(Object.keys(volumeBytes).length ? { volumeBytes } : {}),
        tls: !!tls,
        consoleHistory: history.toString('base64'),
      };
    });
  }

  /** Destination, step 4: the guest resumed here; record it running and pin its vCPUs. */
  async finishIncoming(id: string, history: string): Promise<{ resumedAt: number }> {
    const incoming = this.incoming.get(id);
    if (!incoming) throw new NotFound(`no incoming migration of VM ${id} here`, { id });
    const c = incoming.events;
    try {
      // waited for outside the lock: an abandon (which takes it) must be able to end the wait
      const ev = await incoming.resumed;
      return await this.records.locked(id, () => this.recordArrived(id, incoming, ev, history));
    } finally {
      this.incoming.delete(id);
      incoming.stream?.close();
      c.close();
    }
  }

  private async recordArrived(id: string, incoming: IncomingMigration, ev: QmpEvent, history: string): Promise<{ resumedAt: number }> {
    if (this.incoming.get(id) !== incoming) throw new Conflict(`the incoming migration of VM ${id} was abandoned`, { id });
    incoming.recording = true;
    const p = this.records.paths(id);
    const c = incoming.events;
    const resumedAt = ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
    const r = JSON.parse(await readFile(p.record, 'utf8')) as VmRecord;
    await endDiskExports(c, movingDisks(r.config));
    // its next migration makes credentials of its own (as a source) and may go plain
    if (incoming.tls) await clearTls(c);
    // peers and switches learn where the guest is now (QEMU announces once by itself as well;
    // this round follows the host's taps being up, whatever the timing of the stream's end)
    if (r.config.nics.length) await c.execute('announce-self', { initial: 50, max: 550, rounds: 5, step: 100 }).catch((e: unknown) => log.warn('announce-self failed', { id, error: String(e) }));
    await writeFile(consoleHistory(p), Buffer.from(history, 'base64'));
    r.pinning = r.pin?.length ? await pinVcpus(c, r.pin) : [];
    r.lifecycle = 'running';
    r.startedAt = new Date().toISOString();
    await this.records.save(r);
    this.exits.watch(id);
    return { resumedAt };
  }

  /** Destination, on failure: nothing of the half-arrived VM stays. */
  async abandonIncoming(id: string): Promise<void> {
    // ends a finishIncoming still waiting for the resume; one already recording the arrival
    // holds the lock, and is removed after it rather than under it
    const incoming = this.incoming.get(id);
    incoming?.stream?.close();
    if (incoming && !incoming.recording) incoming.events.close();
    this.incoming.delete(id);
    await this.records.locked(id, () => this.removeArrival(id));
  }

  private async removeArrival(id: string): Promise<void> {
    const p = this.records.paths(id);
    const pid = await readPid(p.pidFile).catch(() => undefined);
    const supervisor = await readPid(p.supervisorPidFile).catch(() => undefined);
    if (processAlive(pid, p.qmpSocket)) process.kill(pid!, 'SIGKILL');
    for (let i = 0; i < 200 && processAlive(pid, p.qmpSocket); i++) await sleep(10);
    // its supervisor records QEMU's end in this directory: a removal racing it fails with ENOTEMPTY
    for (let i = 0; i < 100 && processAlive(supervisor); i++) await sleep(10);
    await rm(p.dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
    forgetConsoleLog(p.consoleLog);
    this.o.users.release(id);
  }

  /**
   * Source, step 5. 'moved': the source QEMU (left in postmigrate) quits and its directory
   * goes, without calling it a stop. 'resume': the destination failed; the guest goes on here.
   */
  endMigration(id: string, outcome: 'moved' | 'resume'): Promise<void> {
    return this.records.locked(id, async () => {
      if (outcome === 'resume') return this.resumeHere(id);
      const r = await this.records.load(id);
      const p = this.records.paths(id);
      this.exits.unwatch(id);
      await withQmp(p, (c) => c.execute('quit')).catch(() => undefined);
      for (let i = 0; i < 500 && processAlive(r.qemuPid, p.qmpSocket); i++) await sleep(10);
      if (processAlive(r.qemuPid, p.qmpSocket)) process.kill(r.qemuPid!, 'SIGKILL');
      for (let i = 0; i < 100 && processAlive(r.supervisorPid); i++) await sleep(10);
      await rm(p.dir, { recursive: true, force: true });
      // its console log's in-memory state goes too, as delete's does (one entry a VM that left, kept for ever before)
      forgetConsoleLog(p.consoleLog);
      this.o.users.release(id);
      log.info('vm migrated away', { id });
    });
  }

  /** After a failed or abandoned migration the source QEMU may be paused or postmigrate: let the guest run. */
  private async resumeHere(id: string): Promise<void> {
    await withQmp(this.records.paths(id), async (c) => {
      const st = await c.execute<{ status: string }>('query-status');
      if (st.status !== 'running') await c.execute('cont');
    }).catch((e: unknown) => log.warn('resuming a VM after a failed migration failed', { id, error: String(e) }));
  }
}

/** The disks that move with a VM: its local root disk, then its block volumes (disk-mirror.ts). */
function movingDisks(config: VmRecord['config']): MovingDisk[] {
  return [...(config.rootDisk ? [ROOT_DISK] : []), ...(config.blockVolumes ?? []).map((b) => volumeDisk(b.volumeId, blockVolumeNames(b.volumeId).node))];
}

/** A migration's stream token as the wire has it (VmMigrationSpec.streamToken; the schema checks the same). */
const STREAM_TOKEN = new RegExp(STREAM_TOKEN_PATTERN);

/** The names a migration's stream is handed to QEMU under (qemu-peer-sockets.ts). */
const INCOMING_STREAM = 'migration-in';
const OUTGOING_STREAM = 'migration-out';

interface IncomingMigration {
  /** The port the stream's connection is awaited on, until it came (or the migration is given up). */
  stream?: OneConnection;
  /** A QMP session on the destination, open from before the stream starts. */
  events: QmpClient;
  resumed: Promise<QmpEvent>;
  /** Its streams are TLS (the credentials object is in the QEMU until the guest runs here). */
  tls: boolean;
  /** finishIncoming is recording the arrival (under the VM's lock): an abandon waits for it, then removes. */
  recording?: boolean;
}

interface QmpMigrateInfo {
  status?: string;
  'error-desc'?: string;
  downtime?: number;
  'total-time'?: number;
  ram?: { transferred?: number; 'dirty-sync-count'?: number };
}

/**
 * A failed outgoing migration's error without the destination's address, which QEMU's words
 * name ("Failed to connect to '10.0.0.2:4444'"): the VM's owner reads "the destination" (an
 * event, an operation), administrators and the log the whole (adminMessage).
 */
function withoutDestination(e: unknown, targets: ReadonlyArray<string | undefined>): unknown {
  const addresses = new Set<string>();
  for (const t of targets) {
    if (!t) continue;
    // tcp:HOST:PORT, tcp:[V6]:PORT, nbd://HOST:PORT/EXPORT
    const m = /^(?:tcp:|nbd:\/\/)(\[([^\]]+)\]|[^:/]+):(\d+)/.exec(t);
    if (!m) continue;
    const host = m[2] ?? m[1]!;
    for (const a of [t, `${m[1]}:${m[3]}`, `${host}:${m[3]}`, m[1]!, host]) addresses.add(a);
  }
  const err = toNimbusError(e);
  let message = err.message;
  for (const a of [...addresses].sort((x, y) => y.length - x.length)) message = message.split(a).join('the destination');
  if (message === err.message) return e;
  return new NimbusError(err.code, message, err.details, { cause: e, adminMessage: err.adminMessage ?? err.message });
}

/** A migration whose streams go plain: expected on one host (loopback), worth a warning across hosts. */
function logInClear(id: string, host: string, reason: string): void {
  const local = host === 'localhost' || host === '::1' || host.startsWith('127.');
  log[local ? 'info' : 'warn']('live migration streams in clear (no TLS)', { id, host, reason });
}
