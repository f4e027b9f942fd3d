/**
 * A TTY exec through conmon's exec mode, as podman runs `exec -it`: conmon runs `<runtime> exec
 * --detach --tty --console-socket …`, takes the pty's master from the console socket and relays
 * it through its attach socket; a resize is a line into its winsz fifo.
 *
 * Why not the runtime in the foreground on a pty of ours (OciRuntime.execTerminal), which runc
 * handles well: crun 1.8.1 in that mode ignores SIGWINCH and, when the command exits, flushes
 * what is left in the pty through its error log (`flush_fd_to_err`, src/libcrun/container.c:
 * a fresh-clone CI run saw `docker exec -t busy sh -c tty` print `\x1b[1;31m<time>: /dev/pts/0`).
 * With a console socket crun hands the master over and exits, so neither applies.
 *
 * The handshake (conmon 2.1.6, src/conmon.c): a first byte on the start pipe lets conmon fork;
 * it makes its attach socket at `<dir>/attach` and says so on the attach pipe; we connect (the
 * perl bridge of conmon-attach.ts), then a second byte on the start pipe lets it run the runtime;
 * the sync pipe carries the command's pid, then, when it ends, its exit code. conmon makes its
 * control fifos, the exit file and the pid file in `dir`, which is removed after the exit.
 */
import { spawn } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { Internal, InvalidArgument } from '../../../core/errors.js';
import { checkedResize, type ExecSession } from '../instance-driver.js';
import { attachConmon, resizeConmonTerminal } from './conmon-attach.js';
import { parseSyncMessage } from './conmon.js';

export interface ConmonExecOptions {
  conmonPath: string;
  runtimePath: string;
  /** e.g. ['--root=/var/lib/nimbus/runtime/crun'] */
  runtimeArgs: string[];
  containerId: string;
  /** This exec's own id (conmon's -u): names its socket and exit file. */
  execId: string;
  /** A fresh directory for conmon's attach socket, fifos, pid and exit files (removed at the end). */
  dir: string;
  /** The OCI process (terminal: true, consoleSize set) the runtime execs. */
  processFile: string;
  timeoutMs?: number;
}

/** Newline-delimited JSON messages from one of conmon's pipes, in order. */
class PipeMessages {
  private buf = '';
  private queue: string[] = [];
  private waiters: Array<{ resolve: (s: string | undefined) => void }> = [];
  private ended = false;

  constructor(stream: NodeJS.ReadableStream) {
    stream.on('data', (b: Buffer) => {
      this.buf += b.toString();
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        this.push(this.buf.slice(0, nl));
        this.buf = this.buf.slice(nl + 1);
      }
    });
    const end = () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w.resolve(undefined);
    };
    stream.on('end', end);
    stream.on('error', end);
  }

  private push(line: string): void {
    const w = this.waiters.shift();
    if (w) w.resolve(line);
    else this.queue.push(line);
  }

  /** The next message, or undefined once the pipe has closed. */
  next(): Promise<string | undefined> {
    const line = this.queue.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push({ resolve }));
  }
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_r, reject) => {
      timer = setTimeout(() => reject(new Internal(`${what}: no answer from conmon within ${ms} ms`)), ms);
    }),
  ]);
}

export async function execThroughConmon(o: ConmonExecOptions): Promise<ExecSession> {
  const timeoutMs = o.timeoutMs ?? 30_000;
  const short = o.containerId.slice(0, 12);
  await mkdir(path.join(o.dir, 'exits'), { recursive: true });
  await mkdir(path.join(o.dir, 'sockets'), { recursive: true });
  const args = [
    '--api-version', '1',
    '-c', o.containerId,
    '-u', o.execId,
    '-n', o.containerId,
    '-r', o.runtimePath,
    '-b', o.dir,
    '-p', path.join(o.dir, 'pid'),
    '-l', 'none',
    '--exit-dir', path.join(o.dir, 'exits'),
    '--socket-dir-path', path.join(o.dir, 'sockets'),
    '--log-level', 'error',
    '--exec', '--exec-process-spec', o.processFile, '--exec-attach',
    // the terminal's input: kept open when our writer ends (a terminal has no end of file; closing
    // the master would hang the command up)
    '--terminal', '--stdin', '--leave-stdin-open',
    ...o.runtimeArgs.flatMap((a) => ['--runtime-arg', a]),
  ];
  const child = spawn(o.conmonPath, args, {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe', 'pipe'],
    detached: true,
    cwd: o.dir,
    env: { ...process.env, _OCI_SYNCPIPE: '3', _OCI_STARTPIPE: '4', _OCI_ATTACHPIPE: '5' },
  });
  let conmonErr = '';
  child.stderr!.on('data', (b: Buffer) => {
    if (conmonErr.length < 4096) conmonErr += b.toString();
  });
  child.on('error', () => undefined);
  const sync = new PipeMessages(child.stdio[3] as NodeJS.ReadableStream);
  const attachPipe = new PipeMessages((child.stdio as unknown as NodeJS.ReadableStream[])[5]!);
  const start = child.stdio[4] as NodeJS.WritableStream & { destroy(): void };
  start.on('error', () => undefined);
  child.unref();
  const cleanup = () => rm(o.dir, { recursive: true, force: true }).catch(() => undefined);
  const fail = (what: string, message?: string) =>
    new Internal(`exec in ${short} on a terminal: ${what}${message ? `: ${message.trim()}` : ''}${conmonErr ? ` (conmon: ${conmonErr.trim()})` : ''}`, { id: o.containerId });
  let pid: number | undefined;
  try {
    start.write(Buffer.from([0]));
    const attached = await within(attachPipe.next(), timeoutMs, `exec in ${short}`);
    if (attached === undefined || parseSyncMessage(attached).data < 0) throw fail('conmon did not make its attach socket', attached);
    const io = await attachConmon(o.dir, o.execId, { stdin: true });
    start.write(Buffer.from([0]));
    const started = await within(sync.next(), timeoutMs, `exec in ${short}`);
    const first = started === undefined ? undefined : parseSyncMessage(started);
    if (!first || first.data <= 0) {
      io.stdout.destroy();
      // the runtime's own message, e.g. an executable not found: the request's fault
      const message = first?.message ?? '';
      if (/executable file not found|no such file or directory|permission denied/i.test(message)) throw new InvalidArgument(`exec in ${short}: ${message.trim()}`, { id: o.containerId });
      throw fail('the runtime did not start the command', message);
    }
    pid = first.data;
    const commandPid = pid;
    start.destroy();
    const exit = (async () => {
      const last = await sync.next();
      await io.exit; // the relay has ended: every byte of output is through
      await cleanup();
      if (last === undefined) return 255;
      return parseSyncMessage(last).data;
    })();
    let exited = false;
    void exit.then(() => {
      exited = true;
    });
    // a reader that goes away hangs up on the command, as closing a terminal window does
    io.stdout.once('close', () => {
      if (!exited) {
        try {
          process.kill(commandPid, 'SIGHUP');
        } catch {
          /* gone meanwhile */
        }
      }
    });
    const stderr = new Readable({ read() {} });
    stderr.push(null);
    // a terminal has no end of file (^D is one): the end of our writer leaves conmon's input open
    // (ended, the bridge's shutdown made conmon let go of the terminal: `stty` then failed, seen once in three)
    const bridge = io.stdin;
    const stdin = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        if (!bridge || bridge.destroyed || exited) return cb();
        bridge.write(chunk, () => cb());
      },
      final: (cb) => cb(),
    });
    return {
      stdout: io.stdout,
      stderr,
      stdin,
      exit,
      resize: checkedResize((rows, cols) => {
        if (!exited) void resizeConmonTerminal(o.dir, o.execId, rows, cols).catch(() => undefined);
      }),
    };
  } catch (e) {
    if (pid === undefined) {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* conmon gone already */
      }
    }
    await cleanup();
    throw e;
  }
}
