/**
 * Health checks (Docker's HEALTHCHECK, --health-cmd): while a container with a healthcheck runs,
 * its command is run in it every interval through the container service's exec (the same path
 * and checks as `nimbus exec`), and the outcome kept on its record as Docker keeps State.Health:
 * `starting` until the first success (failures during the start period do not count), then
 * `healthy`, or `unhealthy` after `retries` failures in a row; the last 5 probes with their exit
 * code and output. A change of status is published as Docker's `health_status: …` event.
 *
 * It runs on the leader only (one prober across replicas); the record is what every replica
 * shows. A probe over its timeout counts as failed (exit -1); its process is left to end by
 * itself (exec has no kill yet).
 */
import { textForAnyone } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { ContainerHealth, ContainerRecord, HealthcheckConfig, HealthProbe } from '../../store/records.js';
import type { Store } from '../../store/store.js';
import type { EventBus, NimbusEvent } from '../events/event-bus.js';
import type { ExecRequest, ExecSession } from '../../agent/drivers/instance-driver.js';

const log = logger('health');

export const HEALTH_DEFAULTS = { intervalMs: 30_000, timeoutMs: 30_000, retries: 3, startPeriodMs: 0 } as const;
/** Probes kept on the record, and the bytes of output kept of each (Docker's). */
const KEEP_PROBES = 5;
const MAX_OUTPUT = 4096;

/** The argv a healthcheck runs; undefined for NONE (or an empty test). */
export function probeArgs(test: readonly string[]): string[] | undefined {
  const [kind, ...rest] = test;
  if (kind === 'CMD-SHELL') return rest.length ? ['/bin/sh', '-c', rest.join(' ')] : undefined;
  if (kind === 'CMD') return rest.length ? rest : undefined;
  return undefined;
}

/**
 * The health after one probe: pure. `inStartPeriod`: a failure then does not count (the status
 * stays starting), a success ends the start period as Docker's does.
 */
export function nextHealth(prev: ContainerHealth, probe: HealthProbe, retries: number, inStartPeriod: boolean): ContainerHealth {
  const log = [...prev.log, probe].slice(-KEEP_PROBES);
  if (probe.exitCode === 0) return { status: 'healthy', failingStreak: 0, log };
  if (inStartPeriod && prev.status === 'starting') return { status: 'starting', failingStreak: prev.failingStreak, log };
  const failingStreak = prev.failingStreak + 1;
  return { status: failingStreak >= retries ? 'unhealthy' : prev.status, failingStreak, log };
}

/** What the monitor needs of the container service. */
export interface HealthExec {
  exec(id: string, req: ExecRequest): Promise<ExecSession>;
}

export class HealthMonitor {
  private readonly timers = new Map<string, NodeJS.Timeout>();
  /** Which run of the container a schedule is for: a probe of an earlier run is dropped. */
  private readonly runs = new Map<string, string>();
  private offEvents: (() => void) | undefined;
  private running = false;

  constructor(private readonly store: Store, private readonly events: EventBus, private readonly containers: HealthExec, private readonly now: () => number = Date.now) {}

  /** Probe every running container with a healthcheck, and follow starts and stops (call while leading). */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.offEvents = this.events.on((e) => this.onEvent(e));
    for (const c of await this.store.containers.list({ status: ['running'] })) if (checkOf(c)) this.schedule(c, false);
  }

  stop(): void {
    this.running = false;
    this.offEvents?.();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.runs.clear();
  }

  private onEvent(e: NimbusEvent): void {
    if (!this.running || e.type !== 'container') return;
    if (e.action === 'start' || e.action === 'restart') {
      void this.store.containers.get(e.id).then(async (c) => {
        if (!c || c.status !== 'running' || !checkOf(c)) return;
        // a new run starts over: starting, no streak, the earlier run's probes kept for inspect
        const fresh: ContainerHealth = { status: 'starting', failingStreak: 0, log: c.health?.log ?? [] };
        await this.store.containers.update(c.id, { health: fresh });
        this.schedule({ ...c, health: fresh }, true);
      }).catch((x: unknown) => log.warn('starting a health check failed', { id: e.id, error: String(x) }));
    } else if (e.action === 'die' || e.action === 'stop' || e.action === 'kill' || e.action === 'destroy' || e.action === 'pause') {
      this.unschedule(e.id);
    } else if (e.action === 'unpause') {
      void this.store.containers.get(e.id).then((c) => { if (c && checkOf(c)) this.schedule(c, false); }, () => undefined);
    }
  }

  private unschedule(id: string): void {
    clearTimeout(this.timers.get(id));
    this.timers.delete(id);
    this.runs.delete(id);
  }

  private schedule(c: ContainerRecord, fromStart: boolean): void {
    const check = checkOf(c)!;
    this.unschedule(c.id);
    const run = c.startedAt ?? '';
    this.runs.set(c.id, run);
    const interval = check.intervalMs ?? HEALTH_DEFAULTS.intervalMs;
    const timer = setTimeout(() => void this.probe(c.id, run), fromStart ? interval : Math.min(interval, 1_000));
    timer.unref();
    this.timers.set(c.id, timer);
  }

  /** One probe of the container's current run; the next is scheduled after it ends. */
  async probe(id: string, run: string): Promise<void> {
    if (this.runs.get(id) !== run) return;
    const c = await this.store.containers.get(id).catch(() => undefined);
    const check = c && checkOf(c);
    if (!c || !check || c.status !== 'running' || (c.startedAt ?? '') !== run) return this.unschedule(id);
    const args = probeArgs(check.test)!;
    const timeoutMs = check.timeoutMs ?? HEALTH_DEFAULTS.timeoutMs;
    const started = this.now();
    let exitCode: number;
    let output = '';
    try {
      const session = await this.containers.exec(id, { args });
      const chunks: Buffer[] = [];
      let size = 0;
      const keep = (b: Buffer) => {
        if (size < MAX_OUTPUT) chunks.push(b.subarray(0, MAX_OUTPUT - size));
        size += b.length;
      };
      session.stdout.on('data', keep);
      session.stderr.on('data', keep);
      session.stdin?.end();
      const drained = Promise.all([session.stdout, session.stderr].map((s) => new Promise<void>((resolve) => {
        if (s.readableEnded) resolve();
        else s.once('end', resolve).once('close', resolve).once('error', () => resolve());
      })));
      let timer: NodeJS.Timeout | undefined;
      // the exit and the output's end, within the timeout
      exitCode = await Promise.race([
        Promise.all([session.exit, drained]).then(([code]) => code),
        new Promise<number>((resolve) => { timer = setTimeout(() => resolve(-1), timeoutMs); }),
      ]).finally(() => clearTimeout(timer));
      output = exitCode === -1 ? `Health check exceeded timeout (${timeoutMs / 1000}s)` : Buffer.concat(chunks).toString('utf8');
    } catch (e) {
      exitCode = -1;
      // the container's record (its project reads it): the words anyone may read
      output = `the health check could not run: ${textForAnyone(e)}`.slice(0, MAX_OUTPUT);
    }
    if (this.runs.get(id) !== run) return; // stopped or restarted meanwhile: this run's probe no longer counts
    const probe: HealthProbe = { start: new Date(started).toISOString(), end: new Date(this.now()).toISOString(), exitCode, output };
    const cur = await this.store.containers.get(id).catch(() => undefined);
    if (!cur || cur.status !== 'running' || (cur.startedAt ?? '') !== run) return this.unschedule(id);
    const prev = cur.health ?? { status: 'starting', failingStreak: 0, log: [] };
    const inStartPeriod = started - Date.parse(run) < (check.startPeriodMs ?? HEALTH_DEFAULTS.startPeriodMs);
    const next = nextHealth(prev, probe, check.retries ?? HEALTH_DEFAULTS.retries, inStartPeriod);
    const saved = await this.store.containers.update(id, { health: next });
    if (next.status !== prev.status) {
      this.events.publish({ type: 'container', action: `health_status: ${next.status}`, id, projectId: saved.projectId, attributes: { name: saved.name } });
    }
    if (this.runs.get(id) === run && this.running) {
      const timer = setTimeout(() => void this.probe(id, run), check.intervalMs ?? HEALTH_DEFAULTS.intervalMs);
      timer.unref();
      this.timers.set(id, timer);
    }
  }
}

/** The container's healthcheck when it has one that runs something. */
function checkOf(c: ContainerRecord): HealthcheckConfig | undefined {
  const h = c.config.healthcheck;
  return h && probeArgs(h.test) ? h : undefined;
}
