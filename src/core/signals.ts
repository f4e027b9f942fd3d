/**
 * Signal names as runc (and Docker) take them. runc 1.1 parses a signal with
 * golang.org/x/sys's table of the 31 standard names, so aliases (SIGIOT, SIGPOLL,
 * SIGCLD) and real-time names (SIGRTMIN+3, which systemd images use) are refused
 * there: canonicalSignal turns every accepted spelling into one runc accepts.
 */
const STANDARD = [
  'HUP', 'INT', 'QUIT', 'ILL', 'TRAP', 'ABRT', 'BUS', 'FPE', 'KILL', 'USR1', 'SEGV', 'USR2', 'PIPE', 'ALRM', 'TERM', 'STKFLT',
  'CHLD', 'CONT', 'STOP', 'TSTP', 'TTIN', 'TTOU', 'URG', 'XCPU', 'XFSZ', 'VTALRM', 'PROF', 'WINCH', 'IO', 'PWR', 'SYS',
] as const;
const ALIASES: Record<string, string> = { IOT: 'ABRT', POLL: 'IO', CLD: 'CHLD' };
/** glibc's SIGRTMIN and SIGRTMAX on Linux (the kernel's 32 and 33 are glibc's own). */
const RTMIN = 34;
const RTMAX = 64;
/** The longest spelling accepted ("SIGRTMIN+30"); anything longer is not a signal. */
export const MAX_SIGNAL_LENGTH = 16;

/** The signal's number, or undefined when it is not one: NAME, SIGNAME (any case), 1-64, SIGRTMIN[+n], SIGRTMAX[-n]. */
export function signalNumber(spec: string): number | undefined {
  if (spec.length === 0 || spec.length > MAX_SIGNAL_LENGTH) return undefined;
  if (/^[1-9][0-9]?$/.test(spec)) {
    const n = Number(spec);
    return n <= RTMAX ? n : undefined;
  }
  let name = spec.toUpperCase();
  if (name.startsWith('SIG')) name = name.slice(3);
  name = ALIASES[name] ?? name;
  const i = (STANDARD as readonly string[]).indexOf(name);
  if (i >= 0) return i + 1;
  const rt = /^RT(MIN|MAX)(?:([+-])([0-9]{1,2}))?$/.exec(name);
  if (!rt) return undefined;
  const offset = rt[3] === undefined ? 0 : Number(rt[3]);
  // SIGRTMIN counts up, SIGRTMAX down; "SIGRTMIN-1" names no real-time signal.
  if (rt[2] !== undefined && rt[2] !== (rt[1] === 'MIN' ? '+' : '-')) return undefined;
  const n = rt[1] === 'MIN' ? RTMIN + offset : RTMAX - offset;
  return n >= RTMIN && n <= RTMAX ? n : undefined;
}

/** SIGNAME for the standard signals, the number for real-time ones: a spelling runc's kill accepts. Throws on a non-signal. */
export function canonicalSignal(spec: string): string {
  const n = signalNumber(spec);
  if (n === undefined) throw new RangeError(`not a signal: ${JSON.stringify(spec)}`);
  return n <= STANDARD.length ? `SIG${STANDARD[n - 1]!}` : String(n);
}
