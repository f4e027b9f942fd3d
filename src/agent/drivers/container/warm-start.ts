/**
 * Warm start: `runc create` ahead of demand (the RunD idea). A warm container is
 * created before anyone asks for it, with everything that does not depend on the
 * command already done (snapshot mounted, bundle written, cgroup made, conmon and
 * `runc init` waiting on the exec fifo). Its process is a stub: the host's static
 * busybox, bind-mounted read-only, running a script that is written only when a
 * request claims the container, and that `exec`s the requested command with the
 * requested environment and working directory — so the requested program becomes
 * pid 1, as it would have been.
 *
 * A claim is taken only when the OCI config built for the real request equals the
 * warm container's in everything but the command, environment, working directory,
 * memory/cpu/pids limits (applied with `runc update`) and annotations. Any other
 * difference — user, hostname, namespaces, mounts, rlimits, anything added to the
 * builder later — falls back to the ordinary cold create.
 *
 * The visible differences: a read-only mount at /.nimbus (the stub and its script),
 * and a command that cannot be executed fails after start with exit 126/127 and a
 * message in the logs, instead of failing the create.
 */
import type { OciMount, OciSpec } from './oci-spec.js';

/** Where the stub lives inside a warm container. */
export const WARM_DIR = '/.nimbus';
export const WARM_BUSYBOX = `${WARM_DIR}/busybox`;
export const WARM_SCRIPT_DIR = `${WARM_DIR}/start`;
export const WARM_SCRIPT = `${WARM_SCRIPT_DIR}/entry`;

/** The stub's command line: it waits for nothing, the script is there before `start`. */
export const WARM_STUB_ARGS = [WARM_BUSYBOX, 'sh', WARM_SCRIPT];

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

/**
 * The script the stub runs: enter the working directory, then exec the real command with exactly
 * its environment. Through `env -i`, one exec more than a shell `exec` would cost (~1.5 ms of CPU
 * here), but the host's busybox ash is built with standalone applets: `exec sleep` would run its
 * own applet instead of the image's /bin/sleep, and env keeps argv[0] as given, as runc does.
 */
export function warmScript(p: { args: string[]; env: string[]; cwd: string }): string {
  const cwd = shellQuote(p.cwd);
  return [
    '# written by nimbus when this warm container was claimed',
    `cd -- ${cwd} 2>/dev/null || { ${WARM_BUSYBOX} mkdir -p -- ${cwd} && cd -- ${cwd}; } || { echo "nimbus: cannot enter the working directory ${p.cwd.replace(/[^\x20-\x7e]/g, '?')}" >&2; exit 126; }`,
    `exec ${WARM_BUSYBOX} env -i -- ${[...p.env, ...p.args].map(shellQuote).join(' ')}`,
    '',
  ].join('\n');
}

/** The parts of a config a claim may change: blanked on both sides before comparing. */
function comparable(c: OciSpec): unknown {
  const copy = structuredClone(c) as OciSpec & { annotations?: unknown };
  copy.process = { ...copy.process, args: [], env: [], cwd: '' };
  delete copy.annotations;
  const res = copy.linux.resources;
  delete res.memory;
  delete res.cpu;
  delete res.pids;
  return copy;
}

/** Whether a request's config can be served by a warm container created with `warm`. */
export function warmCompatible(warm: OciSpec, wanted: OciSpec): boolean {
  return JSON.stringify(comparable(warm)) === JSON.stringify(comparable(wanted));
}

/** The memory/cpu/pids part of a config, for `runc update -r`; undefined when it sets none. */
export function limitsOf(c: OciSpec): Record<string, unknown> | undefined {
  const res = c.linux.resources;
  const out: Record<string, unknown> = {};
  for (const k of ['memory', 'cpu', 'pids'] as const) if (res[k] !== undefined) out[k] = res[k];
  return Object.keys(out).length ? out : undefined;
}
