/** How an image config and a run request combine into the process to start (Docker's rules). */
import { InvalidArgument } from '../../core/errors.js';
import { MAX_ARGV_ENV_TOTAL, MAX_UID } from '../../core/limits.js';
import type { ProcessSpec } from '../../agent/drivers/instance-driver.js';
import type { ContainerConfig, ImageConfigDoc } from '../../store/records.js';

export const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function mergeEnv(base: readonly string[], overrides: readonly string[]): string[] {
  const out = new Map<string, string>();
  for (const kv of [...base, ...overrides]) {
    const eq = kv.indexOf('=');
    const key = eq === -1 ? kv : kv.slice(0, eq);
    if (!key) throw new InvalidArgument(`invalid environment variable "${kv}"`);
    out.set(key, eq === -1 ? `${key}=` : kv);
  }
  return [...out.values()];
}

/**
 * What execve takes (Linux): one argument or environment string of at most MAX_ARG_STRLEN bytes
 * (32 pages, its NUL included; counted in bytes here, as the kernel does), and all of them
 * together within ARG_MAX (a quarter of the stack limit, 2 MiB by default). Nimbus allows
 * MAX_ARGV_ENV_TOTAL (1 MiB) together, so a request is refused here, not by the runtime.
 */
export const MAX_ARG_STRLEN = 128 * 1024;
export const MAX_ARGV_ENV_BYTES = MAX_ARGV_ENV_TOTAL;

/** Control characters (C0 and DEL), except tab, newline and carriage return, which scripts and values carry. */
const CONTROL_IN_TEXT = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/;
/** Any control character: none belongs in a program name, a variable name, a path or a user. */
const CONTROL = /[\x00-\x1f\x7f]/;

const shown = (s: string) => JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}…` : s);

/**
 * Refuse a process the runtime could not start as asked, naming the field: NUL and control
 * characters, strings and totals execve refuses, users outside uid_t. The same checks hold on
 * the warm and the cold path (they run before either is chosen).
 */
export function checkProcess(p: ProcessSpec): void {
  const [argv0, ...rest] = p.args;
  if (argv0 === undefined || argv0 === '') throw new InvalidArgument('cmd: the program name is empty', { field: 'cmd' });
  if (CONTROL.test(argv0)) throw new InvalidArgument(`cmd: the program name ${shown(argv0)} contains a control character`, { field: 'cmd' });
  for (const a of rest) {
    if (CONTROL_IN_TEXT.test(a)) throw new InvalidArgument(`cmd: argument ${shown(a)} contains NUL or a control character`, { field: 'cmd' });
  }
  for (const kv of p.env) {
    const eq = kv.indexOf('=');
    const name = eq === -1 ? kv : kv.slice(0, eq);
    if (CONTROL.test(name)) throw new InvalidArgument(`env: the name ${shown(name)} contains a control character`, { field: 'env' });
    if (CONTROL_IN_TEXT.test(kv)) throw new InvalidArgument(`env: ${shown(name)} contains NUL or a control character`, { field: 'env' });
  }
  if (CONTROL.test(p.cwd)) throw new InvalidArgument(`workdir ${shown(p.cwd)} contains a control character`, { field: 'workdir' });
  let total = 0;
  for (const [field, list] of [['cmd', p.args], ['env', p.env]] as const) {
    for (const s of list) {
      const bytes = Buffer.byteLength(s) + 1;
      if (bytes > MAX_ARG_STRLEN) throw new InvalidArgument(`${field}: one entry is ${bytes} bytes; at most ${MAX_ARG_STRLEN} (with its NUL)`, { field });
      total += bytes;
    }
  }
  if (total > MAX_ARGV_ENV_BYTES) {
    throw new InvalidArgument(`cmd and env are ${total} bytes together; at most ${MAX_ARGV_ENV_BYTES}`, { field: 'cmd' });
  }
  checkUser(p.user);
}

/** "uid[:gid]" or "name[:group]": numeric ids up to MAX_UID (4294967295 is (uid_t)-1, never a user), names without control characters or ':'. */
export function checkUser(user: string): void {
  const parts = user.split(':');
  if (user === '' || parts.length > 2 || parts.some((x) => x === '' || CONTROL.test(x) || /\s/.test(x))) {
    throw new InvalidArgument(`user ${shown(user)}: use uid[:gid] or name[:group]`, { field: 'user' });
  }
  for (const x of parts) {
    if (/^\d+$/.test(x) && !(Number(x) <= MAX_UID)) throw new InvalidArgument(`user ${shown(user)}: ids are 0 to ${MAX_UID}`, { field: 'user' });
  }
}

export function processSpecFor(image: ImageConfigDoc, c: ContainerConfig): ProcessSpec {
  const ic = image.config ?? {};
  // A user entrypoint replaces the image's entrypoint and drops the image's cmd.
  const entrypoint = c.entrypoint ?? ic.Entrypoint ?? [];
  const cmd = c.cmd?.length ? c.cmd : c.entrypoint ? [] : (ic.Cmd ?? []);
  const args = [...entrypoint, ...cmd];
  if (args.length === 0) throw new InvalidArgument('no command specified: the image has no entrypoint or cmd; give one after the image name');
  const env = mergeEnv(ic.Env ?? [], c.env);
  if (!env.some((e) => e.startsWith('PATH='))) env.unshift(DEFAULT_PATH);
  // as dockerd does for -t: programs that look at TERM get one that matches the terminal
  if (c.tty && !env.some((e) => e.startsWith('TERM='))) env.push('TERM=xterm');
  return {
    args,
    env,
    cwd: c.workdir || ic.WorkingDir || '/',
    user: c.user || ic.User || '0',
    ...(c.tty ? { terminal: true } : {}),
    ...(c.openStdin ? { stdin: c.stdinOnce ? 'once' : 'open' } as const : {}),
  };
}
