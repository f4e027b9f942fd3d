/** `nimbus usage`: metered usage per project (rolled up its subtree) and per instance (GET /usage, docs/metering.md). */
import type { CommandSpec } from '../args.js';
import type { UsageReport, UsageTotals } from '../../control/metering/usage-report.js';
import { humanMemory, printJson, short, table } from '../output.js';
import { clientOf } from './shared.js';

const fixed = (n: number | null, digits: number) => (n === null ? '-' : n.toFixed(digits));

/** A CSV field: quoted when it holds a comma, quote or line break (RFC 4180). */
const csvField = (v: string | number | null) => {
  const s = v === null ? '' : String(v);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

const TOTAL_COLUMNS = ['instance_seconds', 'cpu_seconds', 'memory_gib_hours', 'disk_gib_hours', 'network_rx_bytes', 'network_tx_bytes'];
const totalCells = (t: UsageTotals) => [t.instanceSeconds, t.cpuSeconds, t.memoryGiBHours, t.diskGiBHours, t.networkRxBytes, t.networkTxBytes];

/** One CSV with a row per project (rolled-up totals) and per instance; `scope` tells them apart. */
export function usageCsv(r: UsageReport): string {
  const names = new Map(r.projects.map((p) => [p.id, p.name]));
  const rows: (string | number | null)[][] = [
    ['scope', 'id', 'name', 'project', 'kind', ...TOTAL_COLUMNS],
    ...r.projects.map((p) => ['project', p.id, p.name, p.parentId === null ? '' : names.get(p.parentId) ?? p.parentId, '', ...totalCells(p.total)]),
    ...r.instances.map((i) => ['instance', i.id, i.name, names.get(i.projectId) ?? i.projectId, i.kind, ...totalCells(i)]),
  ];
  return rows.map((row) => row.map(csvField).join(',')).join('\n') + '\n';
}

export function usageTable(r: UsageReport): string {
  const names = new Map(r.projects.map((p) => [p.id, p.name]));
  const span = `${r.since ?? 'the beginning'} to ${r.until ?? 'now'}`;
  const projects = table(['PROJECT', 'INSTANCE-HOURS', 'CPU-HOURS', 'MEMORY GiB-H', 'DISK GiB-H', 'BY KIND AND SIZE'], r.projects.map((p) => [
    p.name, fixed(p.total.instanceSeconds / 3600, 3), fixed(p.total.cpuSeconds === null ? null : p.total.cpuSeconds / 3600, 3),
    fixed(p.total.memoryGiBHours, 3), fixed(p.total.diskGiBHours, 3),
    p.bySize.map((s) => `${s.kind} ${s.cpus || '-'}cpu/${s.memoryBytes ? humanMemory(s.memoryBytes) : '-'}: ${(s.instanceSeconds / 3600).toFixed(3)}h`).join(', '),
  ]));
  const instances = table(['INSTANCE', 'NAME', 'PROJECT', 'KIND', 'SECONDS', 'CPU-SECONDS', 'MEMORY GiB-H', 'DISK GiB-H'], r.instances.map((i) => [
    short(i.id), i.name, names.get(i.projectId) ?? i.projectId, i.kind, fixed(i.instanceSeconds, 0), fixed(i.cpuSeconds, 1), fixed(i.memoryGiBHours, 4), fixed(i.diskGiBHours, 4),
  ]));
  return `Usage from ${span} (projects include their descendants)\n\n${projects}\n${instances}`;
}

export const usageCommands: CommandSpec[] = [
  {
    name: 'usage', usage: '', summary: 'Show metered usage per project (with its descendants) and per instance', maxArgs: 0,
    options: [
      { name: 'since', type: 'string', value: 'TIME', description: 'From this time: ISO 8601, epoch seconds, or a duration ago (24h, 7d); rounded down to the hour' },
      { name: 'until', type: 'string', value: 'TIME', description: 'Up to this time (same forms)' },
      { name: 'series', type: 'boolean', description: 'With -o json: each project\'s usage per hour too' },
      { name: 'output', short: 'o', aliases: ['format'], type: 'string', value: 'FORMAT', choices: ['table', 'json', 'csv'], description: 'Output format: table, json or csv' },
    ],
    async run({ opts, global }) {
      const q = new URLSearchParams();
      if (opts.since !== undefined) q.set('since', String(opts.since));
      if (opts.until !== undefined) q.set('until', String(opts.until));
      if (opts.series) q.set('series', 'true');
      const qs = q.toString();
      const r = await clientOf(global).json<UsageReport>('GET', `/usage${qs ? `?${qs}` : ''}`);
      const output = String(opts.output ?? global.output);
      if (output === 'json') printJson(r);
      else process.stdout.write(output === 'csv' ? usageCsv(r) : usageTable(r));
      return 0;
    },
  },
];
