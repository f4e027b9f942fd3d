/** `nimbus host ...`: the hosts of this cloud (/hosts): state, capacity, zone, labels, enable/disable. */
import { OUTPUT_OPTION, UsageError, type CommandSpec, type OptionValue } from '../args.js';
import { ago, render, table } from '../output.js';
import { clientOf, eachArg } from './shared.js';
import type { HostSummary } from '../../control/agents/host-summary.js';

export type HostRow = HostSummary;

const gib = (bytes: number) => `${(bytes / 1024 ** 3).toFixed(1)}GiB`;
const num = (n: number) => String(Number(n.toFixed(2)));

/** "up", "down", "unknown"; the admin flag beside it ("up, disabled"). */
export function hostState(h: Pick<HostRow, 'state' | 'disabled'>): string {
  return h.disabled ? `${h.state}, disabled` : h.state;
}

export function labelsText(labels: Record<string, string>): string {
  const l = Object.entries(labels).map(([k, v]) => (v === '' ? k : `${k}=${v}`));
  return l.length ? l.join(',') : '-';
}

/** Claimed / allocatable (capacity x ratio); "-" until the scheduler reports claims. */
function allocText(used: number | undefined, capacity: number | undefined, ratio: number, unit: (n: number) => string): string {
  if (used === undefined || capacity === undefined) return '-';
  return `${unit(used)}/${unit(capacity * ratio)}`;
}

export function hostTable(list: HostRow[]): string {
  return table(
    ['NAME', 'STATE', 'ZONE', 'LABELS', 'CPUS', 'MEMORY', 'DISK', 'CPU ALLOC', 'MEM ALLOC', 'CTRS', 'VMS', 'ACCEL', 'RUNTIMES'],
    list.map((h) => [
      h.name,
      hostState(h),
      h.zone,
      labelsText(h.labels),
      h.cpus !== undefined ? String(h.cpus) : '-',
      h.memoryBytes !== undefined ? gib(h.memoryBytes) : '-',
      h.diskBytes ? gib(h.diskBytes) : '-',
      allocText(h.allocated?.vcpus, h.cpus, h.allocationRatios.cpu, num),
      allocText(h.allocated?.memoryBytes, h.memoryBytes, h.allocationRatios.memory, gib),
      h.containers !== undefined ? String(h.containers) : '-',
      String(h.vms),
      h.accelerator ?? '-',
      h.runtimes?.length ? h.runtimes.join(',') : '-',
    ]),
  );
}

/** `nimbus host show`: one field a line. */
export function hostText(h: HostRow, now = Date.now()): string {
  const lines: Array<[string, string]> = [
    ['Name', h.local ? `${h.name} (embedded)` : h.name],
    ['State', h.reason ? `${h.state} (${h.reason})` : h.state],
    ['Disabled', h.disabled ? `yes${h.disabledReason ? `: ${h.disabledReason}` : ''} (by ${h.disabledBy ?? '?'}, ${ago(h.disabledAt, now) || h.disabledAt || '?'})` : 'no'],
    ['Zone', h.zone],
    ['Labels', labelsText(h.labels)],
    ['Address', h.local ? 'embedded' : (h.url ?? '-')],
    ['Registered', h.registeredAt ? `${h.registeredAt} (${ago(h.registeredAt, now)})` : '-'],
    ['Hostname', h.hostname ?? '-'],
    ['Kernel', h.kernel ?? '-'],
    ['Architecture', h.architecture ?? '-'],
    ['CPUs', h.cpus !== undefined ? `${h.cpus} (ratio ${num(h.allocationRatios.cpu)}: ${num(h.cpus * h.allocationRatios.cpu)} allocatable)` : '-'],
    ['Memory', h.memoryBytes !== undefined ? `${gib(h.memoryBytes)} (ratio ${num(h.allocationRatios.memory)})` : '-'],
    ['Disk', h.diskBytes ? `${gib(h.diskBytes)} (ratio ${num(h.allocationRatios.disk)})` : '-'],
    ['Allocated', h.allocated ? `${num(h.allocated.vcpus)} vCPUs, ${gib(h.allocated.memoryBytes)} memory, ${gib(h.allocated.diskBytes)} disk, ${h.allocated.instances} instance(s)` : '-'],
    ['Accelerator', h.accelerator ?? '-'],
    ['Runtimes', h.runtimes?.length ? h.runtimes.join(', ') : '-'],
    ['Live moves', !h.liveMove ? '-' : h.liveMove.usable ? `yes (criu ${h.liveMove.version ?? '?'})` : `no: ${h.liveMove.reason ?? '?'}`],
    ['Containers', h.containers !== undefined ? String(h.containers) : '-'],
    ['VMs', String(h.vms)],
    ['Last seen', h.lastSeenAt ? `${h.lastSeenAt} (${ago(h.lastSeenAt, now)})` : 'never'],
  ];
  const w = Math.max(...lines.map(([k]) => k.length)) + 1;
  return lines.map(([k, v]) => `${`${k}:`.padEnd(w)} ${v}`).join('\n') + '\n';
}

type Ratio = number | null;

/** A ratio option: a positive number, or "default" (null: the control plane's default). */
export function parseRatio(flag: string, v: string): Ratio {
  if (v === 'default') return null;
  const n = Number(v);
  if (!/^\d+(\.\d+)?$|^\.\d+$/.test(v.trim()) || !(n > 0)) throw new UsageError(`${flag} must be a number above 0 (e.g. 4, 1.5) or "default", got "${v}"`);
  return n;
}

/** The body of PUT /hosts/{name} from `nimbus host set`'s options; a usage error when nothing would change. */
export function hostSetBody(opts: Record<string, OptionValue>): {
  zone?: string;
  labels?: Record<string, string>;
  unsetLabels?: string[];
  allocationRatios?: { cpu?: Ratio; memory?: Ratio; disk?: Ratio };
} {
  const labels: Record<string, string> = {};
  for (const kv of (opts.label as string[] | undefined) ?? []) {
    const i = kv.indexOf('=');
    if (i < 1) throw new UsageError(`--label takes KEY=VALUE (VALUE may be empty: KEY=), got "${kv}"`);
    labels[kv.slice(0, i)] = kv.slice(i + 1);
  }
  const unset = (opts['unset-label'] as string[] | undefined) ?? [];
  const ratios: { cpu?: Ratio; memory?: Ratio; disk?: Ratio } = {};
  for (const k of ['cpu', 'memory', 'disk'] as const) {
    const v = opts[`${k}-ratio`];
    if (typeof v === 'string') ratios[k] = parseRatio(`--${k}-ratio`, v);
  }
  const body = {
    ...(typeof opts.zone === 'string' ? { zone: opts.zone } : {}),
    ...(Object.keys(labels).length ? { labels } : {}),
    ...(unset.length ? { unsetLabels: unset } : {}),
    ...(Object.keys(ratios).length ? { allocationRatios: ratios } : {}),
  };
  if (!Object.keys(body).length) throw new UsageError('nothing to change: give --zone, --label, --unset-label or a --*-ratio');
  return body;
}

const enc = encodeURIComponent;

export const hostCommands: CommandSpec[] = [
  {
    name: 'host ls', usage: '', maxArgs: 0, options: [OUTPUT_OPTION],
    summary: 'List the hosts: state (up, down, unknown; disabled beside it), zone, labels, capacity, allocations (claimed/allocatable), instances, accelerator, runtimes',
    async run({ global }) {
      return render(global, await clientOf(global).json<HostRow[]>('GET', '/hosts'), hostTable);
    },
  },
  {
    name: 'host show', usage: 'HOST', minArgs: 1, maxArgs: 1, options: [OUTPUT_OPTION],
    summary: 'One host in full: why it is down, who disabled it and why, its facts and when it last answered',
    async run({ args, global }) {
      return render(global, await clientOf(global).json<HostRow>('GET', `/hosts/${enc(args[0]!)}`), (h) => hostText(h));
    },
  },
  {
    name: 'host disable', usage: 'HOST [HOST...]', minArgs: 1,
    summary: 'No new instances are placed on the hosts (admin); what runs there stays and keeps running',
    options: [{ name: 'reason', type: 'string', value: 'TEXT', description: 'Why (shown by host ls and host show), e.g. "disk replacement"' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const body = typeof opts.reason === 'string' ? { reason: opts.reason } : {};
      return eachArg(args, async (name) => {
        await client.json('POST', `/hosts/${enc(name)}/disable`, body);
      });
    },
  },
  {
    name: 'host enable', usage: 'HOST [HOST...]', minArgs: 1, options: [],
    summary: 'New instances may be placed on the hosts again (admin)',
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (name) => {
        await client.json('POST', `/hosts/${enc(name)}/enable`, {});
      });
    },
  },
  {
    name: 'host set', usage: 'HOST', minArgs: 1, maxArgs: 1,
    summary: 'Change a host (admin): availability zone, labels placements can require (run --constraint k=v), over-commit ratios. '
      + 'Example: nimbus host set h1 --zone eu-1a --label ssd=true --unset-label old --cpu-ratio 8',
    options: [
      { name: 'zone', type: 'string', value: 'ZONE', description: 'Availability zone (run --zone picks hosts of one zone)' },
      { name: 'label', type: 'list', value: 'K=V', description: 'Set a label' },
      { name: 'unset-label', type: 'list', value: 'K', description: 'Remove a label' },
      { name: 'cpu-ratio', type: 'string', value: 'X', description: 'vCPUs placeable per CPU, or "default" (4)' },
      { name: 'memory-ratio', type: 'string', value: 'X', description: 'Memory placeable per byte, or "default" (1)' },
      { name: 'disk-ratio', type: 'string', value: 'X', description: 'Disk placeable per byte, or "default" (1)' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const h = await clientOf(global).json<HostRow>('PUT', `/hosts/${enc(args[0]!)}`, hostSetBody(opts));
      return render(global, h, (x) => hostText(x));
    },
  },
  {
    name: 'host rm', usage: 'HOST [HOST...]', minArgs: 1, options: [],
    summary: 'Forget registered hosts and their settings (admin); refused while containers or VMs are recorded on them, and for the embedded host',
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (name) => {
        await client.json('DELETE', `/hosts/${enc(name)}`);
      });
    },
  },
];
