/**
 * Files handed to a running QEMU as descriptors over its QMP socket (SCM_RIGHTS), as libvirt
 * hands them: a QEMU that dropped to a user of its own (qemu-user.ts) opens nothing by path, so
 * the agent opens the file as root and QEMU gets the descriptor. Node's sockets cannot send
 * descriptors, so a short python3 program does (python3's socket.send_fds), in a QMP session of
 * its own: the descriptors it is given as its fds 3, 4, …
 *
 * - getfd: one descriptor under a name, for a later session's `migrate fd:NAME` (a save); or with
 *   `then`, the command that takes it in the same session (on the fd monitor, qemu.ts
 *   fdMonitorSocket: a connection for a migration or a mirror, qemu-peer-sockets.ts). When that
 *   command fails, the descriptor is closed in QEMU.
 * - connect: a TCP connection made here to host:port, handed over under a name with the command
 *   that takes it (a migration's stream, an NBD client). With a token, it is sent first and the
 *   connection handed over only once the peer accepted it with one byte (qemu-peer-sockets.ts
 *   acceptOneForQemu). The plan travels on stdin, not in the command line others can read.
 * - listen: a TCP socket made here, bound to a free port of `host` and listening, handed over
 *   under a name with the command that takes it (an NBD server); its port is returned.
 * - accept: a TCP socket made here listening on a free port of `host` (told as it listens), and
 *   the connection it takes handed over under a name with the command that takes it (an incoming
 *   migration's stream): the first, or with a token the first that sends exactly the token's
 *   bytes (read without blocking among up to maxPending others, what follows left for QEMU),
 *   answered STREAM_TOKEN_ACCEPTED; one that sends anything else, or nothing within
 *   tokenWaitMs, is closed and told (the first REFUSALS_TOLD; all are counted in the result's
 *   `refused`), and the oldest waiting goes when more arrive. QEMU's monitor is opened only once
 *   the connection is chosen.
 * - blockdev-add: a block node whose files are descriptors (an fdset each, "/dev/fdset/N"), added
 *   in the same session (QEMU frees an fdset nobody uses when its last monitor client goes), each
 *   fdset's own copy removed afterwards (the node keeps its duplicate).
 */
import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { Internal, NimbusError } from '../../../core/errors.js';
import { python3 } from '../../../core/python3.js';

/** A file the node opens: "nimbus-fd:N" stands for the Nth descriptor given (blockdev-add). */
export const fdPlaceholder = (n: number) => `nimbus-fd:${n}`;


/** A QMP command, run once the descriptor it names is QEMU's. */
export interface QmpCommand {
  execute: string;
  arguments?: Record<string, unknown>;
}

export type QmpFdPlan =
  | { op: 'getfd'; name: string; then?: QmpCommand }
  | { op: 'connect'; host: string; port: number; name: string; then: QmpCommand; token?: string }
  | { op: 'listen'; host: string; name: string; then: QmpCommand }
  | { op: 'accept'; host: string; name: string; then: QmpCommand; token?: string; tokenWaitMs: number; maxPending: number }
  | { op: 'blockdev-add'; node: Record<string, unknown> };

/** The byte a destination answers a migration's token with when it is the one it waits for (the source then hands QEMU the connection). */
export const STREAM_TOKEN_ACCEPTED = 0x01;
/** An accept tells this many refused connections one by one; it counts the rest in its result (`refused`). */
export const REFUSALS_TOLD = 5;

const HELPER = String.raw`
import json, os, socket, sys
path, plan = sys.argv[1], json.loads(sys.stdin.readline())
ACCEPTED = bytes([${STREAM_TOKEN_ACCEPTED}])
REFUSALS_TOLD = ${REFUSALS_TOLD}
out = {'ok': True}
s = f = None
def reply():
    while True:
        line = f.readline()
        if not line:
            print(json.dumps({'error': {'desc': 'QEMU closed its QMP socket'}}))
            sys.exit(3)
        m = json.loads(line)
        if 'event' not in m:
            return m
def call(cmd, args=None, fd=None):
    msg = {'execute': cmd}
    if args is not None:
        msg['arguments'] = args
    data = (json.dumps(msg) + '\n').encode()
    if fd is None:
        s.sendall(data)
    else:
        socket.send_fds(s, [data], [fd])
    m = reply()
    if 'error' in m:
        print(json.dumps({'error': m['error'], 'command': cmd}))
        sys.exit(3)
    return m['return']
def monitor():
    # opened only when there is something to hand over: an accept waits minutes for its connection,
    # and a QMP socket serves one client at a time
    global s, f
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    f = s.makefile('r')
    reply()
    call('qmp_capabilities')
def handed(fd):
    call('getfd', {'fdname': plan['name']}, fd)
    then = plan.get('then')
    if then:
        try:
            call(then['execute'], then.get('arguments'))
        except SystemExit:
            try:
                call('closefd', {'fdname': plan['name']})
            except SystemExit:
                pass
            raise
def listener(host, backlog):
    # a TCP socket listening on a free port of host (v4 or v6)
    ls = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen(backlog)
    return ls
def chosen_connection():
    # the first connection, or with a token the first that sends exactly it (more stays for QEMU),
    # read without blocking among the others; nothing else, or nothing in time, is closed
    import hmac, selectors, time
    ls = listener(plan['host'], 64)
    ls.setblocking(False)
    print(json.dumps({'listening': ls.getsockname()[1]}), flush=True)
    want = bytes.fromhex(plan['token']) if plan.get('token') else b''
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    # stdin closes when the agent stops waiting (or dies): so does this
    sel.register(0, selectors.EVENT_READ)
    pending = {}
    def refuse(c, why):
        sel.unregister(c)
        del pending[c]
        try:
            addr = c.getpeername()[0]
        except OSError:
            addr = None
        c.close()
        # the first few told one by one, the rest only counted: a flood of strangers is not a flood of log lines
        out['refused'] = out.get('refused', 0) + 1
        if out['refused'] <= REFUSALS_TOLD:
            print(json.dumps({'refused': addr, 'why': why}), flush=True)
    while True:
        now = time.monotonic()
        timeout = max(0, min(d for d, _ in pending.values()) - now) if pending else None
        for key, _ in sel.select(timeout):
            o = key.fileobj
            if o == 0:
                if not os.read(0, 64):
                    sys.exit(5)
            elif o is ls:
                try:
                    c, _ = ls.accept()
                except OSError:
                    continue
                if not want:
                    ls.close()
                    return c
                if len(pending) >= plan['maxPending']:
                    refuse(min(pending, key=lambda k: pending[k][0]), 'too many connections waiting')
                c.setblocking(False)
                # its wait from now, not from before select: the helper may have waited minutes for it
                pending[c] = [time.monotonic() + plan['tokenWaitMs'] / 1000, b'']
                sel.register(c, selectors.EVENT_READ)
            elif o in pending:
                st = pending[o]
                try:
                    b = o.recv(len(want) - len(st[1]))
                except BlockingIOError:
                    continue  # a wakeup with nothing to read: not a refusal
                except OSError:
                    b = b''
                if not b:
                    refuse(o, 'closed before its token')
                    continue
                st[1] += b
                if len(st[1]) < len(want):
                    continue
                if not hmac.compare_digest(st[1], want):
                    refuse(o, 'another token')
                    continue
                sel.unregister(o)
                del pending[o]
                for c in list(pending):
                    c.close()
                ls.close()
                o.setblocking(True)
                o.sendall(ACCEPTED)
                return o
        now = time.monotonic()
        for c in [c for c, (d, _) in pending.items() if d <= now]:
            refuse(c, 'no token in time')
if plan['op'] == 'accept':
    c = chosen_connection()
    monitor()
    handed(c.fileno())
    c.close()
    print(json.dumps(out))
    sys.exit(0)
monitor()
if plan['op'] == 'getfd':
    handed(3)
elif plan['op'] == 'connect':
    # the peer as QEMU's own errors name it: HOST:PORT, [V6]:PORT
    where = '%s:%d' % (('[%s]' if ':' in plan['host'] else '%s') % plan['host'], plan['port'])
    try:
        c = socket.create_connection((plan['host'], plan['port']), timeout=10)
    except OSError as e:
        print(json.dumps({'error': {'desc': "Failed to connect to '%s': %s" % (where, e.strerror or e)}, 'command': 'connect'}))
        sys.exit(3)
    if plan.get('token'):
        # the move's token, then one byte of acceptance (within create_connection's 10 s)
        try:
            c.sendall(bytes.fromhex(plan['token']))
            ack = c.recv(1)
        except OSError:
            ack = None
        if ack != ACCEPTED:
            print(json.dumps({'error': {'desc': "'%s' did not accept this migration's token" % where}, 'command': 'connect'}))
            sys.exit(3)
    c.settimeout(None)
    handed(c.fileno())
    c.close()
elif plan['op'] == 'listen':
    ls = listener(plan['host'], 16)
    out['port'] = ls.getsockname()[1]
    handed(ls.fileno())
    ls.close()
else:
    sets = []
    def fill(v):
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        if isinstance(v, str) and v.startswith('nimbus-fd:'):
            r = call('add-fd', None, 3 + int(v[len('nimbus-fd:'):]))
            sets.append(r)
            return '/dev/fdset/%d' % r['fdset-id']
        return v
    try:
        call('blockdev-add', fill(plan['node']))
    finally:
        for r in sets:
            try:
                call('remove-fd', {'fdset-id': r['fdset-id'], 'fd': r['fd']})
            except SystemExit:
                pass
print(json.dumps(out))
`;

/** What a helper says before it ends: an accept's port once it listens, each connection it refused. */
export type HelperNews = { listening: number } | { refused: string | null; why: string };

/**
 * Run `plan` on the QEMU behind `qmpSocket` with `fds` (open descriptors or sockets of this
 * process, not closed here). QEMU's refusal is an Internal error with its words (they name no
 * host path: the files are descriptors); no python3 is Unavailable. Returns a listen's port.
 * The plan travels on stdin (a token in it is not for the command line others read). An accept
 * runs until its connection is handed over or `signal` aborts it (no timeout: it waits as long as
 * its migration may), and tells `news` its port and each connection it refused.
 */
export async function handFdsToQemu(
  qmpSocket: string,
  plan: QmpFdPlan,
  fds: ReadonlyArray<number | Socket>,
  o: { timeoutMs?: number; signal?: AbortSignal; news?: (n: HelperNews) => void } = {},
): Promise<{ port?: number; refused?: number }> {
  // -I -S: no environment, user directory or site packages (10 ms here, and nothing else imported)
  const child = spawn(python3(), ['-I', '-S', '-c', HELPER, qmpSocket], { stdio: ['pipe', 'pipe', 'pipe', ...fds] });
  // a broken pipe (python gone before reading) shows as its exit below
  child.stdin!.on('error', () => undefined);
  // an accept's stdin stays open: its end tells the helper that nobody waits any more
  child.stdin!.write(`${JSON.stringify(plan)}\n`);
  if (plan.op !== 'accept') child.stdin!.end();
  let out = '';
  let err = '';
  let told = 0;
  child.stdout!.on('data', (b: Buffer) => {
    out += b.toString();
    if (!o.news) return;
    for (let nl = out.indexOf('\n', told); nl >= 0; nl = out.indexOf('\n', told)) {
      const line = out.slice(told, nl);
      told = nl + 1;
      try {
        const n = JSON.parse(line) as Partial<{ listening: number; refused: string | null; why: string }>;
        if (typeof n.listening === 'number') o.news({ listening: n.listening });
        else if (typeof n.why === 'string') o.news({ refused: n.refused ?? null, why: n.why });
      } catch {
        /* the result, read below */
      }
    }
  });
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const timer = plan.op === 'accept' ? undefined : setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 30_000);
  const abort = () => {
    child.stdin!.end();
    child.kill('SIGKILL');
  };
  if (o.signal?.aborted) abort();
  o.signal?.addEventListener('abort', abort, { once: true });
  const code = await new Promise<number | null>((ok, fail) => {
    child.once('error', fail);
    child.once('close', ok);
  }).catch((e: unknown) => {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NimbusError('Unavailable', 'handing a file to QEMU needs python3 on this host (apt-get install python3)');
    throw e;
  }).finally(() => {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', abort);
    child.stdin!.end();
  });
  const last = out.trim().split('\n').pop() ?? '';
  if (code === 0) return JSON.parse(last) as { port?: number; refused?: number };
  let reason = err.trim().split('\n').pop() ?? `exit ${code}`;
  try {
    const r = JSON.parse(last) as { error?: { desc?: string }; command?: string };
    // the connection a connect makes never reached QEMU: its failure is the peer's, in QEMU's words
    if (r.error?.desc && r.command === 'connect') throw new NimbusError('Unavailable', r.error.desc);
    if (r.error?.desc) reason = `${r.command ? `${r.command}: ` : ''}${r.error.desc}`;
  } catch (e) {
    if (e instanceof NimbusError) throw e;
    /* not its JSON: python's own error */
  }
  throw new Internal(`QEMU did not take the file (${plan.op}): ${reason}`);
}
