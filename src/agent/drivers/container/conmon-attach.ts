/**
 * Attaching to a container's main process through conmon: its attach socket and its control fifo.
 *
 * conmon (`--socket-dir-path`) listens on `<bundle>/attach` (reached through a symlink
 * `<socket-dir>/<id>` that we do not need: we know the bundle). It is a SOCK_SEQPACKET unix
 * socket: every packet conmon sends is one read of the container's stdout or stderr prefixed by
 * one byte naming the pipe (2 stdout, 3 stderr; src/ctr_stdio.c), every packet a client sends is
 * raw bytes for the container's stdin (src/conn_sock.c), and a client's shutdown(SHUT_WR) or
 * close ends that stdin unless conmon runs with `--leave-stdin-open`.
 *
 * A resize is a line `<rows> <cols>\n` into the fifo `<bundle>/winsz`, which conmon reads once it
 * holds the terminal and turns into TIOCSWINSZ (src/ctrl.c). podman writes `1 <rows> <cols>` into
 * `<bundle>/ctl` instead, which conmon copies into winsz; but conmon up to 2.1.x (Debian's 2.1.6)
 * applies only the first line of each read (`line_process_func(ctlbuf)`, fixed upstream in
 * 2a1dda8 "Fix terminal resize event processing"), so two resizes close together (the docker CLI's
 * attach sends h+1,w+1 then h,w) left the terminal at the first. Our line is padded with leading
 * spaces (sscanf's %d skips them) to the 199 bytes conmon reads at a time: every read is one whole
 * line, so every resize is applied, in order, on old and fixed conmons alike.
 *
 * Node's net cannot open a SOCK_SEQPACKET socket, so a tiny perl script (perl-base is Essential
 * on Debian and already runs our whiteout helper; its Socket module has SOCK_SEQPACKET) bridges
 * it to pipes: its stdin is the container's input, its stdout the container's output in Docker's
 * multiplexed framing (8-byte header: stream 1 or 2, three zero bytes, big-endian length), which
 * keeps the packets' stream bytes through a byte pipe. Its first frame, stream 0 and length 0,
 * says the socket is connected, so a caller that starts the container afterwards misses nothing.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { Conflict, Internal } from '../../../core/errors.js';
import type { AttachSession } from '../instance-driver.js';

/** The bridge: chdir to the bundle (the socket's full path may pass the 108 bytes of sun_path), connect, copy both ways. */
export const ATTACH_BRIDGE = String.raw`
use strict; use warnings; use Socket;
my ($dir, $withStdin) = @ARGV;
chdir $dir or die "chdir: $!\n";
socket(my $s, AF_UNIX, SOCK_SEQPACKET, 0) or die "socket: $!\n";
connect($s, pack_sockaddr_un("attach")) or die "connect: $!\n";
binmode STDOUT; binmode STDIN;
sub out { my $b = shift; my $o = 0;
  while ($o < length $b) { my $w = syswrite(STDOUT, $b, length($b) - $o, $o); if (!defined $w) { next if $!{EINTR}; exit 0 } $o += $w } }
out(pack("CxxxN", 0, 0));
my $in = $withStdin ? 1 : 0;
while (1) {
  my $r = ""; vec($r, fileno($s), 1) = 1; vec($r, fileno(STDIN), 1) = 1 if $in;
  if (select($r, undef, undef, undef) < 0) { next if $!{EINTR}; die "select: $!\n" }
  if (vec($r, fileno($s), 1)) {
    my $buf = ""; defined(recv($s, $buf, 65536, 0)) or do { next if $!{EINTR}; die "recv: $!\n" };
    last if length($buf) == 0;
    my $p = ord(substr($buf, 0, 1)); my $t = $p == 2 ? 1 : $p == 3 ? 2 : 0;
    out(pack("CxxxN", $t, length($buf) - 1) . substr($buf, 1)) if $t && length($buf) > 1;
  }
  if ($in && vec($r, fileno(STDIN), 1)) {
    my $n = sysread(STDIN, my $buf, 32768);
    if (!defined $n) { next if $!{EINTR}; $n = 0 }
    if ($n == 0) { shutdown($s, 1); $in = 0 } else { defined(send($s, $buf, 0)) or die "send: $!\n" }
  }
}
`;

/** One frame of Docker's multiplexed stream: 0 (the bridge's "connected"), 1 stdout, 2 stderr. */
export interface MuxFrame {
  stream: number;
  data: Buffer;
}

/** A parser of Docker's multiplexed framing fed in arbitrary chunks (the frames may be cut anywhere). */
export class MuxParser {
  private pending: Buffer = Buffer.alloc(0);
  /** At most this many bytes in one frame: more is a corrupt stream (conmon sends 8 KiB reads). */
  constructor(private readonly maxFrame = 1 << 20) {}

  push(chunk: Buffer): MuxFrame[] {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const out: MuxFrame[] = [];
    while (this.pending.length >= 8) {
      const stream = this.pending[0]!;
      const size = this.pending.readUInt32BE(4);
      if (stream > 2 || this.pending[1] !== 0 || this.pending[2] !== 0 || this.pending[3] !== 0 || size > this.maxFrame) {
        throw new Error(`not a multiplexed stream (header ${this.pending.subarray(0, 8).toString('hex')})`);
      }
      if (this.pending.length < 8 + size) break;
      out.push({ stream, data: this.pending.subarray(8, 8 + size) });
      this.pending = this.pending.subarray(8 + size);
    }
    return out;
  }

  /** Bytes of an incomplete frame still held (a stream that ends with some was cut). */
  get buffered(): number {
    return this.pending.length;
  }
}

/** conmon reads its control fifos 199 bytes at a time (CTLBUFSZ - 1). */
const CONMON_CTL_READ = 199;

/** One resize for conmon's winsz fifo: `rows cols\n`, padded in front to exactly one of conmon's reads. */
export function resizeMessage(rows: number, cols: number): string {
  const line = `${rows} ${cols}\n`;
  return line.padStart(CONMON_CTL_READ, ' ');
}

/** Resize the main process's terminal: one line into conmon's winsz fifo (ENXIO: no conmon reads it, the container is gone). */
export async function resizeConmonTerminal(bundle: string, id: string, rows: number, cols: number): Promise<void> {
  let fh;
  try {
    // non-blocking: an open for writing blocks until a reader has it open; conmon holds it while it lives
    fh = await open(path.join(bundle, 'winsz'), constants.O_WRONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENXIO' || code === 'ENOENT') throw new Conflict(`container ${id.slice(0, 12)} is not running`, { id });
    throw new Internal(`resize ${id}: ${(e as Error).message}`, { id }, { cause: e });
  }
  try {
    await fh.write(resizeMessage(rows, cols));
  } finally {
    await fh.close();
  }
}

/**
 * Attach to the container's conmon: resolves once the socket is connected (so a start after it
 * loses no output), with the container's output and, if asked, its stdin.
 */
export async function attachConmon(bundle: string, id: string, opts: { stdin: boolean }): Promise<AttachSession> {
  const child = spawn('perl', ['-e', ATTACH_BRIDGE, bundle, opts.stdin ? '1' : '0'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const parser = new MuxParser();
  let errText = '';
  child.stderr.on('data', (b: Buffer) => {
    if (errText.length < 4096) errText += b.toString();
  });
  child.stdin.on('error', () => undefined); // EPIPE once the bridge is gone
  let connected!: () => void;
  let failed!: (e: Error) => void;
  const ready = new Promise<void>((resolve, reject) => {
    connected = resolve;
    failed = reject;
  });
  child.stdout.on('data', (b: Buffer) => {
    let frames: MuxFrame[];
    try {
      frames = parser.push(b);
    } catch (e) {
      child.kill('SIGKILL');
      stdout.destroy(e as Error);
      return;
    }
    for (const f of frames) {
      if (f.stream === 0) connected();
      else if (!(f.stream === 1 ? stdout : stderr).write(f.data)) {
        // a slow reader: stop reading the bridge (conmon then drops this client's output rather than block the container)
        child.stdout.pause();
        (f.stream === 1 ? stdout : stderr).once('drain', () => child.stdout.resume());
      }
    }
  });
  const exit = new Promise<number>((resolve) => {
    child.once('close', (code) => {
      failed(code === 0 ? new Conflict(`container ${id.slice(0, 12)} is not running`, { id }) : attachError(id, errText));
      stdout.end();
      stderr.end();
      resolve(0);
    });
    child.once('error', (e) => {
      failed(new Internal(`cannot run perl for attach: ${e.message}`, { id }, { cause: e }));
      stdout.end();
      stderr.end();
      resolve(0);
    });
  });
  // the reader gone is a detach: the bridge closes the socket
  stdout.once('close', () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  });
  await ready;
  const stdin = opts.stdin
    ? new Writable({
        write: (chunk: Buffer, _enc, cb) => {
          if (child.stdin.destroyed) return cb();
          if (child.stdin.write(chunk)) cb();
          else child.stdin.once('drain', () => cb());
        },
        final: (cb) => {
          child.stdin.end();
          cb();
        },
        destroy: (err, cb) => {
          if (!child.stdin.destroyed) child.stdin.end();
          cb(err);
        },
      })
    : undefined;
  if (!opts.stdin) child.stdin.end();
  return { stdout, stderr, ...(stdin ? { stdin } : {}), exit };
}

/** The bridge's failure in our words: no socket means no conmon (the container is not created or has exited). */
function attachError(id: string, text: string): Error {
  const t = text.trim();
  if (/connect: (No such file|Connection refused)/.test(t)) return new Conflict(`container ${id.slice(0, 12)} is not running`, { id });
  return new Internal(`attach ${id}: ${t || 'the attach bridge failed'}`, { id });
}
