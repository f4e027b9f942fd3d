/** How the CLI prints: aligned tables like docker, or JSON with --output json. */
import type { GlobalOptions } from './args.js';
import { humanDuration } from '../core/human-duration.js';

/** Columns padded to the widest cell, three spaces apart, like docker. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** Decimal units with three significant digits, as `docker images`: 512B, 4.26MB, 12.3MB, 123MB. */
export function humanSize(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let v = Math.max(0, bytes);
  let i = 0;
  while (v >= 999.5 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? Math.round(v) : Number(v.toPrecision(3))}${units[i]}`;
}

/** Binary units for memory, as `docker stats`: 1.5MiB / 64MiB. */
export function humanMemory(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(2)}${units[i]}`;
}

export { humanDuration };

/** "3 seconds ago"; empty for a missing or unparsable time. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso || Number.isNaN(Date.parse(iso))) return '';
  return `${humanDuration(now - Date.parse(iso))} ago`;
}

export interface StatusLike {
  status: string;
  exitCode: number | null;
  startedAt: string | null;
  finishedAt: string | null;
  createdAt: string;
}

/** The STATUS column of `ps`: "Up 2 minutes", "Up 5 seconds (Paused)", "Exited (137) 5 seconds ago", "Created". */
export function statusText(c: StatusLike, now = Date.now()): string {
  const up = () => humanDuration(now - Date.parse(c.startedAt ?? c.createdAt));
  switch (c.status) {
    case 'running':
      return `Up ${up()}`;
    case 'paused':
      return `Up ${up()} (Paused)`;
    case 'exited':
      return `Exited (${c.exitCode ?? '?'}) ${ago(c.finishedAt, now)}`.trimEnd();
    case 'restarting':
      return `Restarting (${c.exitCode ?? '?'}) ${ago(c.finishedAt, now)}`.trimEnd();
    default:
      return c.status.charAt(0).toUpperCase() + c.status.slice(1);
  }
}

/** The 12-character short form of an id or digest. */
export function short(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}

export function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

/** Print `data` as JSON with --output json, else the table (or text) the command renders. Returns exit code 0. */
export function render<T>(global: GlobalOptions, data: T, human: (d: T) => string): number {
  process.stdout.write(global.output === 'json' ? JSON.stringify(data, null, 2) + '\n' : human(data));
  return 0;
}
