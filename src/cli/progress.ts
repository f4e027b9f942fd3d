/** Pull progress on stderr: redrawn bars on a terminal, plain lines otherwise. */
import { humanSize, short } from './output.js';

interface LayerState {
  digest: string;
  status: string;
  bytesDone: number;
  bytesTotal: number;
}

export class PullProgress {
  private drawn = 0;
  private readonly printed = new Map<string, string>();
  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  update(layers: LayerState[]): void {
    if (this.out.isTTY) {
      if (this.drawn) this.out.write(`\x1b[${this.drawn}A`);
      for (const l of layers) {
        const pct = l.bytesTotal ? Math.min(1, l.bytesDone / l.bytesTotal) : 0;
        const width = 30;
        const bar = l.status === 'downloading' ? `[${'='.repeat(Math.floor(pct * width)).padEnd(width)}] ${humanSize(l.bytesDone)}/${humanSize(l.bytesTotal)}` : '';
        this.out.write(`\x1b[2K${short(l.digest)}: ${label(l.status)} ${bar}\n`);
      }
      this.drawn = layers.length;
      return;
    }
    for (const l of layers) {
      const pct = l.bytesTotal ? Math.floor((100 * l.bytesDone) / l.bytesTotal / 25) * 25 : 0;
      const key = `${l.status}:${l.status === 'downloading' ? pct : ''}`;
      if (this.printed.get(l.digest) === key) continue;
      this.printed.set(l.digest, key);
      this.out.write(`${short(l.digest)}: ${label(l.status)}${l.status === 'downloading' ? ` ${pct}%` : ''}\n`);
    }
  }
}

function label(status: string): string {
  return { waiting: 'Waiting', downloading: 'Downloading', verifying: 'Verifying checksum', done: 'Download complete', exists: 'Already exists' }[status] ?? status;
}
