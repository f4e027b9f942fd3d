/**
 * Nova's weighers: each gives every host that passed the filters a raw value, the values are
 * normalised to 0..1 over those hosts (min → 0, max → 1; all equal → 0), multiplied by the
 * weigher's multiplier and summed. The highest sum wins. Multipliers: SchedulerOptions.weights.
 */
import type { HostState, Need } from './filters.js';
import type { ServerGroupRecord } from '../../store/repos/placement.js';

export interface WeighInput {
  need: Need;
  group?: ServerGroupRecord;
  /** Hosts holding the image's layers (image locality); undefined when unknown. */
  imageHosts?: ReadonlySet<string>;
  strategy: 'spread' | 'pack';
}

export type WeigherName = 'cpu' | 'memory' | 'image-locality' | 'project-spread' | 'server-group';

export interface HostWeigher {
  readonly name: WeigherName;
  /** The multiplier for this request (0: the weigher takes no part). */
  multiplier(input: WeighInput, weights: WeigherMultipliers): number;
  raw(host: HostState, input: WeighInput): number;
}

export type WeigherMultipliers = Record<WeigherName, number>;

/**
 * Defaults: free cpu and memory 1 each (negated when packing), a host holding the image 3
 * (it beats any spread difference: pulling costs more than imbalance), fewest of the same
 * project 0.5, server group 1 for a hard policy's tie-break and 10 for a soft one (a soft
 * policy beats everything else, but never refuses a host).
 */
export const DEFAULT_MULTIPLIERS: WeigherMultipliers = { cpu: 1, memory: 1, 'image-locality': 3, 'project-spread': 0.5, 'server-group': 1 };
const SOFT_GROUP_MULTIPLIER = 10;

const packSign = (i: WeighInput) => (i.strategy === 'pack' ? -1 : 1);

/** Free vCPUs once the request is placed: spread favours the most, pack the least. */
export const cpuWeigher: HostWeigher = {
  name: 'cpu',
  multiplier: (i, w) => w.cpu * packSign(i),
  raw: (h, i) => h.limits.millicpus - h.usage.millicpus - i.need.millicpus,
};

export const memoryWeigher: HostWeigher = {
  name: 'memory',
  multiplier: (i, w) => w.memory * packSign(i),
  raw: (h, i) => h.limits.memoryBytes - h.usage.memoryBytes - i.need.memoryBytes,
};

export const imageLocalityWeigher: HostWeigher = {
  name: 'image-locality',
  multiplier: (i, w) => (i.imageHosts ? w['image-locality'] : 0),
  raw: (h, i) => (i.imageHosts?.has(h.candidate.name) ? 1 : 0),
};

/** Fewest instances of the request's project. */
export const projectSpreadWeigher: HostWeigher = {
  name: 'project-spread',
  multiplier: (_i, w) => w['project-spread'],
  raw: (h) => -h.projectInstances,
};

/** Affinity: most members of the group; anti-affinity (and no policy): fewest. Soft policies weigh ten times more. */
export const serverGroupWeigher: HostWeigher = {
  name: 'server-group',
  multiplier: (i, w) => (!i.group ? 0 : i.group.policy.startsWith('soft-') ? SOFT_GROUP_MULTIPLIER * w['server-group'] : w['server-group']),
  raw: (h, i) => (i.group?.policy.endsWith('anti-affinity') ? -h.groupMembers : h.groupMembers),
};

export const DEFAULT_WEIGHERS: readonly HostWeigher[] = [cpuWeigher, memoryWeigher, imageLocalityWeigher, projectSpreadWeigher, serverGroupWeigher];

/** Nova's normalisation: min → 0, max → 1, linear between; all equal → all 0. */
export function normalise(values: readonly number[]): number[] {
  if (values.length === 0) return [];
  const min = Math.min(...values);
  const max = Math.max(...values);
  return max === min ? values.map(() => 0) : values.map((v) => (v - min) / (max - min));
}

/** Each host's total weight only (weigh()'s totals, without building the parts): the scheduler's choice. */
export function weighTotals(hosts: readonly HostState[], input: WeighInput, weighers: readonly HostWeigher[], multipliers: WeigherMultipliers): Float64Array {
  const totals = new Float64Array(hosts.length);
  const raw = new Float64Array(hosts.length);
  for (const w of weighers) {
    const m = w.multiplier(input, multipliers);
    if (m === 0) continue;
    let min = Infinity;
    let max = -Infinity;
    for (let i = 0; i < hosts.length; i++) {
      const v = w.raw(hosts[i]!, input);
      raw[i] = v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
    if (max === min) continue; // all equal: all 0
    const range = max - min;
    // the same arithmetic as normalise() × multiplier: choose() and explain() rank alike
    for (let i = 0; i < hosts.length; i++) totals[i]! += ((raw[i]! - min) / range) * m;
  }
  return totals;
}

/** Each host's total weight and its parts (normalised × multiplier), in the order given. */
export function weigh(
  hosts: readonly HostState[], input: WeighInput, weighers: readonly HostWeigher[], multipliers: WeigherMultipliers,
): { total: number; parts: Partial<Record<WeigherName, number>> }[] {
  const out = hosts.map(() => ({ total: 0, parts: {} as Partial<Record<WeigherName, number>> }));
  for (const w of weighers) {
    const m = w.multiplier(input, multipliers);
    if (m === 0) continue;
    const n = normalise(hosts.map((h) => w.raw(h, input)));
    n.forEach((v, i) => {
      const part = v * m;
      out[i]!.parts[w.name] = part;
      out[i]!.total += part;
    });
  }
  return out;
}
