/**
 * Resizing the terminal of a process inside a container directly, for a runtime that does not
 * turn its own SIGWINCH into a resize of the container's pty.
 *
 * A TTY exec runs the runtime in the foreground on a pty of ours (docs/exec.md): runc copies
 * our pty's size to the container's pty when it gets SIGWINCH; crun 1.8.1 does not (measured:
 * `stty size` stayed 24 80 after our pty went to 33 101). The command's own terminal is the
 * container's pty slave, its fd 0/1/2; TIOCSWINSZ on a slave sets the pair's size and sends
 * SIGWINCH to the command, as a resize on the master would. So the resize opens
 * `/proc/PID/fd/N` (a slave is not a cloning device: opening it again is the same terminal)
 * and sets the size there.
 *
 * The process is a tenant's: its fds are checked before anything is opened (a character device
 * with a Unix98 pty major, 136-143, checked again on the opened file), opened O_NONBLOCK so that
 * nothing can block us and O_NOCTTY so that nothing becomes our terminal. Node has no ioctl: a
 * one-line perl (perl-base is Essential on Debian and already runs the attach bridge) does it.
 */
import { readFile } from 'node:fs/promises';
import { run } from '../../../core/exec.js';

/** When the size is applied again after the first time (crun's own first size can land after ours). */
const REASSERT_MS = [100, 500];

const RESIZE_SCRIPT = String.raw`
use strict; use warnings; use Fcntl;
my ($pid, $rows, $cols) = @ARGV;
for my $fd (0, 1, 2) {
  my $p = "/proc/$pid/fd/$fd";
  my @st = stat($p) or next;
  next unless -c _;
  my $major = ($st[6] >> 8) & 0xfff;
  next unless $major >= 136 && $major <= 143;
  sysopen(my $f, $p, O_RDWR | O_NOCTTY | O_NONBLOCK) or next;
  my @again = stat($f);
  next unless @again && $again[6] == $st[6];
  ioctl($f, 0x5414, pack('S4', $rows, $cols, 0, 0)) or die "TIOCSWINSZ: $!\n";
  exit 0;
}
die "process $pid has no terminal on fd 0, 1 or 2\n";
`;

/** Sets the size of the pty process `pid` has on fd 0, 1 or 2 (TIOCSWINSZ; the process gets SIGWINCH). */
export async function resizeProcessTerminal(pid: number, rows: number, cols: number): Promise<void> {
  const r = await run('perl', ['-e', RESIZE_SCRIPT, String(pid), String(rows), String(cols)], { timeoutMs: 5000 });
  if (r.code !== 0) throw new Error(`resize of process ${pid}'s terminal: ${(r.stderr || r.stdout).trim()}`);
}

/**
 * The resizes of one exec, applied in order to the process the runtime names in its pid file
 * (written once the process exists: resizes asked before then wait for it, the latest wins).
 * Failures are dropped: a process that exited or closed its terminal has nothing to resize.
 *
 * crun writes the pid file before it sets the pty's first size (`consoleSize`, or its stdin's),
 * so a resize applied at once can be overwritten by that first size (seen: `stty size` 24 80
 * after a resize to 20x60 in one of three runs). The latest size is therefore applied again
 * REASSERT_MS after the first one.
 */
export class ProcessTerminalResizer {
  private wanted: { rows: number; cols: number } | undefined;
  private latest: { rows: number; cols: number } | undefined;
  private draining = false;
  private pid: number | undefined;
  private closed = false;
  private reassert: NodeJS.Timeout[] = [];

  constructor(private readonly pidFile: string, private readonly waitMs = 5000) {}

  resize(rows: number, cols: number): void {
    if (this.closed) return;
    this.wanted = this.latest = { rows, cols };
    if (!this.draining) void this.drain();
  }

  /** The exec ended: nothing more is applied. */
  close(): void {
    this.closed = true;
    this.wanted = undefined;
    for (const t of this.reassert) clearTimeout(t);
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      for (let size = this.wanted; size && !this.closed; size = this.wanted) {
        this.wanted = undefined;
        const first = this.pid === undefined;
        const pid = await this.processId();
        if (pid === undefined) return;
        await resizeProcessTerminal(pid, size.rows, size.cols).catch(() => undefined);
        if (first) {
          this.reassert = REASSERT_MS.map((ms) => setTimeout(() => {
            if (this.latest) this.resize(this.latest.rows, this.latest.cols);
          }, ms).unref());
        }
      }
    } finally {
      this.draining = false;
    }
  }

  private async processId(): Promise<number | undefined> {
    const until = Date.now() + this.waitMs;
    while (this.pid === undefined && !this.closed && Date.now() < until) {
      const text = await readFile(this.pidFile, 'utf8').catch(() => '');
      const pid = Number(text.trim());
      if (Number.isInteger(pid) && pid > 0) this.pid = pid;
      else await new Promise((r) => setTimeout(r, 10));
    }
    return this.pid;
  }
}
