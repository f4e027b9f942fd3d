/**
 * A small declarative option parser: each command declares its options once;
 * parsing, validation and --help come from the same declaration.
 */
export type OptionType = 'boolean' | 'string' | 'number' | 'list';

export interface OptionSpec {
  name: string;
  short?: string;
  type: OptionType;
  value?: string; // value name shown in help
  description: string;
  default?: string | number | boolean;
}

export interface CommandSpec {
  /** "run", "image pull", ... */
  name: string;
  usage: string; // positional part, e.g. "IMAGE [COMMAND] [ARG...]"
  summary: string;
  options: OptionSpec[];
  /** Options end at the first positional (run, exec: the rest belongs to the container). */
  stopAtPositional?: boolean;
  minArgs?: number;
  maxArgs?: number;
  run(ctx: CommandContext): Promise<number>;
}

export interface ParsedArgs {
  opts: Record<string, string | number | boolean | string[] | undefined>;
  args: string[];
}

export interface CommandContext extends ParsedArgs {
  global: GlobalOptions;
}

export interface GlobalOptions {
  socket?: string;
  host?: string;
  output: 'table' | 'json';
}

export class UsageError extends Error {}

export function parseArgs(spec: Pick<CommandSpec, 'options' | 'stopAtPositional' | 'minArgs' | 'maxArgs' | 'name'>, argv: string[]): ParsedArgs {
  const byName = new Map(spec.options.map((o) => [o.name, o]));
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
      if (raw !== undefined && !['true', 'false'].includes(raw)) throw new UsageError(`option ${flag} takes no value (or true/false)`);
      opts[o.name] = raw === undefined ? true : raw === 'true';
      return;
    }
    if (raw === undefined) throw new UsageError(`option ${flag} needs a value`);
    if (o.type === 'number') {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new UsageError(`option ${flag} needs a number, got "${raw}"`);
      opts[o.name] = n;
    } else if (o.type === 'list') {
      (opts[o.name] as string[]).push(raw);
    } else opts[o.name] = raw;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      args.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--') && a.length > 2) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq === -1 ? undefined : eq);
      const o = byName.get(name);
      if (!o) throw new UsageError(`unknown option --${name}`);
      const inline = eq === -1 ? undefined : a.slice(eq + 1);
      set(o, inline ?? (o.type === 'boolean' ? undefined : argv[++i]), `--${name}`);
      continue;
    }
    if (a.startsWith('-') && a.length > 1 && !/^-\d/.test(a)) {
      // Grouped shorts: -itd; the last may take a value (-n5 or -n 5).
      for (let j = 1; j < a.length; j++) {
        const o = byShort.get(a[j]!);
        if (!o) throw new UsageError(`unknown option -${a[j]}`);
        if (o.type === 'boolean') {
          set(o, undefined, `-${a[j]}`);
          continue;
        }
        const rest = a.slice(j + 1);
        set(o, rest || argv[++i], `-${a[j]}`);
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
  if (spec.minArgs !== undefined && args.length < spec.minArgs) throw new UsageError(`"${spec.name}" needs at least ${spec.minArgs} argument${spec.minArgs === 1 ? '' : 's'}`);
  if (spec.maxArgs !== undefined && args.length > spec.maxArgs) throw new UsageError(`"${spec.name}" takes at most ${spec.maxArgs} argument${spec.maxArgs === 1 ? '' : 's'}`);
  return { opts, args };
}

export function helpText(spec: CommandSpec): string {
  const lines = [`Usage: nimbus ${spec.name}${spec.options.length ? ' [OPTIONS]' : ''}${spec.usage ? ` ${spec.usage}` : ''}`, '', spec.summary];
  const all = [...spec.options, { name: 'help', short: 'h', type: 'boolean' as const, description: 'Show this help' }];
  lines.push('', 'Options:');
  const rows = all.map((o) => {
    const flag = `${o.short ? `-${o.short}, ` : '    '}--${o.name}${o.type === 'boolean' ? '' : ` ${o.value ?? (o.type === 'number' ? 'N' : 'VALUE')}`}`;
    const def = 'default' in o && o.default !== undefined && o.default !== false ? ` (default ${String(o.default)})` : '';
    const rep = o.type === 'list' ? ' (repeatable)' : '';
    return [flag, `${o.description}${rep}${def}`] as const;
  });
  const w = Math.max(...rows.map((r) => r[0].length));
  for (const [f, d] of rows) lines.push(`  ${f.padEnd(w)}  ${d}`);
  return lines.join('\n') + '\n';
}

/** "64m", "1.5g", "512k", "1024" → bytes. */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([bkmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`invalid size "${s}": use a number with an optional unit b, k, m, g (e.g. 64m)`);
  const mult = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as 'k'];
  return Math.round(Number(m[1]) * mult);
}

export function parseRestart(s: string): { name: 'no' | 'on-failure' | 'always' | 'unless-stopped'; maxRetries?: number } {
  const [name, count] = s.split(':');
  if (name === 'on-failure') {
    if (count === undefined) return { name };
    const n = Number(count);
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`invalid restart count in "${s}"`);
    return { name, maxRetries: n };
  }
  if ((name === 'no' || name === 'always' || name === 'unless-stopped') && count === undefined) return { name };
  throw new UsageError(`invalid restart policy "${s}": use no, on-failure[:N], always or unless-stopped`);
}
