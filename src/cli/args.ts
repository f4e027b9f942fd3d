/**
 * A small declarative option parser: each command declares its options once;
 * parsing, validation and --help all come from the same declaration.
 *
 * Usage errors (unknown option, missing value, wrong argument count) throw
 * UsageError; the CLI prints the message and the command's usage and exits 2.
 */
export type OptionType = 'boolean' | 'string' | 'number' | 'list';

export interface OptionSpec {
  name: string;
  short?: string;
  /** Other long names accepted for the same option (e.g. "format" for "output"). */
  aliases?: string[];
  type: OptionType;
  /** Value name shown in help ("SIZE", "K=V"). */
  value?: string;
  description: string;
  default?: string | number | boolean;
  /** number options: refuse fractions. */
  integer?: boolean;
  /** string options: the accepted values. */
  choices?: string[];
}

export interface CommandSpec {
  /** "run", "image pull", ... */
  name: string;
  /** Positional part, e.g. "IMAGE [COMMAND] [ARG...]". */
  usage: string;
  /** One line, shown in `nimbus --help`. */
  summary: string;
  options: OptionSpec[];
  /** Options end at the first positional (run, create, exec: the rest belongs to the container). */
  stopAtPositional?: boolean;
  minArgs?: number;
  maxArgs?: number;
  run(ctx: CommandContext): Promise<number>;
}

export type OptionValue = string | number | boolean | string[] | undefined;

export interface ParsedArgs {
  opts: Record<string, OptionValue>;
  args: string[];
  /** --help or -h was given (before the first positional of a stopAtPositional command). */
  help?: boolean;
}

export interface CommandContext extends ParsedArgs {
  global: GlobalOptions;
}

export interface GlobalOptions {
  socket?: string;
  host?: string;
  /** --tls-ca FILE or NIMBUS_TLS_CA: a CA an https:// host's certificate may chain to (beside the system's). */
  tlsCa?: string;
  /** --project P (before or after the command) or NIMBUS_PROJECT: the project every request acts on. */
  project?: string;
  output: 'table' | 'json';
}

/** `--project P`, given to every command that does not declare its own. */
export const PROJECT_OPTION: OptionSpec = {
  name: 'project', type: 'string', value: 'P', description: "Project (id, path or name; env NIMBUS_PROJECT; default: your default project)",
};

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** `-o/--output json|table` (also `--format`), declared by every listing and inspect command. */
export const OUTPUT_OPTION: OptionSpec = {
  name: 'output', short: 'o', aliases: ['format'], type: 'string', value: 'FORMAT', choices: ['table', 'json'],
  description: 'Output format: table or json',
};

const HELP_OPTION: OptionSpec = { name: 'help', short: 'h', type: 'boolean', description: 'Show this help' };

type Parsable = Pick<CommandSpec, 'options' | 'name'> & Partial<Pick<CommandSpec, 'stopAtPositional' | 'minArgs' | 'maxArgs'>>;

export function parseArgs(spec: Parsable, argv: string[]): ParsedArgs {
  const byName = new Map<string, OptionSpec>();
  for (const o of spec.options) for (const n of [o.name, ...(o.aliases ?? [])]) byName.set(n, o);
  const byShort = new Map(spec.options.filter((o) => o.short).map((o) => [o.short!, o]));
  const opts: ParsedArgs['opts'] = {};
  for (const o of spec.options) {
    if (o.default !== undefined) opts[o.name] = o.default;
    else if (o.type === 'list') opts[o.name] = [];
    else if (o.type === 'boolean') opts[o.name] = false;
  }
  const args: string[] = [];
  const set = (o: OptionSpec, raw: string | undefined, flag: string) => {
    if (o.type === 'boolean') {
      if (raw !== undefined && raw !== 'true' && raw !== 'false') throw new UsageError(`option ${flag} takes no value (or true/false), got "${raw}"`);
      opts[o.name] = raw !== 'false';
      return;
    }
    if (raw === undefined) throw new UsageError(`option ${flag} needs a value${o.value ? ` (${o.value})` : ''}`);
    if (o.type === 'number') {
      const n = raw.trim() === '' ? NaN : Number(raw);
      if (!Number.isFinite(n)) throw new UsageError(`option ${flag} needs a number, got "${raw}"`);
      if (o.integer && !Number.isInteger(n)) throw new UsageError(`option ${flag} needs a whole number, got "${raw}"`);
      opts[o.name] = n;
    } else if (o.type === 'list') {
      (opts[o.name] as string[]).push(raw);
    } else {
      if (o.choices && !o.choices.includes(raw)) throw new UsageError(`option ${flag} must be one of ${o.choices.join(', ')}, got "${raw}"`);
      opts[o.name] = raw;
    }
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq === -1 ? undefined : eq);
      if (name === 'help') return { opts, args, help: true };
      const o = byName.get(name);
      if (!o) throw new UsageError(`unknown option --${name}`);
      const inline = eq === -1 ? undefined : a.slice(eq + 1);
      set(o, inline ?? (o.type === 'boolean' ? undefined : argv[++i]), `--${name}`);
      continue;
    }
    // "-" alone is a positional (stdin by convention); "-5" is a number, not an option.
    if (a.startsWith('-') && a.length > 1 && !/^-\d/.test(a)) {
      // Grouped shorts: -itd; a value option ends the group (-n5 or -n 5).
      for (let j = 1; j < a.length; j++) {
        const ch = a[j]!;
        if (ch === 'h' && !byShort.has('h')) return { opts, args, help: true };
        const o = byShort.get(ch);
        if (!o) throw new UsageError(`unknown option -${ch}${a.length > 2 ? ` (in ${a})` : ''}`);
        if (o.type === 'boolean') {
          set(o, undefined, `-${ch}`);
          continue;
        }
        const rest = a.slice(j + 1).replace(/^=/, '');
        set(o, rest || argv[++i], `-${ch}`);
        break;
      }
      continue;
    }
    args.push(a);
    if (spec.stopAtPositional) {
      args.push(...argv.slice(i + 1));
      break;
    }
  }
  const plural = (n: number) => `${n} argument${n === 1 ? '' : 's'}`;
  if (spec.minArgs !== undefined && args.length < spec.minArgs) throw new UsageError(`"nimbus ${spec.name}" needs at least ${plural(spec.minArgs)}`);
  if (spec.maxArgs !== undefined && args.length > spec.maxArgs) {
    throw new UsageError(spec.maxArgs === 0 ? `"nimbus ${spec.name}" takes no arguments, got "${args[0]}"` : `"nimbus ${spec.name}" takes at most ${plural(spec.maxArgs)}`);
  }
  return { opts, args };
}

export function usageLine(spec: Pick<CommandSpec, 'name' | 'usage' | 'options'>): string {
  return `Usage: nimbus ${spec.name} [OPTIONS]${spec.usage ? ` ${spec.usage}` : ''}`;
}

export function helpText(spec: Pick<CommandSpec, 'name' | 'usage' | 'options' | 'summary'>): string {
  const lines = [usageLine(spec), '', spec.summary, '', 'Options:'];
  const rows = [...spec.options, HELP_OPTION].map((o) => {
    const value = o.type === 'boolean' ? '' : ` ${o.value ?? (o.type === 'number' ? 'N' : 'VALUE')}`;
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${o.name}${value}${(o.aliases ?? []).map((a) => `, --${a}${value}`).join('')}`;
    const rep = o.type === 'list' ? ' (repeatable)' : '';
    const def = o.default !== undefined && o.default !== false ? ` (default ${String(o.default)})` : '';
    return [flag, `${o.description}${rep}${def}`] as const;
  });
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [f, d] of rows) lines.push(`  ${f.padEnd(w)}  ${d}`);
  return lines.join('\n') + '\n';
}

/** "64m", "1.5g", "512k", "2MiB", "1024" → bytes (binary units, as docker). */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?|\.\d+)\s*([bkmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`invalid size "${s}": use a number with an optional unit b, k, m, g or t (e.g. 64m, 1.5g)`);
  const unit = m[2]!.toLowerCase() as '' | 'b' | 'k' | 'm' | 'g' | 't';
  if (unit === 'b' && m[3]) throw new UsageError(`invalid size "${s}"`);
  const mult = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[unit];
  return Math.round(Number(m[1]) * mult);
}

export type RestartPolicy = { name: 'no' | 'on-failure' | 'always' | 'unless-stopped'; maxRetries?: number };

/** "no", "on-failure", "on-failure:3", "always", "unless-stopped". */
export function parseRestart(s: string): RestartPolicy {
  const [name, count, ...extra] = s.split(':');
  if (name === 'on-failure' && !extra.length) {
    if (count === undefined) return { name };
    if (!/^\d+$/.test(count)) throw new UsageError(`invalid restart count in "${s}": on-failure:N takes a whole number`);
    return { name, maxRetries: Number(count) };
  }
  if ((name === 'no' || name === 'always' || name === 'unless-stopped') && count === undefined) return { name };
  throw new UsageError(`invalid restart policy "${s}": use no, on-failure[:N], always or unless-stopped`);
}

/**
 * `-e K=V` as given; `-e K` takes K's value from this process's environment
 * and is dropped when K is not set there (docker's behaviour).
 */
export function resolveEnv(entries: string[], env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  for (const e of entries) {
    if (e.startsWith('=') || e === '') throw new UsageError(`invalid environment variable "${e}"`);
    if (e.includes('=')) out.push(e);
    else if (env[e] !== undefined) out.push(`${e}=${env[e]}`);
  }
  return out;
}

/** Lines of an env file: K=V or K; blank lines and # comments skipped. */
export function parseEnvFile(text: string): string[] {
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

/** "K=V" (or "K", an empty value) → record. */
export function parseLabels(entries: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const l of entries) {
    const eq = l.indexOf('=');
    const k = eq === -1 ? l : l.slice(0, eq);
    if (!k) throw new UsageError(`invalid label "${l}": use KEY=VALUE`);
    labels[k] = eq === -1 ? '' : l.slice(eq + 1);
  }
  return labels;
}
