/** Test support for terminals (exec -t, attach to a process on one): what it printed, and waits for what it should print. */
import type { Readable } from 'node:stream';
import { makeBusyboxRootfs } from './rootfs-test-support.js';

/** A busybox rootfs at `rootfs` with what the terminal tests run (sh, stty, tty, …) and a root user. */
export function makeTerminalRootfs(rootfs: string): Promise<void> {
  return makeBusyboxRootfs(rootfs, ['sh', 'sleep', 'stty', 'tty', 'cat', 'echo']);
}

/**
 * A shell fragment that waits until the terminal is `rows cols`, then prints it. A resize is
 * asynchronous — SIGWINCH reaches runc, whose handler resizes the container's pty — so a line
 * typed just after it can be read before the size changes, as with dockerd; a resize that never
 * arrives leaves the wait hanging and the test's waitFor reports what the terminal showed.
 */
export function waitForSize(rows: number, cols: number): string {
  return `until [ "$(stty size)" = "${rows} ${cols}" ]; do sleep 0.02; done; stty size`;
}

/**
 * Everything a terminal printed so far, and a wait for what it should print next. Line ends are
 * matched as \r+\n: runc clears ONLCR on the container's pty only once the command may already
 * print, and keeps it on its own stdio, so a first line can come as \r\r\n (docs/exec.md).
 */
export class TerminalReader {
  text = '';
  constructor(out: Readable) {
    out.on('data', (b: Buffer) => {
      this.text += b.toString('utf8');
    });
  }
  /** Resolves with the text once `re` matches it (after `from`); rejects after ms saying what was there. */
  async waitFor(re: RegExp, ms = 10_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.text.slice(from).match(re);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`${re} did not appear in ${ms} ms; the terminal showed ${JSON.stringify(this.text)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}
