/**
 * Long-lived shells that run the agent's host commands for it: the network layer's
 * (ip, nft), the snapshotter's mounts (mount, umount), the FIFO stocks' mkfifo, the OCI runtime's deletes and the
 * starts of conmon (launch()). Spawning from nimbusd costs
 * what forking a large process costs (~8-14 ms here, for /bin/true, on the event
 * loop); forking from a small shell that is already running costs a fraction of that
 * (a profile of 200 cold creates had 42 % of the daemon's main thread in spawn()).
 * Each request is one here-document fed to one program, with its output and exit
 * status read back up to a marker line.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Internal } from '../core/errors.js';
import { run as spawnRun } from '../core/exec.js';
import { logger } from '../core/log.js';

const log = logger('agent.network.runner');

export interface RunResult {
  code: number;
  output: string;
}

interface Job {
  script: string;
  marker: string;
  timeoutMs?: number;
  timer?: NodeJS.Timeout;
  timedOut?: boolean;
  resolve: (r: RunResult) => void;
  reject: (e: Error) => void;
}

/** Only these programs, with arguments that need no quoting, ever reach the shell. */
const SAFE_ARG = /^[A-Za-z0-9_.:/@%+=,-]+$/;
const PROGRAMS = new Set(['ip', 'nft', 'mount', 'umount', 'losetup', 'mkfs.ext4', 'mkfifo']);
/** ...and the OCI runtimes, named by their absolute path (the agent's choice of binary). */
const RUNTIMES = new Set(['runc', 'crun']);
/** Monitors that daemonize, started by launch() (by absolute path too). */
const MONITORS = new Set(['conmon']);
const ENV_NAME = /^[A-Z_][A-Z0-9_]*$/;

function allowed(program: string): boolean {
  return PROGRAMS.has(program) || (path.isAbsolute(program) && RUNTIMES.has(path.basename(program)) && SAFE_ARG.test(program));
}

export interface LaunchOptions {
  /** The program's working directory. */
  cwd: string;
  /** Added to the shell's environment (PATH and LC_ALL only) for the program. */
  env: Record<string, string>;
  /** The program's stdout and stderr, appended to (conmon says a bad option on stdout). */
  stderrFile: string;
  /** Opened for writing as the program's fd 3: a FIFO the caller reads (open its read end first). */
  fd3: string;
  timeoutMs?: number;
}

/** Whether launch() takes this program and these options (callers with others spawn it themselves). */
export function launchable(program: string, args: readonly string[], o: LaunchOptions): boolean {
  return (
    path.isAbsolute(program) && MONITORS.has(path.basename(program)) && SAFE_ARG.test(program) && runnable(args, o.cwd) &&
    SAFE_ARG.test(o.stderrFile) && SAFE_ARG.test(o.fd3) && Object.entries(o.env).every(([k, v]) => ENV_NAME.test(k) && SAFE_ARG.test(v))
  );
}

/** Whether run() takes these arguments (callers with others spawn the program themselves). */
export function runnable(args: readonly string[], cwd?: string): boolean {
  return args.every((a) => SAFE_ARG.test(a)) && (cwd === undefined || SAFE_ARG.test(cwd));
}

class Shell {
  private child: ChildProcessWithoutNullStreams | undefined;
  private queue: Job[] = [];
  private current: Job | undefined;
  private buf = '';

  private start(): ChildProcessWithoutNullStreams {
    // its own process group: a command past its time is killed with the shell (timeoutMs)
    const child = spawn('/bin/sh', [], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' }, detached: true });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      this.buf += d;
      this.drain();
    });
    child.stderr.on('data', (d: Buffer) => log.debug('runner stderr', { text: d.toString().slice(0, 500) }));
    child.on('exit', (code, signal) => {
      if (this.child !== child) return; // closed: its work was failed then
      this.child = undefined;
      const err = new Internal(this.current?.timedOut ? `the command did not finish within ${this.current.timeoutMs} ms` : `the command shell exited (${code ?? signal})`);
      if (this.current?.timer) clearTimeout(this.current.timer);
      this.current?.reject(err);
      this.current = undefined;
      this.buf = '';
      if (this.queue.length) this.next(); // a new shell for what was waiting
    });
    child.stdin.on('error', () => undefined); // the exit handler reports it
    return child;
  }

  /** An idle shell does not keep the process alive; one with work in flight does. */
  private hold(on: boolean): void {
    const c = this.child;
    if (!c) return;
    for (const h of [c, c.stdout, c.stderr, c.stdin] as Array<{ ref?: () => void; unref?: () => void }>) {
      if (on) h.ref?.();
      else h.unref?.();
    }
  }

  private drain(): void {
    const job = this.current;
    if (!job) return;
    const at = this.buf.indexOf(job.marker);
    if (at < 0) return;
    const end = this.buf.indexOf('\n', at);
    if (end < 0) return;
    const code = Number(this.buf.slice(at + job.marker.length, end).trim());
    const output = this.buf.slice(0, at);
    this.buf = this.buf.slice(end + 1);
    this.current = undefined;
    if (job.timer) clearTimeout(job.timer);
    job.resolve({ code: Number.isInteger(code) ? code : -1, output });
    this.next();
  }

  private next(): void {
    if (this.current) return;
    if (!this.queue.length) return this.hold(false);
    const job = this.queue.shift()!;
    this.current = job;
    const child = (this.child ??= this.start());
    this.hold(true);
    if (job.timeoutMs !== undefined) {
      job.timer = setTimeout(() => {
        job.timedOut = true;
        try {
          process.kill(-child.pid!, 'SIGKILL'); // the shell and the command it runs
        } catch {
          /* already gone */
        }
      }, job.timeoutMs);
    }
    child.stdin.write(job.script);
  }

  run(script: string, marker: string, timeoutMs?: number): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ script, marker, resolve, reject, ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
      this.next();
    });
  }

  busy(): number {
    return this.queue.length + (this.current ? 1 : 0);
  }

  close(): void {
    const err = new Internal('the command shell was closed');
    if (this.current?.timer) clearTimeout(this.current.timer);
    this.current?.reject(err);
    for (const j of this.queue.splice(0)) j.reject(err);
    this.current = undefined;
    this.buf = '';
    this.child?.stdin.end();
    this.child = undefined;
  }
}

export class CommandRunner {
  private readonly shells: Shell[];

  constructor(size = 2) {
    this.shells = Array.from({ length: size }, () => new Shell());
  }

  /**
   * Run `program args...` with `input` on its standard input; output is stdout and stderr together.
   * With timeoutMs, a command still running then is killed (with its shell; the next request gets a new one).
   */
  run(program: string, args: string[], input = '', cwd?: string, opts: { timeoutMs?: number } = {}): Promise<RunResult> {
    if (!allowed(program)) throw new Internal(`the command runner does not run ${program}`);
    for (const a of args) if (!SAFE_ARG.test(a)) throw new Internal(`unsafe argument for ${program}: ${JSON.stringify(a)}`);
    if (cwd !== undefined && !SAFE_ARG.test(cwd)) throw new Internal(`unsafe working directory for ${program}: ${JSON.stringify(cwd)}`);
    const tag = randomBytes(6).toString('hex');
    const eof = `NIMBUS_EOF_${tag}`;
    if (input.split('\n').includes(eof)) throw new Internal('input contains the here-document delimiter');
    const body = input.endsWith('\n') || input === '' ? input : `${input}\n`;
    // a working directory only for this command: a subshell, so the shell's own stays
    const command = cwd === undefined ? `${program} ${args.join(' ')}` : `(cd ${cwd} && exec ${program} ${args.join(' ')})`;
    return this.submit(tag, `${command} 2>&1 <<'${eof}'\n${body}${eof}`, opts.timeoutMs);
  }

  /** One command line to the least busy shell (requests for different containers run side by side), its status read back after a marker line. */
  private submit(tag: string, command: string, timeoutMs: number | undefined): Promise<RunResult> {
    const marker = `@@nimbus-${tag} `;
    const shell = this.shells.reduce((a, b) => (b.busy() < a.busy() ? b : a));
    return shell.run(`${command}\necho "${marker}$?"\n`, marker, timeoutMs);
  }

  /** run() where the program and arguments allow it, else the program spawned directly (from this process); output as run()'s. */
  async runOrSpawn(program: string, args: string[], cwd?: string, opts: { timeoutMs?: number } = {}): Promise<RunResult> {
    if (allowed(program) && runnable(args, cwd)) return this.run(program, args, '', cwd, opts);
    const r = await spawnRun(program, args, { ...(cwd !== undefined ? { cwd } : {}), ...opts });
    return { code: r.code, output: `${r.stdout}${r.stderr}` };
  }

  /**
   * Start a monitor that daemonizes (conmon) from a shell, not from nimbusd: a fork of the daemon
   * copies the page tables of 150+ MiB and holds the event loop until the child has exec'd (~3.4 ms
   * a container here, more under a burst), a fork of the small shell costs a fraction of that.
   * stdin is /dev/null, stdout and stderr are appended to `stderrFile`, fd 3 is `fd3` opened for
   * writing. Resolves with the exit status of the program's first process (the daemonized part
   * goes on in a session of its own, beyond the reach of a timeout's kill of the shell's group);
   * `output` is what the shell itself said (a redirection it could not make).
   */
  launch(program: string, args: string[], o: LaunchOptions): Promise<RunResult> {
    if (!launchable(program, args, o)) throw new Internal(`the command runner does not launch ${program} with these arguments`);
    const env = Object.entries(o.env).map(([k, v]) => `${k}=${v}`).join(' ');
    return this.submit(randomBytes(6).toString('hex'), `(cd ${o.cwd} && ${env} exec ${program} ${args.join(' ')} </dev/null >>${o.stderrFile} 2>&1 3>${o.fd3}) 2>&1`, o.timeoutMs);
  }

  close(): void {
    for (const s of this.shells) s.close();
  }
}
