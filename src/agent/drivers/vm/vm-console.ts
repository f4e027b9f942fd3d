/**
 * A VM's serial console: the live connection (input to the guest) and its output as the
 * instance's logs, read from the console log QEMU writes (console-log.ts caps and rotates it)
 * after the output of the hosts the VM migrated from (console.history).
 */
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Conflict, NimbusError, NotFound } from '../../../core/errors.js';
import type { LogRecord } from '../instance-driver.js';
import { LineCursor } from '../log-files.js';
import { consoleStart, ConsoleCursor, type ConsoleLogLimits } from './console-log.js';
import type { InstancePaths } from './qemu-process.js';
import type { VmRecords } from './vm-record.js';

/** A console line longer than this is handed out in pieces (a guest may print anything). */
const CONSOLE_MAX_LINE = 64 * 1024;

/** The console output of the VM's previous hosts (written when it migrates in). */
export const consoleHistory = (p: InstancePaths) => path.join(p.dir, 'console.history');

export class VmConsole {
  constructor(
    private readonly records: Pick<VmRecords, 'paths' | 'load'>,
    private readonly limits: ConsoleLogLimits,
  ) {}

  /** A connection to the serial console (input to the guest; its output also goes to the console log). One client at a time. */
  async open(id: string): Promise<net.Socket> {
    const r = await this.records.load(id);
    if (r.lifecycle !== 'running' && r.lifecycle !== 'paused') throw new Conflict(`VM ${id} is not running`, { id });
    const sock = net.createConnection(this.records.paths(id).consoleSocket);
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', (e) => reject(new NimbusError('Unavailable', `console of ${id}: ${e.message}`, { id })));
    });
    return sock;
  }

  async *logs(id: string, opts: { follow?: boolean; tail?: number; signal?: AbortSignal }): AsyncIterable<LogRecord> {
    const p = this.records.paths(id);
    await this.records.load(id);
    const rec = (line: { text: string; partial?: true }, isPartial = false): LogRecord => {
      const r: LogRecord = { time: new Date().toISOString(), stream: 'stdout', line: line.text.replace(/\r+$/, '') };
      if (isPartial || line.partial) r.partial = true;
      return r;
    };
    // What the console printed on the hosts this VM migrated from, then here (the rotated
    // generations oldest first, console-log.ts): read in chunks, tail backwards from the end,
    // never a whole file in memory.
    if (!existsSync(p.consoleLog)) throw new NotFound(`VM ${id} has no console log`, { id });
    const start = await consoleStart(p.consoleLog, this.limits, consoleHistory(p), opts.tail);
    const lineOpts = { maxLine: CONSOLE_MAX_LINE };
    // One byte stream across hosts: a move's stop can fall between the bytes of a line (the UART
    // sends a byte at a time), and the rest of that line is the first thing printed here.
    let carried: Buffer | undefined;
    if (start.history !== undefined) {
      const history = await LineCursor.open(consoleHistory(p), start.history, lineOpts);
      if (history) {
        try {
          for await (const l of history.lines()) yield rec(l);
          carried = history.takePending();
        } finally {
          await history.close();
        }
      }
    }
    const cur = new ConsoleCursor(p.consoleLog, this.limits, start.gen, start.offset, CONSOLE_MAX_LINE, carried);
    try {
      for await (const l of cur.lines()) yield rec(l);
      if (!opts.follow) {
        if (cur.pending() && opts.tail === undefined) yield rec({ text: cur.pending() }, true);
        return;
      }
      for (;;) {
        if (opts.signal?.aborted) return;
        let n = 0;
        for await (const l of cur.lines()) {
          n++;
          yield rec(l);
        }
        if (n) continue;
        const r = await this.records.load(id).catch(() => undefined);
        // a created VM has not started yet: follow waits for it (as `run` opens the logs before start)
        if (!r || (r.lifecycle !== 'running' && r.lifecycle !== 'paused' && r.lifecycle !== 'created')) {
          for await (const l of cur.lines()) yield rec(l);
          if (cur.pending()) yield rec({ text: cur.pending() }, true);
          return;
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, 100);
          opts.signal?.addEventListener('abort', done, { once: true });
          function done() {
            clearTimeout(t);
            opts.signal?.removeEventListener('abort', done);
            resolve();
          }
        });
      }
    } finally {
      await cur.close();
    }
  }
}
