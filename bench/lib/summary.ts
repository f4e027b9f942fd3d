/** The human summary table printed at the end of a bench run. */
import type { SummaryRow } from './result.js';

const fmt = (x: number | null | undefined, unit = ''): string => (x === null || x === undefined || Number.isNaN(x) ? '—' : `${x}${unit}`);

export function summaryLines(rows: SummaryRow[]): string[] {
  const table = rows.map((r) => [
    r.bench,
    r.figure,
    fmt(r.nimbus, r.unit ? ` ${r.unit}` : ''),
    Object.entries(r.peers).map(([k, v]) => `${k} ${fmt(v)}`).join(', ') || '—',
    r.ratio === null ? '—' : `${r.ratio}×`,
    r.goal ? `${r.goal}: ${r.met === undefined || r.met === null ? 'n/a' : r.met ? 'MET' : 'NOT MET'}` : '',
    r.note ?? '',
  ]);
  const head = ['bench', 'figure', 'nimbus', 'peers', 'ratio', 'goal', 'note'];
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...table.map(line)];
}

export function printSummary(rows: SummaryRow[], out: NodeJS.WritableStream = process.stderr): void {
  if (!rows.length) return;
  out.write(`\n${summaryLines(rows).join('\n')}\n`);
}
