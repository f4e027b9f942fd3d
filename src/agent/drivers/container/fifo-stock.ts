/**
 * FIFOs made ahead, a batch per `mkfifo` process. Node cannot make a FIFO, and one `mkfifo` per warm
 * container (its go fifo, warm-start.ts) was one fork of the daemon per container: ~2.7 ms of its
 * event loop each (a fork copies the page tables of a 150+ MiB process). A FIFO is only a
 * directory entry, so a stock of them is made in a directory of the driver's own, on the same
 * filesystem, and each is renamed into place when a container needs one. The stock is removed
 * when the driver closes, and a stock a killed daemon left is removed by the next one's driver.
 * The batch's `mkfifo` is forked by a long-lived shell (command-runner.ts), not by the daemon:
 * spawned, a batch still held the event loop ~12 ms under back-to-back load (77 ms of a
 * 100-request run's main thread, two stocks of 16).
 */
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { Internal } from '../../../core/errors.js';
import { CommandRunner } from '../../command-runner.js';

let shells: CommandRunner | undefined;
const fifoShells = () => (shells ??= new CommandRunner(1));

/** FIFOs made per `mkfifo` process. */
const BATCH = 16;

export class FifoStock {
  private stock: string[] = [];
  private making: Promise<void> | undefined;
  private seq = 0;

  /** `mode`: the FIFOs' permission bits as mkfifo takes them (octal). */
  constructor(
    private readonly dir: string,
    private readonly mode = '0644',
  ) {
    rmSync(dir, { recursive: true, force: true }); // a killed daemon's stock
  }

  /** A new FIFO at dest, whose directory exists and where nothing is yet. */
  async place(dest: string): Promise<void> {
    for (;;) {
      const fifo = this.stock.pop();
      if (fifo !== undefined) {
        try {
          renameSync(fifo, dest); // in this turn: a thread-pool round trip costs ~50 µs more here
          return;
        } catch (e) {
          // another driver on this state dir (a daemon started again) removed the stock: make more
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !existsSync(path.dirname(dest))) throw e;
          this.stock = [];
          continue;
        }
      }
      this.making ??= this.make().finally(() => {
        this.making = undefined;
      });
      await this.making;
    }
  }

  /** Remove the stock (the driver closes). */
  clear(): void {
    this.stock = [];
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async make(): Promise<void> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const names = Array.from({ length: BATCH }, () => path.join(this.dir, `${++this.seq}`));
    const r = await fifoShells().runOrSpawn('mkfifo', ['-m', this.mode, '--', ...names], undefined, { timeoutMs: 30_000 });
    if (r.code !== 0) {
      rmSync(this.dir, { recursive: true, force: true });
      throw new Internal(`mkfifo: ${r.output.trim()}`);
    }
    this.stock.push(...names);
  }
}
