/**
 * An administrator's settings of a host (docs/architecture.md, "Hosts"): zone, labels,
 * allocation ratios and the disabled flag, checked and then stored on the host's row (the
 * embedded agent's too). What placement does with them is the scheduler's.
 */
import { InvalidArgument, NotFound } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { Store } from '../../store/store.js';
import type { AgentRecord, AllocationRatios } from '../../store/records.js';

const log = logger('agents');

/**
 * Over-commit allowed when an administrator set none (Nova's initial_*_allocation_ratio since
 * Stein): CPU is shared by time (containers and vCPUs mostly idle), memory and disk are not
 * compressible, so over-committing them trades an OOM kill or ENOSPC for density.
 */
export const DEFAULT_ALLOCATION_RATIOS: Readonly<AllocationRatios> = Object.freeze({ cpu: 4, memory: 1, disk: 1 });
/** Ratios an administrator may set: above 0, at most this. */
export const MAX_ALLOCATION_RATIO = 1000;

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

/** Everything a change sets checked before the host is looked up, so a bad request names its own fault. */
function checkChange(change: HostSettingsChange): void {
  if (change.zone !== undefined) checkZone(change.zone);
  for (const [k, v] of Object.entries(change.labels ?? {})) checkLabel(k, v);
  for (const k of change.unsetLabels ?? []) checkLabel(k);
  for (const [k, v] of Object.entries(change.allocationRatios ?? {})) {
    if (!(k in DEFAULT_ALLOCATION_RATIOS)) throw new InvalidArgument(`unknown allocation ratio "${k}" (cpu, memory, disk)`);
    if (v !== null && v !== undefined && !(Number.isFinite(v) && v > 0 && v <= MAX_ALLOCATION_RATIO)) {
      throw new InvalidArgument(`allocation ratio ${k} must be above 0 and at most ${MAX_ALLOCATION_RATIO}, got ${v}`);
    }
  }
}

/** What the directory lends the settings: the store, its clock, and its view of which hosts exist. */
export interface HostSettingsDeps {
  store: Pick<Store, 'agents' | 'transaction'>;
  now: () => number;
  /** NotFound unless the name is a host (or a row another replica made). */
  requireHost(name: string): Promise<void>;
  /** A row changed: cached at once, so readers in this process see it before the next read. */
  changed(rec: AgentRecord): void;
}

export class HostSettings {
  constructor(private readonly deps: HostSettingsDeps) {}

  /** No new placements on it (its instances stay); disabling a disabled host updates the reason. */
  async disable(name: string, o: { reason?: string; by: string }): Promise<void> {
    await this.deps.requireHost(name);
    const rec = await this.deps.store.agents.updateSettings(name, { disabled: { reason: o.reason ?? '', at: new Date(this.deps.now()).toISOString(), by: o.by } });
    this.deps.changed(rec);
    log.info('host disabled', { host: name, reason: o.reason ?? '', by: o.by });
  }

  async enable(name: string): Promise<void> {
    await this.deps.requireHost(name);
    const rec = await this.deps.store.agents.updateSettings(name, { disabled: null });
    this.deps.changed(rec);
    log.info('host enabled', { host: name });
  }

  /** Zone, labels set and unset, allocation ratios; checked first, applied in one transaction (no lost label). */
  async update(name: string, change: HostSettingsChange): Promise<void> {
    checkChange(change);
    await this.deps.requireHost(name);
    const { store } = this.deps;
    const rec = await store.transaction(async () => {
      const cur = await store.agents.get(name);
      if (!cur) throw new NotFound(`no such host: ${name}`, { host: name });
      const labels = { ...cur.labels, ...(change.labels ?? {}) };
      for (const k of change.unsetLabels ?? []) delete labels[k];
      if (Object.keys(labels).length > MAX_LABELS) throw new InvalidArgument(`a host has at most ${MAX_LABELS} labels`);
      const ratios: Partial<AllocationRatios> = { ...cur.allocationRatios };
      for (const [k, v] of Object.entries(change.allocationRatios ?? {}) as Array<[keyof AllocationRatios, number | null | undefined]>) {
        if (v === null) delete ratios[k];
        else if (v !== undefined) ratios[k] = v;
      }
      return store.agents.updateSettings(name, { ...(change.zone !== undefined ? { zone: change.zone } : {}), labels, allocationRatios: ratios });
    });
    this.deps.changed(rec);
    log.info('host settings changed', { host: name, zone: rec.zone, labels: rec.labels, allocationRatios: rec.allocationRatios });
  }
}
