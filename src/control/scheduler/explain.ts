/**
 * Explanations in words: the error a placement that fits nowhere fails with (each host and the
 * filter that rejected it, never a bare "No valid host"), and the summary a project member may
 * see (hosts are operator information: counts per filter, no names).
 */
import { Conflict, ResourceExhausted, type NimbusError } from '../../core/errors.js';
import type { Explanation, HostVerdict, InstanceKind, PlacementRequest } from './types.js';

/** Hosts named one by one in a message; the rest are counted per filter. */
const NAMED_IN_MESSAGE = 12;
/** Verdicts carried in an error's details. */
const VERDICTS_IN_DETAILS = 100;

const KIND_WORDS: Record<InstanceKind, string> = { container: 'container', vm: 'VM', 'secure-container': 'secure container', volume: 'volume' };

/** How many hosts each filter rejected, most first (ties by name). */
export function rejectionCounts(verdicts: readonly HostVerdict[]): [filter: string, hosts: number][] {
  const counts = new Map<string, number>();
  for (const v of verdicts) if (v.rejectedBy) counts.set(v.rejectedBy.filter, (counts.get(v.rejectedBy.filter) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** "no host can take this container: h1: disabled; h2: memory 3.9 GiB free of 4 GiB needed; …" */
export function noHostMessage(req: Pick<PlacementRequest, 'kind' | 'host'>, verdicts: readonly HostVerdict[]): string {
  const head = `no host can take this ${KIND_WORDS[req.kind]}`;
  if (verdicts.length === 0) return `${head}: no hosts are registered`;
  // pinned: the other hosts were never in question
  const shown = req.host !== undefined ? verdicts.filter((v) => v.host === req.host) : verdicts;
  const named = shown.slice(0, NAMED_IN_MESSAGE).map((v) => `${v.host}: ${v.rejectedBy?.reason ?? 'passed every filter'}`);
  const rest = shown.slice(NAMED_IN_MESSAGE);
  const more = rest.length ? `; and ${plural(rest.length, 'more host')} (${rejectionCounts(rest).map(([f, n]) => `${f}: ${n}`).join(', ')})` : '';
  return `${head}: ${named.join('; ')}${more}`;
}

/**
 * Filters that reject a host for what the request asks (a zone, labels, a runtime, an
 * architecture, an accelerator, a named host), not for its state or its load: when they alone
 * rejected every host, no capacity would help, and the answer is the caller's to change.
 */
const REQUEST_FILTERS = new Set(['host', 'zone', 'constraints', 'architecture', 'runtime', 'accelerator']);

/**
 * The error of a placement that fits nowhere: Conflict (409) when the request itself ruled out
 * every host (its constraints, or a size more than the host holds in all, `beyond`: 222 vCPUs
 * asked of 8-vCPU hosts waits for no capacity to free up), ResourceExhausted (507) when any host
 * was ruled out by its state or load.
 */
export function noHostError(req: PlacementRequest, verdicts: readonly HostVerdict[], beyond: ReadonlySet<string> = new Set()): NimbusError {
  const details = {
    consumer: req.consumerId,
    rejected: Object.fromEntries(rejectionCounts(verdicts)),
    hosts: verdicts.slice(0, VERDICTS_IN_DETAILS),
  };
  const byRequestAlone = verdicts.length > 0 && verdicts.every((v) => v.rejectedBy !== undefined && (REQUEST_FILTERS.has(v.rejectedBy.filter) || beyond.has(v.host)));
  const larger = verdicts.length > 0 && verdicts.every((v) => beyond.has(v.host)) ? '; it asks for more than any host holds in all' : '';
  return byRequestAlone ? new Conflict(noHostMessage(req, verdicts) + larger, details) : new ResourceExhausted(noHostMessage(req, verdicts), details);
}

/** What a project member sees: whether it fits, and how many hosts each filter rejected. */
export interface ExplanationSummary {
  fits: boolean;
  hosts: number;
  /** Hosts rejected, by filter name. */
  rejected: Record<string, number>;
  /** "3 hosts: 1 rejected by enabled, 2 rejected by memory" */
  message: string;
}

export function summarise(e: Explanation): ExplanationSummary {
  const counts = rejectionCounts(e.hosts);
  const passed = e.hosts.length - counts.reduce((n, [, c]) => n + c, 0);
  const parts = [...(passed ? [`${passed} can take it`] : []), ...counts.map(([f, n]) => `${n} rejected by ${f}`)];
  return {
    fits: e.chosen !== undefined,
    hosts: e.hosts.length,
    rejected: Object.fromEntries(counts),
    message: `${plural(e.hosts.length, 'host')}${parts.length ? `: ${parts.join(', ')}` : ''}`,
  };
}
