/**
 * Host paths out of what members read. Errors that name a host path or address say so where they
 * are made (NimbusError's adminMessage); this is the net under them: absolute paths under the
 * directories this process keeps its state and sockets in (its host roots, added at start by the
 * daemon, the agent and the drivers) become HOST_PATH. docs/security.md, "Information".
 */
import path from 'node:path';

/** What a member reads where a host path was. */
export const HOST_PATH = '<host path>';
/** What a member reads where a host's address was. */
export const HOST_ADDRESS = '<host address>';

const roots = new Set<string>();
let pattern: RegExp | undefined;

/** What ends a path in a message: whitespace, quotes, an escape, separators of lists and clauses. */
const ENDS_PATH = '\\s\'"`\\\\,;:()\\[\\]{}<>';
const PATH_CHARS = `[^${ENDS_PATH}]`;

/** Adds directories whose every path is the host's own (the state directory, the run directory). */
export function addHostRoots(dirs: readonly string[]): void {
  for (const d of dirs) {
    if (!d.startsWith('/')) continue;
    const root = path.resolve(d);
    if (root === '/' || roots.has(root)) continue;
    roots.add(root);
    pattern = undefined;
  }
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** `text` with every absolute path under a host root replaced by HOST_PATH. */
export function redactHostPaths(text: string): string {
  if (roots.size === 0) return text;
  // longest first, so a root inside another is taken whole; a root matches at a path boundary only
  pattern ??= new RegExp(`(?:${[...roots].sort((a, b) => b.length - a.length).map(escape).join('|')})(?=/|[${ENDS_PATH}]|$)${PATH_CHARS}*`, 'g');
  return text.replace(pattern, HOST_PATH);
}

/** `value` with `redact` applied to every string in it (an error's details). */
export function redactStringsIn<T>(value: T, redact: (text: string) => string): T {
  if (typeof value === 'string') return redact(value) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => redactStringsIn(v, redact)) as T;
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactStringsIn(v, redact)])) as T;
  }
  return value;
}

/** `value` with redactHostPaths applied to every string in it. */
export function redactHostPathsIn<T>(value: T): T {
  return roots.size === 0 ? value : redactStringsIn(value, redactHostPaths);
}

/**
 * `text` with every absolute path in it replaced by HOST_PATH, whatever directory it is under:
 * for words that are all about the host (mount's, conmon's, an agent of protocol 9 or older,
 * whose host roots this process does not know).
 */
export function redactAbsolutePaths(text: string): string {
  // a path starts at the text's start or after a space, quote, bracket, '=' or ':' (lowerdir=/a:/b), never as '//' (a URL)
  return text.replace(new RegExp(`(^|[\\s'"\`(\\[{=:,])/(?!/)${PATH_CHARS}*`, 'g'), `$1${HOST_PATH}`);
}

/**
 * A Node system error's message (ENOENT, EACCES, ECONNREFUSED...) without the paths and the
 * address it names: its own fields say which they are. Its host roots' paths go too.
 */
export function systemErrorWithoutHostNames(e: Error): string {
  const { path: p, dest, address, port } = e as NodeJS.ErrnoException & { dest?: unknown; address?: unknown; port?: unknown };
  let text = e.message;
  for (const named of [dest, p]) {
    if (typeof named === 'string' && named.startsWith('/')) text = text.split(named).join(HOST_PATH);
  }
  if (typeof address === 'string' && address.length > 1) {
    if (address.startsWith('/')) text = text.split(address).join(HOST_PATH);
    else {
      if (port !== undefined) text = text.split(`${address}:${String(port)}`).join(HOST_ADDRESS);
      text = text.split(address).join(HOST_ADDRESS);
    }
  }
  return redactHostPaths(text);
}
