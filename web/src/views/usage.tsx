/**
 * Metered usage of the project (GET /usage?series=true): per hour, drawn as small hand-made SVG
 * bar charts (no chart library: three bar series do not need one), with the same figures in a
 * table beside them for screen readers and for exact numbers. The series and the per-hour rows
 * are the project's own instances; the totals row gives its own and its subtree's.
 */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, q, type Project, type UsageReport, type UsageTotals } from '../api.js';

const RANGES = [{ value: '24h', label: 'last 24 hours' }, { value: '7d', label: 'last 7 days' }, { value: '30d', label: 'last 30 days' }];

/** The three measures drawn, each with how the table and the chart show it. */
const MEASURES = [
  { key: 'cpu', label: 'CPU-seconds', of: (t: UsageTotals) => t.cpuSeconds, digits: 3 },
  { key: 'memory', label: 'Memory GiB-hours', of: (t: UsageTotals) => t.memoryGiBHours, digits: 6 },
  { key: 'instances', label: 'Instance-hours', of: (t: UsageTotals) => t.instanceSeconds / 3600, digits: 6 },
] as const;

/** null: not measured (VMs have no CPU counter yet), shown as a dash, never as 0. */
const figure = (n: number | null, digits: number) => (n === null ? '—' : n.toFixed(digits));

const hourLabel = (iso: string) => {
  const d = new Date(iso);
  return `${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')} ${String(d.getHours()).padStart(2, '0')}:00`;
};

const W = 320;
const H = 110;
const PAD = { left: 4, right: 4, top: 14, bottom: 16 };

/** One measure per hour as bars; decorative for assistive technology (the table has the figures). */
function BarChart({ title, points, digits }: { title: string; points: { start: string; value: number | null }[]; digits: number }) {
  const max = Math.max(0, ...points.map((p) => p.value ?? 0));
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const slot = points.length ? innerW / points.length : innerW;
  const barW = Math.max(1, slot * 0.8);
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${W} ${H}`} width={W} height={H} aria-hidden="true" focusable="false">
        <line x1={PAD.left} y1={H - PAD.bottom} x2={W - PAD.right} y2={H - PAD.bottom} class="axis" />
        {points.map((p, i) => {
          const h = max > 0 && p.value ? (p.value / max) * innerH : 0;
          return <rect key={p.start} class="bar-rect" x={PAD.left + i * slot + (slot - barW) / 2} y={H - PAD.bottom - h} width={barW} height={h}><title>{`${hourLabel(p.start)}: ${figure(p.value, digits)}`}</title></rect>;
        })}
        <text x={PAD.left} y={10} class="chart-max">max {figure(max, digits)}</text>
        {points.length ? <text x={PAD.left} y={H - 3} class="chart-tick">{hourLabel(points[0]!.start)}</text> : null}
        {points.length > 1 ? <text x={W - PAD.right} y={H - 3} class="chart-tick" text-anchor="end">{hourLabel(points[points.length - 1]!.start)}</text> : null}
      </svg>
      <figcaption>{title}</figcaption>
    </figure>
  );
}

export function UsageView({ project }: { project: Project }) {
  const [range, setRange] = useState('24h');
  const [report, setReport] = useState<UsageReport | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    setReport(null);
    call<UsageReport>('GET', `/usage?${q(project.path)}&series=true&since=${range}`).then(setReport, (e: unknown) => setError(messageOf(e)));
  }, [project.path, range]);

  const mine = report?.projects.find((p) => p.id === project.id);
  const series = (report?.series ?? []).filter((s) => s.projectId === project.id);
  return (
    <section aria-labelledby="usage-title" class="stack">
      <div class="toolbar">
        <h2 id="usage-title">Usage of {project.path}</h2>
        <label>Period <select aria-label="Period" value={range} onChange={(e) => setRange((e.target as HTMLSelectElement).value)}>
          {RANGES.map((r) => <option key={r.value} value={r.value}>{r.label}</option>)}
        </select></label>
      </div>
      {error ? <p role="alert" class="error">{error}</p> : !report ? <p>Loading…</p> : !mine ? <p>No usage report for this project.</p> : (
        <div class="usage">
          <div class="charts" data-testid="usage-charts">
            {series.length === 0 ? <p class="muted">Nothing metered in this period (records are hourly; the meter samples every minute).</p>
              : MEASURES.map((m) => <BarChart key={m.key} title={`${m.label} per hour`} digits={m.digits} points={series.map((s) => ({ start: s.start, value: m.of(s) }))} />)}
          </div>
          <table class="figures" data-testid="usage-table">
            <caption>Per hour, this project's own instances (— : not measured, e.g. VMs' CPU)</caption>
            <thead><tr><th scope="col">Hour</th>{MEASURES.map((m) => <th scope="col" key={m.key}>{m.label}</th>)}</tr></thead>
            <tbody>
              {series.map((s) => <tr key={s.start}><th scope="row">{hourLabel(s.start)}</th>{MEASURES.map((m) => <td key={m.key}>{figure(m.of(s), m.digits)}</td>)}</tr>)}
              <tr data-testid="usage-own"><th scope="row">Total, own</th>{MEASURES.map((m) => <td key={m.key} data-measure={m.key}>{figure(m.of(mine.own), m.digits)}</td>)}</tr>
              <tr data-testid="usage-total"><th scope="row">Total, with sub-projects</th>{MEASURES.map((m) => <td key={m.key} data-measure={m.key}>{figure(m.of(mine.total), m.digits)}</td>)}</tr>
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
