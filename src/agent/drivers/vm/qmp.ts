/**
 * A typed QMP client (QEMU Machine Protocol: JSON lines over a unix socket).
 *
 * Protocol: on connect QEMU sends a greeting {"QMP": {...}}; the client must
 * send qmp_capabilities before any other command. Each command carries an
 * "id" that QEMU echoes in its {"return"} or {"error"} reply, so replies are
 * matched by id, not by order. Lines with "event" are asynchronous events,
 * delivered to listeners and to async iterators from events().
 *
 * Errors: a QMP {"error": {class, desc}} becomes a QmpCommandError whose Nimbus
 * code follows the class (DeviceNotFound → NotFound, CommandNotFound →
 * InvalidArgument, DeviceNotActive → Conflict, KVMMissingCap → Unavailable,
 * anything else → Internal); a socket that closes or never answers becomes a
 * QmpClosedError (Unavailable) for every pending and later command.
 */
import net from 'node:net';
import { AsyncQueue } from '../../../core/async-queue.js';
import { NimbusError, type ErrorCode } from '../../../core/errors.js';

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

const CLASS_TO_CODE: Record<string, ErrorCode> = {
  GenericError: 'Internal',
  CommandNotFound: 'InvalidArgument',
  DeviceNotActive: 'Conflict',
  DeviceNotFound: 'NotFound',
  KVMMissingCap: 'Unavailable',
};

/** QEMU answered a command with {"error": ...}. */
export class QmpCommandError extends NimbusError {
  readonly qmpClass: string;
  readonly command: string;
  constructor(command: string, qmpClass: string, desc: string) {
    super(CLASS_TO_CODE[qmpClass] ?? 'Internal', `QMP ${command}: ${qmpClass}: ${desc}`, { qmpClass, command });
    this.qmpClass = qmpClass;
    this.command = command;
  }
}

/** The QMP socket is gone (QEMU exited, never listened, or the client closed it). */
export class QmpClosedError extends NimbusError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('Unavailable', message, undefined, options);
  }
}

interface Pending {
  command: string;
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer?: NodeJS.Timeout;
}

export interface QmpConnectOptions {
  /** Bound on connect + greeting + capabilities negotiation. Default 5000 ms. */
  timeoutMs?: number;
}

export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private readonly queues = new Set<AsyncQueue<QmpEvent>>();
  private closedError: QmpClosedError | undefined;
  private greetingWaiter: { resolve(g: QmpGreeting): void; reject(e: Error): void } | undefined;
  greeting: QmpGreeting | undefined;
  /** Resolves once the socket has closed, for whatever reason. */
  readonly closed: Promise<void>;

  private constructor(private readonly sock: net.Socket, readonly path: string) {
    let onClosed!: () => void;
    this.closed = new Promise((r) => (onClosed = r));
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', (e) => this.fail(new QmpClosedError(`QMP socket ${path}: ${e.message}`, { cause: e })));
    sock.on('close', () => {
      this.fail(new QmpClosedError(`QMP socket ${path} closed`));
      onClosed();
    });
  }

  /** Connect, read the greeting, negotiate capabilities. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    const sock = net.createConnection(path);
    const c = new QmpClient(sock, path);
    const timer = setTimeout(() => c.fail(new QmpClosedError(`QMP ${path}: no greeting within ${timeoutMs} ms`)), timeoutMs);
    try {
      c.greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        if (c.closedError) return reject(c.closedError);
        c.greetingWaiter = { resolve, reject };
      });
      await c.execute('qmp_capabilities', undefined, { timeoutMs });
      return c;
    } catch (e) {
      c.close();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Run one command; resolves with its "return" value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `n${this.nextId++}`;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args !== undefined) msg.arguments = args;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { command, resolve: resolve as (v: unknown) => void, reject };
      if (opts.timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new QmpClosedError(`QMP ${command}: no reply within ${opts.timeoutMs} ms`));
        }, opts.timeoutMs);
      }
      this.pending.set(id, p);
      this.sock.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /** Listen to events; returns the function that stops listening. */
  onEvent(fn: (e: QmpEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Events from now on until the socket closes (or signal aborts). */
  events(signal?: AbortSignal): AsyncIterable<QmpEvent> {
    const q = new AsyncQueue<QmpEvent>();
    if (this.closedError) q.end();
    this.queues.add(q);
    const queues = this.queues;
    return {
      [Symbol.asyncIterator]: () => {
        const it = q.drain(signal);
        return {
          next: () => it.next(),
          return: async (v?: unknown) => {
            queues.delete(q);
            return it.return(v as undefined);
          },
        };
      },
    };
  }

  /** The next event named `name` (optionally matching `pred`), or a QmpClosedError on close/timeout. */
  waitForEvent(name: string, timeoutMs: number, pred: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const off = this.onEvent((e) => {
        if (e.event === name && pred(e)) done(() => resolve(e));
      });
      const timer = setTimeout(() => done(() => reject(new QmpClosedError(`QMP: no ${name} event within ${timeoutMs} ms`))), timeoutMs);
      const onClose = () => done(() => reject(this.closedError ?? new QmpClosedError('QMP closed')));
      void this.closed.then(onClose);
      let finished = false;
      function done(f: () => void) {
        if (finished) return;
        finished = true;
        off();
        clearTimeout(timer);
        f();
      }
    });
  }

  get isClosed(): boolean {
    return this.closedError !== undefined;
  }

  close(): void {
    this.sock.destroy();
    this.fail(new QmpClosedError(`QMP socket ${this.path} closed by client`));
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line) as Record<string, unknown>;
    } catch {
      this.fail(new QmpClosedError(`QMP ${this.path}: unparsable line ${JSON.stringify(line.slice(0, 200))}`));
      this.sock.destroy();
      return;
    }
    if ('QMP' in m) {
      const w = this.greetingWaiter;
      this.greetingWaiter = undefined;
      w?.resolve(m.QMP as QmpGreeting);
      return;
    }
    if (typeof m.event === 'string') {
      const ev = m as unknown as QmpEvent;
      for (const l of this.listeners) l(ev);
      for (const q of this.queues) q.push(ev);
      return;
    }
    const id = typeof m.id === 'string' ? m.id : undefined;
    const p = id !== undefined ? this.pending.get(id) : undefined;
    if (!p || id === undefined) return; // a reply to a command that timed out
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if ('error' in m) {
      const err = (m.error ?? {}) as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, err.class ?? 'GenericError', err.desc ?? 'unknown error'));
    } else {
      p.resolve(m.return);
    }
  }

  private fail(e: QmpClosedError): void {
    if (this.closedError) return;
    this.closedError = e;
    this.greetingWaiter?.reject(e);
    this.greetingWaiter = undefined;
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(e);
    }
    this.pending.clear();
    for (const q of this.queues) q.end();
    this.queues.clear();
    this.sock.destroy();
  }
}
