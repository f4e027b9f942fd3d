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
 *   that takes it (a migration's stream, an NBD client).
 * - listen: a TCP socket made here, bound to a free port of `host` and listening, handed over
 *   under a name with the command that takes it (an NBD server); its port is returned.
 * - blockdev-add: a block node whose files are descriptors (an fdset each, "/dev/fdset/N"), added
 *   in the same session (QEMU frees an fdset nobody uses when its last monitor client goes), each
 *   fdset's own copy removed afterwards (the node keeps its duplicate).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
import { Internal, NimbusError } from '../../../core/errors.js';

/** A file the node opens: "nimbus-fd:N" stands for the Nth descriptor given (blockdev-add). */
export const fdPlaceholder = (n: number) => `nimbus-fd:${n}`;

/** The system's python3 (a version manager's shim on PATH costs ~100 ms a run here), else PATH's. */
let pythonPath: string | undefined;
export const python3 = (): string => (pythonPath ??= existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');

/** A QMP command, run once the descriptor it names is QEMU's. */
export interface QmpCommand {
  execute: string;
  arguments?: Record<string, unknown>;
}

export type QmpFdPlan =
  | { op: 'getfd'; name: string; then?: QmpCommand }
  | { op: 'connect'; host: string; port: number; name: string; then: QmpCommand }
  | { op: 'listen'; host: string; name: string; then: QmpCommand }
  | { op: 'blockdev-add'; node: Record<string, unknown> };

const HELPER = String.raw`
import json, socket, sys
path, plan = sys.argv[1], json.loads(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(path)
f = s.makefile('r')
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
out = {'ok': True}
if plan['op'] == 'getfd':
    handed(3)
elif plan['op'] == 'connect':
    try:
        c = socket.create_connection((plan['host'], plan['port']), timeout=10)
    except OSError as e:
        where = ('[%s]' if ':' in plan['host'] else '%s') % plan['host']
        print(json.dumps({'error': {'desc': "Failed to connect to '%s:%d': %s" % (where, plan['port'], e.strerror or e)}, 'command': 'connect'}))
        sys.exit(3)
    c.settimeout(None)
    handed(c.fileno())
    c.close()
elif plan['op'] == 'listen':
    host = plan['host']
    ls = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen(16)
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

/**
 * Run `plan` on the QEMU behind `qmpSocket` with `fds` (open descriptors or sockets of this
 * process, not closed here). QEMU's refusal is an Internal error with its words (they name no
 * host path: the files are descriptors); no python3 is Unavailable. Returns a listen's port.
 */
export async function handFdsToQemu(qmpSocket: string, plan: QmpFdPlan, fds: ReadonlyArray<number | Socket>, timeoutMs = 30_000): Promise<{ port?: number }> {
  // -I -S: no environment, user directory or site packages (10 ms here, and nothing else imported)
  const child = spawn(python3(), ['-I', '-S', '-c', HELPER, qmpSocket, JSON.stringify(plan)], { stdio: ['ignore', 'pipe', 'pipe', ...fds] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((ok, fail) => {
    child.once('error', fail);
    child.once('close', ok);
  }).catch((e: unknown) => {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NimbusError('Unavailable', 'handing a file to QEMU needs python3 on this host (apt-get install python3)');
    throw e;
  }).finally(() => clearTimeout(timer));
  const last = out.trim().split('\n').pop() ?? '';
  if (code === 0) return JSON.parse(last) as { port?: number };
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
