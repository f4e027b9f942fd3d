/**
 * Pull progress on stderr: one bar per layer redrawn in place on a terminal,
 * plain lines ("<layer> downloading 45%", "<layer> done") otherwise.
 */
import { humanSize, short } from './output.js';

export interface LayerProgress {
  digest: string;
  status: string; // waiting | downloading | verifying | done | exists
  bytesDone: number;
  bytesTotal: number;
}

export interface PullProgressEvent {
  phase?: string; // resolving | downloading | unpacking | done
  bytesDone?: number;
  bytesTotal?: number;
  layers?: LayerProgress[];
}

/** What the display writes to: process.stderr, or a fake in tests. */
export interface ProgressSink {
  isTTY?: boolean;
  columns?: number;
  write(s: string): unknown;
}

const LABEL: Record<string, string> = { waiting: 'waiting', downloading: 'downloading', verifying: 'verifying', done: 'done', exists: 'already exists' };

export class PullProgress {
  private drawn = 0;
  private phase = '';
  private readonly printed = new Map<string, string>();

  constructor(private readonly out: ProgressSink = process.stderr, private readonly step = 10) {}

  update(p: PullProgressEvent): void {
    const layers = p.layers ?? [];
    if (this.out.isTTY) return this.redraw(p, layers);
    if (p.phase && p.phase !== this.phase && p.phase !== 'done' && p.phase !== 'downloading') this.out.write(`${p.phase}\n`);
    if (p.phase) this.phase = p.phase;
    for (const l of layers) {
      const pct = percent(l);
      const bucket = Math.floor(pct / this.step) * this.step;
      const key = l.status === 'downloading' ? `downloading:${bucket}` : l.status;
      if (this.printed.get(l.digest) === key || l.status === 'waiting') continue;
      this.printed.set(l.digest, key);
      this.out.write(`${short(l.digest)} ${LABEL[l.status] ?? l.status}${l.status === 'downloading' ? ` ${pct}%` : ''}\n`);
    }
  }

  /** Leave the cursor below the display. */
  finish(): void {
    this.drawn = 0;
  }

  private redraw(p: PullProgressEvent, layers: LayerProgress[]): void {
    const width = Math.max(40, this.out.columns ?? 80);
    const lines = layers.map((l) => {
      const head = `${short(l.digest)}: ${(LABEL[l.status] ?? l.status).padEnd(14)}`;
      if (l.status !== 'downloading') return head.trimEnd();
      const barWidth = Math.max(10, Math.min(40, width - head.length - 26));
      const filled = Math.floor((percent(l) / 100) * barWidth);
      return `${head} [${'='.repeat(filled)}${filled < barWidth ? '>' : ''}${' '.repeat(Math.max(0, barWidth - filled - 1))}] ${humanSize(l.bytesDone)}/${humanSize(l.bytesTotal)}`;
    });
    if (p.phase && p.phase !== 'downloading') lines.push(p.phase === 'done' ? 'done' : `${p.phase}...`);
    let s = this.drawn ? `\x1b[${this.drawn}A` : '';
    for (const line of lines) s += `\x1b[2K${line.slice(0, width - 1)}\n`;
    // Clear lines left over from a longer previous frame.
    for (let i = lines.length; i < this.drawn; i++) s += '\x1b[2K\n';
    const total = Math.max(lines.length, this.drawn);
    if (total > lines.length) s += `\x1b[${total - lines.length}A`;
    this.drawn = lines.length;
    this.out.write(s);
  }
}

function percent(l: LayerProgress): number {
  if (l.status === 'done' || l.status === 'exists') return 100;
  return l.bytesTotal > 0 ? Math.min(100, Math.floor((100 * l.bytesDone) / l.bytesTotal)) : 0;
}
