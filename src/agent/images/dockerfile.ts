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

/**
 * White space at the start of a line as Go's unicode.IsSpace sees it in UTF-8 (the text read as latin1,
 * one character a byte): ASCII's, and the multi-byte encodings of the Unicode spaces.
 */
const GO_LEADING_SPACE = /^(?:[\t\n\v\f\r ]|\xC2[\x85\xA0]|\xE1\x9A\x80|\xE2\x80[\x80-\x8A\xA8\xA9\xAF]|\xE2\x81\x9F|\xE3\x80\x80)+/;
const trimLeft = (s: string) => s.replace(GO_LEADING_SPACE, '');
const dropComment = (s: string) => (s.startsWith('#') ? '' : s);

/**
 * The logical lines of a Dockerfile as buildah 1.28's parser (openshift/imagebuilder's copy of Docker's)
 * assembles them, so that what Nimbus checks is what buildah runs: a line ending in the escape character
 * (`\`, or `` ` `` after a leading `# escape=` directive) goes on with the next line and nothing put between
 * them (`--mo\` then `unt=` is `--mount=`); comment and blank lines inside a continuation are dropped.
 * Best given the text as latin1 (one character a byte), as Go's parser reads bytes.
 */
function logicalLines(text: string): string[] {
  const lines = text.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  if (lines.at(-1) === '') lines.pop();
  if (lines.length) lines[0] = lines[0]!.replace(/^(?:\xEF\xBB\xBF|\uFEFF)/, '');
  let escape = '\\';
  let directives = true;
  const directive = (token: string) => {
    if (!directives) return;
    const m = /^#[ \t]*escape[ \t]*=[ \t]*([^\n])/i.exec(token);
    if (!m) directives = false;
    else if (m[1] === '`' || m[1] === '\\') escape = m[1];
  };
  /** The line without its continuation mark, or undefined when it ends the instruction. */
  const continued = (l: string) => {
    const mark = escape === '`' ? /`[ \t]*$/ : /\\[ \t]*$/;
    return mark.test(l) ? l.replace(mark, '') : undefined;
  };
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const token = trimLeft(lines[i]!);
    directive(token);
    let line = dropComment(token);
    let cont = continued(line);
    if (cont === undefined && line === '') continue;
    line = cont ?? line;
    while (cont !== undefined && i + 1 < lines.length) {
      const raw = lines[++i]!;
      directive(raw);
      const next = dropComment(raw);
      if (dropComment(trimLeft(next)) === '') continue;
      cont = continued(next);
      line += cont ?? next;
    }
    out.push(line);
  }
  return out;
}

/** Instructions as buildah splits them: the keyword ends at ASCII white space (Go's tokenWhitespace). */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  for (const line of logicalLines(text)) {
    const m = /^([^\t\v\f\r ]+)[\t\v\f\r ]*([^]*)$/.exec(trimLeft(line));
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

/** Does an instruction's text begin with a flag (Go's extractBuilderFlags: white space byte by byte, then `--`)? */
const hasFlags = (rest: string) => /^[\t\n\v\f\r \x85\xA0]*--/.test(rest);

/**
 * The RUN instructions with flags, ONBUILD's included. buildah 1.28 takes one, --mount, and finds a mount's
 * source on the host: a bind mount follows a symlink of the context or of another stage out of it, and a cache
 * mount's id is joined onto a host directory unchecked (`id=../../..`), so a RUN step would get any host path,
 * writable. Nimbus's builds take no RUN flag. Checked on the Dockerfile and on base images' ONBUILD triggers
 * (buildah parses those, joined by newlines, as a Dockerfile of their own).
 */
export function runWithFlags(text: string): string[] {
  const out: string[] = [];
  for (const ins of instructions(text)) {
    if (ins.keyword === 'RUN' && hasFlags(ins.rest)) out.push(`RUN ${ins.rest}`);
    // a trigger is stored, and parsed again by the build that starts from the image (ONBUILD takes no flag of its own)
    else if (ins.keyword === 'ONBUILD' && (hasFlags(ins.rest) || runWithFlags(ins.rest).length)) out.push(`ONBUILD ${ins.rest}`);
  }
  return out;
}
