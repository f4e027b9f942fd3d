/**
 * Names appearing in the containers' log directories, for the rotation worker
 * (log-rotation-worker.ts): conmon's rotation creates a file and renames it over the log, and a
 * pass must follow each. Node's fs.watch cannot choose inotify's events: it wakes for every write
 * too, one wakeup per record conmon appends, which for a container printing as fast as it can was
 * ~77 % of a CPU here (1.09 million events in 5 s, 3.87 s of the watching thread's CPU), charged
 * to the agent and not to the container's cgroup, on a real-time thread that preempts every
 * pinned vCPU. So a python3 helper holds one inotify descriptor with only IN_CREATE|IN_MOVED_TO
 * (the kernel queues no write at all) and prints the keys of the directories where a watched
 * name appeared, once per batch. It inherits the worker thread's scheduling (forked from it).
 * Without python3, or if the helper dies, fs.watch does the job as before, with its cost.
 *
 * For a key added with `prepareNext`, the helper also makes the next generation's symlink itself
 * the moment conmon renames over the log (rotateOnce's rule: the log's target plus two), before
 * telling the worker. The pass through the pipe, the worker's event loop and V8 took most of the
 * time a fast writer's rotations leave, and a rotation that finds no symlink is how generations
 * get lost (a synthetic conmon rotating every 2 ms: 7–22 % of its rotations found none and 3–15 %
 * of the generations were lost; with the helper preparing, none of either).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { watch, type FSWatcher } from 'node:fs';
import { python3 } from '../../../core/python3.js';

export interface DirEventsSink {
  /** A name beginning with the key's prefix was created or moved into its directory (or may have been: after an overflow, or once the watch is in place). */
  changed(key: string): void;
  /** Watching stopped working for this key (its directory is gone, or cannot be watched). */
  failed(key: string, why: string): void;
  /** A fallback to fs.watch, and why (told once). */
  degraded(why: string): void;
}

interface Watched {
  dir: string;
  prefix: string;
}

const HELPER = String.raw`
import ctypes, json, os, selectors, struct, sys
IN_MOVED_TO, IN_CREATE, IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x80, 0x100, 0x4000, 0x8000, 0x1000000
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
if ino < 0:
    sys.stderr.write('inotify_init1: %s\n' % os.strerror(ctypes.get_errno()))
    sys.exit(2)
by_wd = {}   # wd -> {key: (prefix, directory, prepare the next generation)}
wd_of = {}   # key -> wd
out = sys.stdout.buffer
def tell(lines):
    out.write(''.join(l + '\n' for l in lines).encode())
    out.flush()
def prepare(d, base):
    # conmon has just renamed <base>.tmp (our symlink) over <base>: <base>.tmp -> <base>.(N+2)
    try:
        t = os.readlink(os.path.join(d, base))
    except OSError:
        return   # a plain file (a rotation without our symlink): the worker's pass names it
    n = t[len(base) + 1:]
    if not t.startswith(base + b'.') or not n.isdigit(): return
    nxt = base + b'.' + str(int(n) + 2).encode()
    if os.path.lexists(os.path.join(d, nxt)): return   # never a name that exists: conmon truncates it
    try:
        os.symlink(nxt, os.path.join(d, base + b'.tmp'))
    except OSError:
        pass   # conmon's own tmp, or the worker's pass made it first
def forget(key):
    wd = wd_of.pop(key, None)
    if wd is None: return
    keys = by_wd.get(wd, {})
    keys.pop(key, None)
    if not keys:
        by_wd.pop(wd, None)
        libc.inotify_rm_watch(ino, wd)
def command(m):
    key = m['key']
    forget(key)
    if m['op'] != 'add': return
    wd = libc.inotify_add_watch(ino, os.fsencode(m['dir']), IN_CREATE | IN_MOVED_TO | IN_ONLYDIR)
    if wd < 0:
        tell(['!' + key + ' ' + os.strerror(ctypes.get_errno())])
        return
    by_wd.setdefault(wd, {})[key] = (os.fsencode(m['prefix']), os.fsencode(m['dir']), bool(m.get('prepareNext')))
    wd_of[key] = wd
    tell(['+' + key])   # in place: a pass now sees whatever came before it
tell(['=ready'])   # watching can begin
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ, 'commands')
sel.register(ino, selectors.EVENT_READ, 'events')
pending = b''
while True:
    for k, _ in sel.select():
        if k.data == 'commands':
            chunk = os.read(0, 65536)
            if not chunk: sys.exit(0)   # the worker is gone
            pending += chunk
            while b'\n' in pending:
                line, pending = pending.split(b'\n', 1)
                command(json.loads(line))
            continue
        try:
            data = os.read(ino, 65536)
        except BlockingIOError:
            continue
        keys, off = [], 0
        while off < len(data):
            wd, mask, _cookie, size = struct.unpack_from('iIII', data, off)
            name = data[off + 16:off + 16 + size].rstrip(b'\0')
            off += 16 + size
            if mask & IN_Q_OVERFLOW:
                keys.extend(wd_of)
            elif mask & IN_IGNORED:   # the directory is gone
                for key in list(by_wd.pop(wd, {})):
                    wd_of.pop(key, None)
            else:
                for key, (prefix, d, prepares) in by_wd.get(wd, {}).items():
                    if not name.startswith(prefix): continue
                    if prepares and name == prefix and mask & IN_MOVED_TO: prepare(d, prefix)
                    keys.append(key)
        if keys: tell(list(dict.fromkeys(keys)))
`;

/** One helper for all of the worker's directories; keys are the caller's (container ids). */
export class LogDirEvents {
  private readonly watched = new Map<string, Watched>();
  private helper: ChildProcess | undefined;
  /** Set once the helper cannot serve: fs.watch from then on. */
  private fallback: Map<string, FSWatcher> | undefined;
  private closed = false;
  private readyP: Promise<void> | undefined;
  private isReady: (() => void) | undefined;

  constructor(private readonly sink: DirEventsSink) {}

  /**
   * Watch `dir` for names beginning with `prefix` (again, if the key was watched). changed(key)
   * follows once the watch is in place. With `prepareNext`, `prefix` is a conmon log whose next
   * generation the helper prepares at each rotation (see above; not under the fs.watch fallback,
   * where the worker's pass does it alone).
   */
  add(key: string, dir: string, prefix: string, opts: { prepareNext?: boolean } = {}): void {
    this.watched.set(key, { dir, prefix });
    if (this.fallback) this.watchNode(key);
    else this.send({ op: 'add', key, dir, prefix, prepareNext: opts.prepareNext === true });
  }

  remove(key: string): void {
    if (!this.watched.delete(key)) return;
    if (this.fallback) {
      this.fallback.get(key)?.close();
      this.fallback.delete(key);
    } else this.send({ op: 'remove', key });
  }

  /**
   * Resolves once the helper holds its inotify descriptor (or fs.watch took over): a watch added
   * before then waits for python3 to start (tens of ms, more on a loaded host), and a fast writer
   * rotates several times meanwhile with no pass to name its generations.
   */
  ready(): Promise<void> {
    this.start();
    return this.readyP ?? Promise.resolve();
  }

  /** The helper's pid while it runs (tests). */
  helperPid(): number | undefined {
    return this.helper?.pid;
  }

  /** Ends the helper (its stdin's end) and resolves once it is reaped: a worker terminated first would leave it a zombie. */
  close(): Promise<void> {
    this.closed = true;
    for (const w of this.fallback?.values() ?? []) w.close();
    this.fallback?.clear();
    const child = this.helper;
    this.helper = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const kill = setTimeout(() => child.kill('SIGKILL'), 2_000);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.stdin!.end();
    });
  }

  private send(m: { op: 'add' | 'remove'; key: string; dir?: string; prefix?: string; prepareNext?: boolean }): void {
    this.start()?.stdin!.write(`${JSON.stringify(m)}\n`);
  }

  private start(): ChildProcess | undefined {
    if (this.helper || this.fallback || this.closed) return this.helper;
    const child = spawn(python3(), ['-I', '-S', '-c', HELPER], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.helper = child;
    this.readyP = new Promise<void>((resolve) => (this.isReady = resolve));
    child.stdin!.on('error', () => undefined); // its exit says why
    let partial = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      const lines = (partial + s).split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        if (l === '=ready') this.isReady?.();
        else if (l.startsWith('+')) this.sink.changed(l.slice(1));
        else if (l.startsWith('!')) {
          const space = l.indexOf(' ');
          this.sink.failed(l.slice(1, space), l.slice(space + 1));
        } else if (this.watched.has(l)) this.sink.changed(l);
      }
    });
    let err = '';
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (err = (err + s).slice(-500)));
    const gone = (why: string) => {
      if (this.helper !== child) return;
      this.helper = undefined;
      if (this.closed) return;
      this.sink.degraded(why);
      this.fallback = new Map();
      for (const key of this.watched.keys()) this.watchNode(key);
      this.isReady?.(); // fs.watch arms at once
    };
    child.on('error', (e) => gone(`no python3 helper: ${(e as NodeJS.ErrnoException).code ?? String(e)}`));
    child.on('exit', (code, signal) => gone(`the inotify helper ended (${signal ?? `exit ${code}`}${err ? `: ${err.trim()}` : ''})`));
    // never keeps the worker (and so the agent) alive, once it is ready (until then a ready() awaits it)
    void this.readyP.then(() => {
      child.unref();
      for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?: () => void } | null)?.unref?.();
    });
    return child;
  }

  private watchNode(key: string): void {
    const w = this.watched.get(key)!;
    this.fallback!.get(key)?.close();
    try {
      // renames and creations only: every write of conmon's is a 'change' here too
      const watcher = watch(w.dir, { persistent: false }, (event, name) => {
        if (event === 'rename' && typeof name === 'string' && name.startsWith(w.prefix)) this.sink.changed(key);
      });
      watcher.on('error', () => undefined);
      this.fallback!.set(key, watcher);
    } catch (e) {
      this.sink.failed(key, `cannot watch: ${String(e)}`);
    }
    this.sink.changed(key);
  }
}
