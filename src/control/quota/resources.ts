/**
 * Quota resources and the small vector arithmetic the ledger uses.
 * Every amount is a non-negative safe integer (memory and disk are in MiB: a volume's size is a whole
 * number of MiB, so its charge is exact; 2^40 MiB, the UNLIMITED mark, is far beyond any disk).
 */
import { InvalidArgument } from '../../core/errors.js';

export const RESOURCES = ['instances', 'cpus', 'memory', 'networks', 'volumes', 'disk'] as const;
export type Resource = (typeof RESOURCES)[number];
/** A full vector: one amount per resource. */
export type Vec = Record<Resource, number>;
/** What callers pass: missing resources mean 0. */
export type PartialVec = Partial<Record<Resource, number>>;

export function isResource(s: string): s is Resource {
  return (RESOURCES as readonly string[]).includes(s);
}

export function zero(): Vec {
  return { instances: 0, cpus: 0, memory: 0, networks: 0, volumes: 0, disk: 0 };
}

export function checkAmount(what: string, n: unknown): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgument(`${what} must be a non-negative integer, got ${String(n)}`, { what, value: n });
  }
  return n;
}

/** Validate a partial vector (unknown keys, negatives, fractions are refused) and fill the gaps with `base`. */
export function vec(p: PartialVec | undefined, what = 'amount', base: Vec = zero()): Vec {
  const out = { ...base };
  if (p === undefined) return out;
  if (typeof p !== 'object' || p === null) throw new InvalidArgument(`${what} must be an object of resource amounts`);
  for (const [k, v] of Object.entries(p)) {
    if (!isResource(k)) throw new InvalidArgument(`unknown resource ${k} in ${what}; known: ${RESOURCES.join(', ')}`, { resource: k });
    if (v === undefined) continue;
    out[k] = checkAmount(`${what}.${k}`, v);
  }
  return out;
}

export function copy(a: Vec): Vec {
  return { instances: a.instances, cpus: a.cpus, memory: a.memory, networks: a.networks, volumes: a.volumes, disk: a.disk };
}

export function add(a: Vec, b: Vec): Vec {
  const o = copy(a);
  for (const r of RESOURCES) o[r] += b[r];
  return o;
}

export function sub(a: Vec, b: Vec): Vec {
  const o = copy(a);
  for (const r of RESOURCES) o[r] -= b[r];
  return o;
}

export function addInto(a: Vec, b: Vec, sign = 1): void {
  for (const r of RESOURCES) a[r] += sign * b[r];
}

export function isZero(a: Vec): boolean {
  return RESOURCES.every((r) => a[r] === 0);
}

export function leq(a: Vec, b: Vec): boolean {
  return RESOURCES.every((r) => a[r] <= b[r]);
}

export function equal(a: Vec, b: Vec): boolean {
  return RESOURCES.every((r) => a[r] === b[r]);
}

/** Only the non-zero entries, for compact messages and audit lines. */
export function compact(a: Vec): PartialVec {
  const o: PartialVec = {};
  for (const r of RESOURCES) if (a[r] !== 0) o[r] = a[r];
  return o;
}
