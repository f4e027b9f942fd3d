/**
 * Warm start: containers created and started ahead of demand (the RunD idea). A warm
 * container is made before anyone asks for it, with everything that does not depend on
 * the command already done: snapshot mounted, bundle written, cgroup made, conmon
 * monitoring, and even the runtime's start done. Its process is a stub: the host's
 * static busybox, bind-mounted read-only, blocked opening a fifo (the go fifo) for
 * reading. A claim writes the script; the container's start writes one line to the
 * fifo, and the stub runs the script, which `exec`s the requested command with the
 * requested environment and working directory — so the requested program becomes
 * pid 1, as it would have been. Until then the agent reports the container as created.
 *
 * Why started and not only created: releasing `runc init` costs ~8 ms of CPU per
 * container here (a Go process's exec), which alone put 200 concurrent starts near
 * 1 s on two cores; waking a blocked shell costs one open and one write.
 *
 * A claim is taken only when the OCI config built for the real request equals the
 * warm container's in everything but the command, environment, working directory,
 * memory/cpu/pids limits (applied with `runc update`) and annotations. Any other
 * difference — user, hostname, namespaces, mounts, rlimits, anything added to the
 * builder later — falls back to the ordinary cold create.
 *
 * The visible differences: a read-only mount at /.nimbus (the stub and its script), and
 * environment entries in another order (warmScript). A program the image lacks is refused at
 * the claim as at a cold create (rootfs-lookup.ts: 400, the same message); one that is there
 * but cannot be executed (a bad ELF, a missing interpreter) still fails after the start with
 * exit 126/127 and a message in the logs.
 */
import { createHash } from 'node:crypto';
import { DEFAULT_PIDS_LIMIT, type OciMount, type OciSpec } from './oci-spec.js';
import { pathOf } from './rootfs-lookup.js';

/** Where the stub lives inside a warm container. */
export const WARM_DIR = '/.nimbus';
export const WARM_BUSYBOX = `${WARM_DIR}/busybox`;
export const WARM_SCRIPT_DIR = `${WARM_DIR}/start`;
/** The script's name in its directory. */
export const WARM_ENTRY = 'entry';
export const WARM_SCRIPT = `${WARM_SCRIPT_DIR}/${WARM_ENTRY}`;
/** The script of a warm container not yet claimed (made with it, written over at the claim): a go without a claim ends the stub with 125. */
export const UNCLAIMED_ENTRY = 'exit 125\n';

/** The go fifo, in the script's directory: the stub blocks opening it until the container's start. */
export const WARM_GO_FIFO = 'go';
const WARM_GO = `${WARM_SCRIPT_DIR}/${WARM_GO_FIFO}`;

/**
 * The stub's command line: wait for a line on the go fifo (an opener that writes nothing
 * is waited out; a fifo that is gone ends the stub with 125), then run the script.
 */
export const WARM_STUB_ARGS = [WARM_BUSYBOX, 'sh', '-c', `until read -r go < ${WARM_GO}; do [ -p ${WARM_GO} ] || exit 125; done; . ${WARM_SCRIPT}`];

/** The two read-only bind mounts a warm container gets. */
export function warmMounts(hostBusybox: string, hostScriptDir: string): OciMount[] {
  const ro = ['rbind', 'ro', 'nosuid', 'nodev'];
  return [
    { destination: WARM_BUSYBOX, type: 'bind', source: hostBusybox, options: ro },
    { destination: WARM_SCRIPT_DIR, type: 'bind', source: hostScriptDir, options: [...ro, 'noexec'] },
  ];
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Why a process cannot be started through the stub, or undefined. busybox env
 * reads leading NAME=VALUE words as assignments, so a program named with '='
 * would be misread; NUL cannot be passed through a script at all.
 */
export function stubUnsuitable(p: { args: string[]; env: string[]; cwd: string }): string | undefined {
  const first = p.args[0];
  if (first === undefined || first === '') return 'no command';
  if (first.includes('=')) return 'the program name contains "="';
  if ([...p.args, ...p.env, p.cwd].some((s) => s.includes('\0'))) return 'a NUL byte in the command, environment or working directory';
  if (p.env.some((kv) => !/^[^=]+=/.test(kv))) return 'an environment entry without NAME=';
  return undefined;
}

/** Shell variables the script itself uses: an environment naming one is started through env instead. */
const SCRIPT_VARS = new Set(['nimbus_prog', 'nimbus_dir', 'nimbus_path']);
const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Whether the stub's own shell can set the environment: every name a shell variable, once, none of the script's. */
function shellCanExport(env: string[]): boolean {
  const names = env.map((kv) => kv.slice(0, kv.indexOf('=')));
  return names.every((n) => SHELL_NAME.test(n) && !SCRIPT_VARS.has(n)) && new Set(names).size === names.length;
}

const printable = (s: string) => s.replace(/[^\x20-\x7e]/g, '?');

/**
 * The script the stub runs: enter the working directory, then exec the real command with exactly
 * its environment.
 *
 * A bare command name is resolved in the container's PATH as runc does (Go's exec.LookPath:
 * the first regular, executable file; no PATH or no such file, or a match in a relative entry
 * such as an empty one: exit 127), and the file is exec'd by its path: the host's busybox is built with
 * standalone applets, and its ash (`exec sleep`) or env (`env sleep`) would run their own
 * applet instead of the image's /bin/sleep. The shell then drops its own variables, exports
 * the container's and execs with `exec -a` for argv[0] as given; environment entries reach
 * the process in the shell's order, not the request's. An environment the shell cannot set
 * (a name that is no shell variable, a duplicate) goes through `env -i` instead: one exec
 * more (~1.5-3 ms of CPU here) and argv[0] is the resolved path.
 */
export function warmScript(p: { args: string[]; env: string[]; cwd: string }): string {
  const cwd = shellQuote(p.cwd);
  const [argv0 = '', ...rest] = p.args;
  const lines = [
    '# written by nimbus when this warm container was claimed',
    `cd -- ${cwd} 2>/dev/null || { ${WARM_BUSYBOX} mkdir -p -- ${cwd} && cd -- ${cwd}; } || { echo "nimbus: cannot enter the working directory ${printable(p.cwd)}" >&2; exit 126; }`,
  ];
  if (argv0.includes('/')) {
    lines.push(`nimbus_prog=${shellQuote(argv0)}`);
  } else {
    const path = pathOf(p.env);
    const name = shellQuote(argv0);
    const shown = printable(argv0).replace(/'/g, '?');
    lines.push(
      // a trailing ':' is an empty entry for Go, no field for the shell: double it
      `nimbus_prog= nimbus_path=${shellQuote(path?.endsWith(':') ? `${path}:` : (path ?? ''))}`,
      'set -f; IFS=:',
      `for nimbus_dir in $nimbus_path; do if [ -f "\${nimbus_dir:-.}"/${name} ] && [ -x "\${nimbus_dir:-.}"/${name} ]; then nimbus_prog="\${nimbus_dir:-.}"/${name}; break; fi; done`,
      'unset IFS; set +f',
      `[ -n "$nimbus_prog" ] || { echo 'nimbus: exec: "${shown}": executable file not found in $PATH' >&2; exit 127; }`,
      // Go 1.19's LookPath (runc 1.1.5 here) refuses a match in a relative entry: exec.ErrDot
      `case $nimbus_prog in /*) ;; *) echo 'nimbus: exec: "${shown}": cannot run executable found relative to current directory' >&2; exit 127;; esac`,
    );
  }
  const args = rest.length ? ' ' + rest.map(shellQuote).join(' ') : '';
  if (shellCanExport(p.env)) {
    lines.push('unset PATH SHLVL PWD OLDPWD');
    if (p.env.length) lines.push(`export ${p.env.map(shellQuote).join(' ')}`);
    lines.push(`exec -a ${shellQuote(argv0)} -- "$nimbus_prog"${args}`, '');
  } else {
    lines.push(`exec ${WARM_BUSYBOX} env -i -- ${p.env.map(shellQuote).join(' ')} "$nimbus_prog"${args}`, '');
  }
  return lines.join('\n');
}

/**
 * A config as JSON with the parts a claim may change blanked (copied shallowly: every claim compares
 * one). The memory limit is not one of them: warm containers are made per size (WarmTemplate), and
 * whether a container has one sets its OOM score too (oci-spec.ts).
 */
export function comparableJson(c: OciSpec): string {
  const { cpu: _c, pids: _p, ...resources } = c.linux.resources;
  const seccomp = c.linux.seccomp && seccompDigest(c.linux.seccomp);
  const blank = { ...c, annotations: undefined, process: { ...c.process, args: [], env: [], cwd: '' }, linux: { ...c.linux, resources, ...(seccomp ? { seccomp } : {}) } };
  return JSON.stringify(blank);
}

/**
 * The seccomp filter by its digest: most of a config's JSON (~75 %) and one object per capability
 * set (seccomp.ts folds them), so it is serialized once per object, not at every claim.
 */
const seccompDigests = new WeakMap<object, string>();
function seccompDigest(filter: object): string {
  let d = seccompDigests.get(filter);
  if (d === undefined) seccompDigests.set(filter, (d = `sha256:${createHash('sha256').update(JSON.stringify(filter)).digest('hex')}`));
  return d;
}

/** Whether a request's config can be served by a warm container created with `warm` (or its comparableJson). */
export function warmCompatible(warm: OciSpec | string, wanted: OciSpec): boolean {
  return (typeof warm === 'string' ? warm : comparableJson(warm)) === comparableJson(wanted);
}

/** The cpu/pids part of a config, for `runc update -r` at a claim; undefined when it sets none (the memory is the warm container's already). */
export function limitsOf(c: OciSpec): Record<string, unknown> | undefined {
  const res = c.linux.resources;
  const out: Record<string, unknown> = {};
  for (const k of ['cpu', 'pids'] as const) if (res[k] !== undefined) out[k] = res[k];
  // every warm container is made with the default pids limit: a request that names none needs no update
  if (res.pids?.limit === DEFAULT_PIDS_LIMIT) delete out.pids;
  return Object.keys(out).length ? out : undefined;
}
