/**
 * Sessions with a container's processes: exec of a new one (through the runtime, on our pty
 * for a terminal, or through conmon's exec mode: conmon-exec.ts), and attach to and resize of
 * the main one's terminal (through its conmon: conmon-attach.ts).
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import type { IPty } from 'node-pty';
import { Conflict, Internal, InvalidArgument } from '../../../core/errors.js';
import {
  badTerminalSize,
  checkedResize,
  type AttachRequest,
  type AttachSession,
  type ExecRequest,
  type ExecSession,
  type RuntimeState,
} from '../instance-driver.js';
import { attachConmon, resizeConmonTerminal } from './conmon-attach.js';
import { execThroughConmon } from './conmon-exec.js';
import type { ContainerStore } from './container-store.js';
import { mergeEnv, readUserDb, resolveUser } from './oci-spec.js';

export interface ContainerSessionsDeps {
  store: Pick<ContainerStore, 'dir' | 'bundle' | 'rootfs' | 'readConfig' | 'meta' | 'runtime'>;
  /** The container's state now (an exec needs it running). */
  state(id: string): Promise<RuntimeState>;
  conmonPath(): Promise<string>;
}

export class ContainerSessions {
  constructor(private readonly d: ContainerSessionsDeps) {}

  /**
   * Attach to the main process through its conmon (conmon-attach.ts): output from now on, and its
   * stdin when asked (Conflict if the container was made without one). Works on a created container
   * (the socket is there before the start) and on a running one, never on one that has exited.
   */
  async attach(id: string, req: AttachRequest): Promise<AttachSession> {
    const meta = await this.d.store.meta(id);
    if (req.stdin && !meta.stdin) throw new Conflict(`container ${id.slice(0, 12)} was created without an open stdin (docker run -i)`, { id });
    if (meta.warm) throw new Conflict(`container ${id.slice(0, 12)} is a warm container`, { id });
    return attachConmon(this.d.store.bundle(id), id, req);
  }

  /** The main process's terminal's new size (it gets SIGWINCH); Conflict for a container without a terminal. */
  async resize(id: string, rows: number, cols: number): Promise<void> {
    const bad = badTerminalSize(rows, cols);
    if (bad) throw new InvalidArgument(bad, { id });
    const config = await this.d.store.readConfig(id);
    if (!config.process.terminal) throw new Conflict(`container ${id.slice(0, 12)} has no terminal (docker run -t)`, { id });
    await resizeConmonTerminal(this.d.store.bundle(id), id, rows, cols);
  }

  async exec(id: string, req: ExecRequest): Promise<ExecSession> {
    const { store } = this.d;
    if (req.args.length === 0) throw new InvalidArgument('exec needs args', { id });
    const badSize = req.tty ? badTerminalSize(req.tty.rows, req.tty.cols) : undefined;
    if (badSize) throw new InvalidArgument(badSize, { id });
    const meta = await store.meta(id);
    const st = await this.d.state(id);
    if (st.status !== 'running') throw new Conflict(`container ${id} is ${st.status}, not running`, { id });
    const config = await store.readConfig(id);
    const env = mergeEnv(config.process.env, req.env ?? []);
    // as Docker does for -t: programs that look at TERM get one that matches the pty
    if (req.tty && !env.some((e) => e.startsWith('TERM='))) env.push('TERM=xterm');
    const proc = {
      ...config.process,
      terminal: req.tty !== undefined,
      // the size the runtime gives the container's pty before the command runs (its own resize from our pty comes later)
      ...(req.tty ? { consoleSize: { height: req.tty.rows, width: req.tty.cols } } : {}),
      args: req.args,
      env,
      cwd: req.cwd ?? config.process.cwd,
      user: req.user ? resolveUser(req.user, await readUserDb(store.rootfs(id))).user : config.process.user,
    };
    const execName = `exec-${randomBytes(6).toString('hex')}`;
    const processFile = path.join(store.dir(id), `${execName}.json`);
    await writeFile(processFile, JSON.stringify(proc));
    const runtime = store.runtime(meta);
    if (req.tty && runtime.name !== 'runc') {
      // crun's foreground terminal is not sound (conmon-exec.ts says why): conmon takes its console socket
      try {
        return await execThroughConmon({
          conmonPath: await this.d.conmonPath(), runtimePath: runtime.binary, runtimeArgs: [`--root=${runtime.root}`],
          containerId: id, execId: execName, dir: path.join(store.dir(id), execName), processFile,
        });
      } finally {
        await unlink(processFile).catch(() => undefined);
      }
    }
    if (req.tty) {
      try {
        return terminalSession(await runtime.execTerminal(id, { processFile }, req.tty), () => void unlink(processFile).catch(() => undefined));
      } catch (e) {
        await unlink(processFile).catch(() => undefined);
        throw e;
      }
    }
    const child = runtime.exec(id, { processFile });
    const exit = new Promise<number>((resolve, reject) => {
      child.on('error', (e) => {
        void unlink(processFile).catch(() => undefined);
        reject(new Internal(`exec in ${id}: ${e.message}`, { id }, { cause: e }));
      });
      child.on('close', (code, signal) => {
        void unlink(processFile).catch(() => undefined);
        if (code !== null) resolve(code);
        // the runtime's own exit (runc exec passes its process's on); killed itself: 128 + the signal, as a shell says
        else resolve(128 + (signal ? (constants.signals[signal] ?? 0) : 0));
      });
    });
    return { stdout: child.stdout!, stderr: child.stderr!, stdin: child.stdin!, exit };
  }
}

/**
 * The session of a runtime running on our pty (OciRuntime.execTerminal): its output is the
 * terminal's, paused while the reader is behind; a reader that goes away hangs up (SIGHUP to
 * the runtime, which passes it to the command), as closing a terminal window does.
 */
function terminalSession(pty: IPty, cleanup: () => void): ExecSession {
  let exited = false;
  const stdout = new Readable({
    read: () => pty.resume(),
    destroy: (err, cb) => {
      if (!exited) {
        try {
          pty.kill('SIGHUP');
        } catch {
          /* gone meanwhile */
        }
      }
      cb(err);
    },
  });
  // with encoding null node-pty hands out Buffers (its typings say string)
  pty.onData((d: string | Buffer) => {
    if (!stdout.destroyed && !stdout.push(typeof d === 'string' ? Buffer.from(d) : d)) pty.pause();
  });
  const exit = new Promise<number>((resolve) => {
    // node-pty reports the exit after the last output was read
    pty.onExit(({ exitCode, signal }) => {
      exited = true;
      cleanup();
      if (!stdout.destroyed) stdout.push(null);
      resolve(signal ? 128 + signal : exitCode);
    });
  });
  const stdin = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      if (!exited) pty.write(chunk);
      cb();
    },
  });
  const stderr = new Readable({ read() {} });
  stderr.push(null);
  return {
    stdout,
    stderr,
    stdin,
    exit,
    resize: checkedResize((rows, cols) => {
      if (!exited) pty.resize(cols, rows);
    }),
  };
}

