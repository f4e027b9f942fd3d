/**
 * Files handed to a running QEMU as descriptors over its QMP socket (SCM_RIGHTS), as libvirt
 * hands them: a QEMU that dropped to a user of its own (qemu-user.ts) opens nothing by path, so
 * the agent opens the file as root and QEMU gets the descriptor. Node's sockets cannot send
 * descriptors, so a short python3 program does (python3's socket.send_fds), in a QMP session of
 * its own: the descriptors it is given as its fds 3, 4, …
 *
 * - getfd: one descriptor under a name, for a later session's `migrate fd:NAME` (a save).
 * - blockdev-add: a block node whose files are descriptors (an fdset each, "/dev/fdset/N"), added
 *   in the same session (QEMU frees an fdset nobody uses when its last monitor client goes), each
 *   fdset's own copy removed afterwards (the node keeps its duplicate).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { Internal, NimbusError } from '../../../core/errors.js';

/** A file the node opens: "nimbus-fd:N" stands for the Nth descriptor given (blockdev-add). */
export const fdPlaceholder = (n: number) => `nimbus-fd:${n}`;

/** The system's python3 (a version manager's shim on PATH costs ~100 ms a run here), else PATH's. */
let pythonPath: string | undefined;
export const python3 = (): string => (pythonPath ??= existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');

export type QmpFdPlan = { op: 'getfd'; name: string } | { op: 'blockdev-add'; node: Record<string, unknown> };

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
if plan['op'] == 'getfd':
    call('getfd', {'fdname': plan['name']}, 3)
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
print(json.dumps({'ok': True}))
`;

/**
 * Run `plan` on the QEMU behind `qmpSocket` with `fds` (open descriptors of this process, not
 * closed here). QEMU's refusal is an Internal error with its words (they name no host path:
 * the files are descriptors); no python3 is Unavailable.
 */
export async function handFdsToQemu(qmpSocket: string, plan: QmpFdPlan, fds: readonly number[], timeoutMs = 30_000): Promise<void> {
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
  if (code === 0) return;
  const last = out.trim().split('\n').pop() ?? '';
  let reason = err.trim().split('\n').pop() ?? `exit ${code}`;
  try {
    const r = JSON.parse(last) as { error?: { desc?: string }; command?: string };
    if (r.error?.desc) reason = `${r.command ? `${r.command}: ` : ''}${r.error.desc}`;
  } catch {
    /* not its JSON: python's own error */
  }
  throw new Internal(`QEMU did not take the file (${plan.op}): ${reason}`);
}
