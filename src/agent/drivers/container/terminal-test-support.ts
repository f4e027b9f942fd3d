/** Test support for terminals (exec -t, attach to a process on one): what it printed, and waits for what it should print. */
import type { Readable } from 'node:stream';
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** A busybox rootfs at `rootfs` with what the terminal tests run (sh, stty, tty, …) and a root user. */
export async function makeTerminalRootfs(rootfs: string): Promise<void> {
  await mkdir(path.join(rootfs, 'bin'), { recursive: true });
  await mkdir(path.join(rootfs, 'etc'), { recursive: true });
  await copyFile('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  for (const a of ['sh', 'sleep', 'stty', 'tty', 'cat', 'echo']) await symlink('busybox', path.join(rootfs, 'bin', a));
  await writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
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
