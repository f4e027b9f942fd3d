/**
 * Attaching to a container's main process when it has a terminal or an open stdin (docker run -it,
 * run -i, attach, compose run): through the container service's attach, which reaches the
 * process's conmon on its host. With Tty the hijacked stream is the terminal's raw bytes both ways;
 * without, the output is framed (stdout and stderr multiplexed) and the client's half-close is the
 * process's end of input (when it was created StdinOnce). The detach keys (default ctrl-p,ctrl-q)
 * typed on the input end the attach and leave the container running, as dockerd does.
 */
import type { Duplex } from 'node:stream';
import { InvalidArgument } from '../../core/errors.js';
import { drainedOrClosed } from '../../core/streams.js';
import type { ContainerRecord } from '../../store/records.js';
import type { AttachSession } from '../../agent/drivers/instance-driver.js';
import { frame } from './mapping.js';
import { skipRequestBody } from './exec.js';
import type { DockerContext } from './server.js';

const DEFAULT_DETACH_KEYS = 'ctrl-p,ctrl-q';

/** Docker's detach keys ("ctrl-p,ctrl-q", "a,ctrl-@"): the bytes they type. */
export function parseDetachKeys(spec: string): Buffer {
  const out: number[] = [];
  for (const raw of spec.split(',')) {
    const k = raw.trim().toLowerCase();
    if (k.length === 1) {
      out.push(k.charCodeAt(0));
      continue;
    }
    const m = /^ctrl-([a-z@[\\\]^_])$/.exec(k);
    if (!m) throw new InvalidArgument(`invalid detach keys ${JSON.stringify(spec)}: use comma-separated letters or ctrl-<a-z, @, [, \\, ], ^, _>`);
    const c = m[1]!;
    out.push(c >= 'a' && c <= 'z' ? c.charCodeAt(0) - 96 : { '@': 0, '[': 27, '\\': 28, ']': 29, '^': 30, _: 31 }[c]!);
  }
  if (out.length === 0 || out.length > 32) throw new InvalidArgument(`invalid detach keys ${JSON.stringify(spec)}`);
  return Buffer.from(out);
}

/**
 * Finds the detach sequence in the input as it passes: bytes that might begin it are held back
 * until it is complete (a detach: they are never sent) or broken (they go on, in order).
 */
export class DetachMatcher {
  private matched = 0;
  constructor(private readonly keys: Buffer) {}

  /** The bytes to pass on now, and whether the sequence is complete (what follows it is dropped). */
  feed(chunk: Buffer): { pass: Buffer; detach: boolean } {
    const pass: number[] = [];
    for (const b of chunk) {
      if (b === this.keys[this.matched]) {
        this.matched++;
        if (this.matched === this.keys.length) return { pass: Buffer.from(pass), detach: true };
        continue;
      }
      // a broken prefix: what was held goes on, and this byte may begin the sequence again
      for (let i = 0; i < this.matched; i++) pass.push(this.keys[i]!);
      this.matched = 0;
      if (b === this.keys[0]) this.matched = 1;
      else pass.push(b);
      if (this.matched === this.keys.length) return { pass: Buffer.from(pass), detach: true };
    }
    return { pass: Buffer.from(pass), detach: false };
  }
}

/** Whether an attach goes to the process's conmon (a terminal, or stdin asked of a container that has one) rather than its log. */
export function attachesToProcess(c: ContainerRecord, wantStdin: boolean): boolean {
  return c.config.tty === true || (wantStdin && c.config.openStdin === true);
}

const UPGRADED = 'HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n';

/**
 * The hijacked connection: input (if any) to the process, its output back, until either side
 * ends. A running or created container is attached before the 101 (a refusal is still an HTTP
 * answer). `untilStarted`: an exited one (`docker start -ai` attaches, then starts): the 101 goes
 * first, since the CLI starts it only then, and the new process is attached once its start is
 * heard; what it prints before that is not seen (the log has it), its input waits meanwhile.
 */
export async function attachToProcess(
  ctx: DockerContext, socket: Duplex, c: ContainerRecord, opts: { stdin: boolean; stdout: boolean; stderr: boolean },
  untilStarted?: () => Promise<ContainerRecord | undefined>,
): Promise<void> {
  const tty = c.config.tty === true;
  // dockerd passes over stdin for a container made without an open one
  const withStdin = opts.stdin && c.config.openStdin === true;
  const keys = parseDetachKeys(ctx.query.get('detachKeys') || DEFAULT_DETACH_KEYS);
  let session: AttachSession;
  if (untilStarted) {
    socket.write(UPGRADED);
    socket.pause();
    const started = await untilStarted();
    if (!started) return void socket.end();
    try {
      session = await ctx.services.containers.attach(c.id, { stdin: withStdin });
    } catch {
      return void socket.end(); // exited again already: the CLI's wait tells the code
    }
  } else {
    session = await ctx.services.containers.attach(c.id, { stdin: withStdin });
    socket.write(UPGRADED);
  }
  // the client gone, or detached: let go of the process (it keeps running)
  const detach = () => {
    session.stdin?.destroy();
    session.stdout.destroy();
    session.stderr.destroy();
  };
  socket.once('close', detach);
  if (socket.destroyed) detach(); // gone while the attach was made: 'close' came before the listener
  if (withStdin && session.stdin) {
    await skipRequestBody(socket, Number(ctx.req.headers['content-length'] ?? 0));
    feedInput(socket, session, new DetachMatcher(keys), tty, detach);
  } else socket.resume();
  try {
    await copyOutput(socket, session, tty, opts);
  } finally {
    if (!socket.destroyed) socket.end();
  }
}

function feedInput(socket: Duplex, session: AttachSession, matcher: DetachMatcher, tty: boolean, detach: () => void): void {
  const stdin = session.stdin!;
  stdin.on('error', () => undefined); // EPIPE once the process has exited
  socket.on('data', (b: Buffer) => {
    const { pass, detach: done } = matcher.feed(b);
    if (pass.length && !stdin.write(pass)) {
      socket.pause();
      stdin.once('drain', () => socket.resume());
    }
    if (done) {
      socket.removeAllListeners('data');
      detach();
    }
  });
  // without a terminal the client's half-close is the end of input (a terminal has none: ^D is one)
  socket.once('end', () => {
    if (!tty) stdin.end();
  });
  socket.resume();
}

/** The terminal's raw bytes, or stdout and stderr framed, as asked; until the process's output ends or the client goes. */
async function copyOutput(out: Duplex, session: AttachSession, tty: boolean, opts: { stdout: boolean; stderr: boolean }): Promise<void> {
  const copy = async (stream: 'stdout' | 'stderr') => {
    const wanted = stream === 'stdout' ? opts.stdout : opts.stderr;
    for await (const chunk of session[stream]) {
      if (out.destroyed) return;
      if (!wanted) continue;
      if (!out.write(tty ? (chunk as Buffer) : frame(stream, chunk as Buffer))) await drainedOrClosed(out as never);
    }
  };
  await Promise.all([copy('stdout'), copy('stderr')]).catch(() => undefined);
}
