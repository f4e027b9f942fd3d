/**
 * `--change` instructions of `docker commit` and `docker import` (and `nimbus commit -c`,
 * `nimbus image import-rootfs -c`): Dockerfile lines that edit the new image's config, as
 * dockerd's BuildFromConfig takes them.
 *
 * Taken: CMD, ENTRYPOINT (JSON or shell form; an ENTRYPOINT without a CMD among the changes
 * clears the CMD, as in a Dockerfile), ENV and LABEL (`k=v ...`, quoted values; ENV's legacy
 * `k v`), EXPOSE (`80`, `80/tcp`, `53/udp`), USER, WORKDIR (a relative one is joined to the
 * current), VOLUME (JSON or words), STOPSIGNAL. Refused, naming the instruction: what dockerd
 * takes and Nimbus does not do yet (HEALTHCHECK, ONBUILD), and what is no config change at all
 * (RUN, COPY, FROM, ...: dockerd refuses them too). `$VAR` is not substituted (dockerd does).
 */
import { posix } from 'node:path';
import { InvalidArgument } from '../../core/errors.js';
import type { ImageConfigDoc } from '../../store/records.js';

/** The runtime part of an image config (OCI's `config`). */
export type RuntimeConfig = NonNullable<ImageConfigDoc['config']>;

/** Most changes one request may carry, and the longest one (a bound on hostile input). */
export const MAX_CHANGES = 256;
export const MAX_CHANGE_LENGTH = 64 * 1024;

const SUPPORTED = ['CMD', 'ENTRYPOINT', 'ENV', 'EXPOSE', 'LABEL', 'USER', 'WORKDIR', 'VOLUME', 'STOPSIGNAL'] as const;
type Instruction = (typeof SUPPORTED)[number];
/** dockerd takes them in a --change; Nimbus does not keep them in an image config yet. */
const NOT_YET = new Set(['HEALTHCHECK', 'ONBUILD']);

export interface Change {
  instruction: Instruction;
  /** The rest of the line, trimmed. */
  args: string;
}

const bad = (line: string, why: string) => new InvalidArgument(`--change ${JSON.stringify(line.length > 200 ? `${line.slice(0, 200)}...` : line)}: ${why}`, { change: line.slice(0, 200) });

/** Each change line checked and split into its instruction and arguments (a change holding several lines counts each). */
export function parseChanges(changes: readonly string[]): Change[] {
  if (changes.length > MAX_CHANGES) throw new InvalidArgument(`at most ${MAX_CHANGES} --change instructions, got ${changes.length}`);
  const out: Change[] = [];
  for (const raw of changes) {
    if (raw.length > MAX_CHANGE_LENGTH) throw bad(raw, `longer than ${MAX_CHANGE_LENGTH} characters`);
    // a backslash at the end of a line continues it, as in a Dockerfile
    for (const line of raw.replace(/\\\r?\n/g, ' ').split(/\r?\n/)) {
      const text = line.trim();
      if (!text || text.startsWith('#')) continue;
      const m = /^(\S+)(?:\s+([\s\S]*))?$/.exec(text)!;
      const word = m[1]!.toUpperCase();
      const args = (m[2] ?? '').trim();
      if (NOT_YET.has(word)) throw bad(text, `${word} is not supported by Nimbus yet (supported: ${SUPPORTED.join(', ')})`);
      if (!(SUPPORTED as readonly string[]).includes(word)) throw bad(text, `${word} is not a valid change command (supported: ${SUPPORTED.join(', ')})`);
      if (!args && word !== 'CMD' && word !== 'ENTRYPOINT') throw bad(text, `${word} needs an argument`);
      out.push({ instruction: word as Instruction, args });
    }
  }
  return out;
}

/** `["a","b"]` as a list of strings; undefined when the text is not a JSON array of strings (Docker then takes the shell form). */
function jsonList(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  try {
    const v = JSON.parse(args) as unknown;
    return Array.isArray(v) && v.every((x) => typeof x === 'string') ? v : undefined;
  } catch {
    return undefined;
  }
}

/** A command in JSON form, or a shell line run by /bin/sh -c (an empty one: none). */
function command(args: string): string[] {
  return jsonList(args) ?? (args ? ['/bin/sh', '-c', args] : []);
}

/** Words of a line with Dockerfile quoting: "double" (backslash escapes), 'single', backslash outside quotes. */
export function splitWords(s: string, line = s): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (/\s/.test(ch)) {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
      continue;
    }
    inWord = true;
    if (ch === '\\' && i + 1 < s.length) {
      cur += s[++i];
    } else if (ch === '"' || ch === "'") {
      const end = s.indexOf(ch, i + 1);
      let j = i + 1;
      if (ch === '"') {
        for (; j < s.length && s[j] !== '"'; j++) {
          if (s[j] === '\\' && j + 1 < s.length) j++;
          cur += s[j];
        }
        if (j >= s.length) throw bad(line, 'unmatched quote');
        i = j;
      } else {
        if (end < 0) throw bad(line, 'unmatched quote');
        cur += s.slice(i + 1, end);
        i = end;
      }
    } else cur += ch;
  }
  if (inWord) words.push(cur);
  return words;
}

/** `k=v k2="v 2"` (LABEL, ENV); ENV also takes the legacy `k value with spaces`. */
function pairs(c: Change, line: string): Array<[string, string]> {
  const words = splitWords(c.args, line);
  if (c.instruction === 'ENV' && !words[0]!.includes('=')) {
    const m = /^(\S+)\s+([\s\S]*)$/.exec(c.args);
    if (!m) throw bad(line, 'ENV needs a value (ENV KEY=VALUE or ENV KEY VALUE)');
    return [[m[1]!, splitWords(m[2]!, line).join(' ')]];
  }
  return words.map((w) => {
    const eq = w.indexOf('=');
    if (eq <= 0) throw bad(line, `${JSON.stringify(w)} is not KEY=VALUE`);
    return [w.slice(0, eq), w.slice(eq + 1)];
  });
}

const SIGNAL = /^(SIG)?[A-Z][A-Z0-9+-]*$|^\d{1,2}$/;

/**
 * The config with the changes applied in order, as dockerd's BuildFromConfig does (the input is
 * not modified). Throws InvalidArgument naming the change at fault.
 */
export function applyChanges(base: RuntimeConfig, changes: readonly Change[]): RuntimeConfig {
  const cfg: RuntimeConfig = structuredClone(base);
  let cmdSet = false;
  for (const c of changes) {
    const line = `${c.instruction} ${c.args}`.trim();
    switch (c.instruction) {
      case 'CMD':
        cfg.Cmd = command(c.args);
        cmdSet = true;
        break;
      case 'ENTRYPOINT':
        cfg.Entrypoint = command(c.args);
        // as a Dockerfile: an ENTRYPOINT resets the CMD unless the changes set one
        if (!cmdSet) cfg.Cmd = null;
        break;
      case 'ENV': {
        const env = [...(cfg.Env ?? [])];
        for (const [k, v] of pairs(c, line)) {
          const i = env.findIndex((e) => e === k || e.startsWith(`${k}=`));
          if (i >= 0) env[i] = `${k}=${v}`;
          else env.push(`${k}=${v}`);
        }
        cfg.Env = env;
        break;
      }
      case 'LABEL':
        cfg.Labels = { ...(cfg.Labels ?? {}), ...Object.fromEntries(pairs(c, line)) };
        break;
      case 'EXPOSE': {
        const ports = { ...(cfg.ExposedPorts ?? {}) };
        for (const p of splitWords(c.args, line)) {
          const m = /^(\d{1,5})(?:\/(tcp|udp|sctp))?$/i.exec(p);
          if (!m || Number(m[1]) < 1 || Number(m[1]) > 65535) throw bad(line, `${JSON.stringify(p)} is not a port (PORT or PORT/tcp|udp|sctp; ranges are not supported)`);
          ports[`${Number(m[1])}/${(m[2] ?? 'tcp').toLowerCase()}`] = {};
        }
        cfg.ExposedPorts = ports;
        break;
      }
      case 'USER':
        cfg.User = c.args;
        break;
      case 'WORKDIR': {
        const dir = splitWords(c.args, line).join(' ');
        cfg.WorkingDir = posix.isAbsolute(dir) ? posix.normalize(dir) : posix.join(cfg.WorkingDir || '/', dir);
        break;
      }
      case 'VOLUME': {
        const paths = jsonList(c.args) ?? splitWords(c.args, line);
        if (!paths.length || paths.some((p) => !p)) throw bad(line, 'VOLUME needs at least one path');
        cfg.Volumes = { ...(cfg.Volumes ?? {}), ...Object.fromEntries(paths.map((p) => [p, {}])) };
        break;
      }
      case 'STOPSIGNAL':
        if (!SIGNAL.test(c.args)) throw bad(line, `${JSON.stringify(c.args)} is not a signal name or number`);
        cfg.StopSignal = c.args;
        break;
    }
  }
  return cfg;
}
