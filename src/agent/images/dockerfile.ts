/**
 * What Nimbus itself reads of a Dockerfile: only the images it names (FROM and COPY --from), so
 * that the control plane can hand them to the builder from its own content (pulled with its
 * credentials and digest checks) instead of letting the builder reach a registry. Everything
 * else is buildah's to interpret. The text is a tenant's: bounded, and never executed here.
 */
import { InvalidArgument } from '../../core/errors.js';

/** A Dockerfile larger than this is refused (Docker's own parser has no limit; 1 MiB is generous). */
export const MAX_DOCKERFILE_BYTES = 1024 * 1024;
/** More base images than this in one Dockerfile is refused (each is a pull). */
export const MAX_BASE_IMAGES = 16;

interface Instruction {
  keyword: string;
  rest: string;
}

/** Instructions with their continuation lines joined; comments, blank lines and parser directives dropped. */
function instructions(text: string): Instruction[] {
  let escape = '\\';
  const lines = text.split(/\r?\n/);
  // a parser directive (`# escape=`) may only open the file
  for (const l of lines) {
    const m = /^#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$/.exec(l);
    if (!m) break;
    if (m[1]!.toLowerCase() === 'escape' && (m[2] === '`' || m[2] === '\\')) escape = m[2];
  }
  const out: Instruction[] = [];
  let cur = '';
  for (const raw of lines) {
    const line = raw.replace(/\s+$/, '');
    if (cur === '' && /^\s*(#|$)/.test(line)) continue;
    if (cur !== '' && /^\s*#/.test(line)) continue; // comment lines inside a continuation are dropped too
    if (line.endsWith(escape)) {
      cur += line.slice(0, -1) + ' ';
      continue;
    }
    cur += line;
    const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(cur);
    if (m) out.push({ keyword: m[1]!.toUpperCase(), rest: m[2]!.trim() });
    cur = '';
  }
  if (cur.trim()) {
    const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(cur);
    if (m) out.push({ keyword: m[1]!.toUpperCase(), rest: m[2]!.trim() });
  }
  return out;
}

/** $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt} from vars (an unset one is empty, as Docker does). */
export function expandArgs(s: string, vars: ReadonlyMap<string, string>): string {
  return s.replace(/\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))/g, (_m, braced: string | undefined, op: string | undefined, word: string | undefined, bare: string | undefined) => {
    const name = braced ?? bare!;
    const v = vars.get(name);
    if (op === '-') return v ? v : (word ?? '');
    if (op === '+') return v ? (word ?? '') : '';
    return v ?? '';
  });
}

/** Flags (`--platform=x`, `--from=y`) off the front of an instruction's arguments. */
function splitFlags(rest: string): { flags: Map<string, string>; words: string[] } {
  const words = rest.split(/\s+/).filter(Boolean);
  const flags = new Map<string, string>();
  while (words[0]?.startsWith('--')) {
    const w = words.shift()!;
    const eq = w.indexOf('=');
    flags.set((eq < 0 ? w.slice(2) : w.slice(2, eq)).toLowerCase(), eq < 0 ? '' : w.slice(eq + 1));
  }
  return { flags, words };
}

export interface DockerfileImages {
  /** The images the build starts from or copies from, as written (after ARG expansion), each once. */
  images: string[];
  /** The stages' names, in order (for a target's check). */
  stages: string[];
}

/**
 * The images a Dockerfile names: FROM's (not `scratch`, not an earlier stage) and COPY --from's
 * that are no stage. ARGs declared before the first FROM expand in FROM, as Docker does, with the
 * build args given overriding their defaults.
 */
export function dockerfileImages(text: string, buildArgs: Readonly<Record<string, string>> = {}): DockerfileImages {
  if (Buffer.byteLength(text) > MAX_DOCKERFILE_BYTES) throw new InvalidArgument(`the Dockerfile is larger than ${MAX_DOCKERFILE_BYTES} bytes`);
  const globals = new Map<string, string>();
  const images: string[] = [];
  const stages: string[] = [];
  let seenFrom = false;
  const add = (ref: string, what: string) => {
    if (!ref) throw new InvalidArgument(`${what} names no image`);
    if (/\s/.test(ref) || ref.length > 1024) throw new InvalidArgument(`${what}: malformed image reference ${JSON.stringify(ref.slice(0, 100))}`);
    if (!images.includes(ref)) images.push(ref);
    if (images.length > MAX_BASE_IMAGES) throw new InvalidArgument(`the Dockerfile names more than ${MAX_BASE_IMAGES} images`);
  };
  for (const ins of instructions(text)) {
    if (ins.keyword === 'ARG' && !seenFrom) {
      for (const decl of ins.rest.split(/\s+/).filter(Boolean)) {
        const eq = decl.indexOf('=');
        const name = eq < 0 ? decl : decl.slice(0, eq);
        const dflt = eq < 0 ? undefined : decl.slice(eq + 1).replace(/^"(.*)"$/, '$1');
        const given = Object.prototype.hasOwnProperty.call(buildArgs, name) ? buildArgs[name] : undefined;
        const v = given ?? (dflt !== undefined ? expandArgs(dflt, globals) : undefined);
        if (v !== undefined) globals.set(name, v);
      }
    } else if (ins.keyword === 'FROM') {
      seenFrom = true;
      const { flags, words } = splitFlags(ins.rest);
      const platform = flags.get('platform');
      if (platform && !/^linux\/amd64$/.test(expandArgs(platform, globals)) && !platform.includes('$')) {
        throw new InvalidArgument(`FROM --platform=${platform}: this host builds linux/amd64 images only`);
      }
      const ref = expandArgs(words[0] ?? '', globals);
      if (words.length >= 3 && words[1]!.toUpperCase() === 'AS') stages.push(words[2]!.toLowerCase());
      else if (words.length !== 1) throw new InvalidArgument(`FROM ${ins.rest.slice(0, 100)}: expected FROM image [AS name]`);
      else stages.push('');
      if (ref.toLowerCase() === 'scratch' || stages.slice(0, -1).includes(ref.toLowerCase())) continue;
      add(ref, `FROM ${ins.rest.slice(0, 100)}`);
    } else if ((ins.keyword === 'COPY' || ins.keyword === 'ADD') && seenFrom) {
      const from = splitFlags(ins.rest).flags.get('from');
      if (from === undefined) continue;
      if (/^[0-9]+$/.test(from) || stages.includes(from.toLowerCase())) continue;
      add(from, `${ins.keyword} --from=${from.slice(0, 100)}`);
    }
  }
  if (!seenFrom) throw new InvalidArgument('the Dockerfile has no FROM instruction');
  return { images, stages: stages.filter(Boolean) };
}

/**
 * The sources of ADD that are URLs (http(s)://, git://, git@…): buildah fetches them itself, from
 * the host's network, whatever network the RUN steps get, so they are allowed only with the host
 * network. ARG and ENV values (any stage's; build args win) are expanded first, as buildah would.
 */
export function remoteAddSources(text: string, buildArgs: Readonly<Record<string, string>> = {}): string[] {
  if (Buffer.byteLength(text) > MAX_DOCKERFILE_BYTES) throw new InvalidArgument(`the Dockerfile is larger than ${MAX_DOCKERFILE_BYTES} bytes`);
  const vars = new Map<string, string>();
  const out: string[] = [];
  for (const ins of instructions(text)) {
    if (ins.keyword === 'ARG' || ins.keyword === 'ENV') {
      for (const decl of ins.rest.split(/\s+/).filter(Boolean)) {
        const eq = decl.indexOf('=');
        if (eq > 0) vars.set(decl.slice(0, eq), expandArgs(decl.slice(eq + 1).replace(/^"(.*)"$/, '$1'), vars));
      }
      for (const [k, v] of Object.entries(buildArgs)) vars.set(k, v);
    } else if (ins.keyword === 'ADD') {
      let words: string[];
      try {
        const j = JSON.parse(ins.rest) as unknown;
        words = Array.isArray(j) ? j.map(String) : splitFlags(ins.rest).words;
      } catch {
        words = splitFlags(ins.rest).words;
      }
      for (const src of words.slice(0, -1)) {
        const s = expandArgs(src, vars);
        if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s) || /^git@/i.test(s)) out.push(s);
      }
    }
  }
  return out;
}
