/**
 * nimbus build [-t TAG] [-f Dockerfile] [--build-arg K=V] [--target T] DIR: the directory as a tar
 * (what .dockerignore excludes left out, as docker build does; the Dockerfile and .dockerignore
 * always go), sent to POST /images/build, the build's output shown as it comes.
 */
import { lstatSync, readFileSync, readdirSync, readlinkSync, createReadStream, type Stats } from 'node:fs';
import { join, posix, relative, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { createRequire } from 'node:module';
import type TarStream from 'tar-stream';
import { StepNumbering } from '../../core/build-output.js';
import { UsageError, type CommandSpec } from '../args.js';
import { clientOf, succeeded } from './shared.js';

interface BuildOperation {
  id: string;
  status: string;
  progress?: { lines?: string[]; dropped?: number; totalSteps?: number };
  error: { code: string; message: string } | null;
  result: { id?: string; digest?: string; tags?: string[] } | null;
}

const POLL_MS = 200;

interface IgnoreRule {
  re: RegExp;
  negate: boolean;
}

/** .dockerignore's patterns (Go's filepath.Match with `**`, `!` exceptions, the last match decides). */
export function parseDockerignore(text: string): IgnoreRule[] {
  const rules: IgnoreRule[] = [];
  for (let line of text.split(/\r?\n/)) {
    line = line.trim();
    if (!line || line.startsWith('#')) continue;
    const negate = line.startsWith('!');
    if (negate) line = line.slice(1).trim();
    const p = posix.normalize(line.replace(/^\/+/, '')).replace(/\/+$/, '');
    if (!p || p === '.') continue;
    let re = '';
    for (let i = 0; i < p.length; i++) {
      const c = p[i]!;
      if (c === '*' && p[i + 1] === '*') {
        re += '.*';
        i++;
        if (p[i + 1] === '/') i++;
      } else if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    rules.push({ re: new RegExp(`^${re}$`), negate });
  }
  return rules;
}

/** Whether a context path (or a directory above it) is excluded. */
export function ignored(path: string, rules: IgnoreRule[]): boolean {
  const parts = path.split('/');
  let out = false;
  for (const r of rules) {
    // a rule matching a parent directory excludes what is under it
    for (let i = 1; i <= parts.length; i++) {
      if (r.re.test(parts.slice(0, i).join('/'))) {
        out = !r.negate;
        break;
      }
    }
  }
  return out;
}

/** The context directory as a tar stream (regular files, directories, symlinks as links). */
export function contextTar(dir: string, dockerfile: string): Readable {
  let rules: IgnoreRule[] = [];
  try {
    rules = parseDockerignore(readFileSync(join(dir, '.dockerignore'), 'utf8'));
  } catch {
    /* none */
  }
  const always = new Set([dockerfile, '.dockerignore']);
  // tar-stream takes ~15 ms to load here: only a build that packs a context pays it
  const tar = createRequire(import.meta.url)('tar-stream') as typeof TarStream;
  const pack = tar.pack();
  const walk = async (rel: string): Promise<void> => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      if (!always.has(path) && ignored(path, rules)) continue;
      const st: Stats = lstatSync(join(dir, path));
      const common = { name: path, mode: st.mode & 0o7777, mtime: st.mtime };
      if (st.isDirectory()) {
        pack.entry({ ...common, type: 'directory' });
        await walk(path);
      } else if (st.isSymbolicLink()) {
        pack.entry({ ...common, type: 'symlink', linkname: readlinkSync(join(dir, path)) });
      } else if (st.isFile()) {
        await new Promise<void>((ok, fail) => {
          const entry = pack.entry({ ...common, type: 'file', size: st.size }, (e) => (e ? fail(e) : ok()));
          createReadStream(join(dir, path)).on('error', fail).pipe(entry as unknown as NodeJS.WritableStream);
        });
      }
    }
  };
  walk('').then(() => pack.finalize(), (e: unknown) => pack.destroy(e as Error));
  return pack as unknown as Readable;
}

export const buildCommands: CommandSpec[] = [
  {
    name: 'build', usage: 'DIR', summary: 'Build an image from a Dockerfile (the directory is the build context; .dockerignore is honoured)', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'tag', short: 't', type: 'list', value: 'NAME[:TAG]', description: 'Tag the image' },
      { name: 'file', short: 'f', type: 'string', value: 'PATH', description: 'The Dockerfile (default DIR/Dockerfile)' },
      { name: 'build-arg', type: 'list', value: 'K=V', description: 'A build argument' },
      { name: 'target', type: 'string', value: 'STAGE', description: 'Build up to this stage' },
      { name: 'label', type: 'list', value: 'K=V', description: 'A label of the image' },
      { name: 'network', type: 'string', value: 'MODE', description: 'RUN steps\' network: none (default) or host (administrators only)' },
      { name: 'cpus', type: 'string', value: 'N', description: 'CPUs the build may use (admitted against the quota; default 1)' },
      { name: 'memory', type: 'string', value: 'BYTES', description: 'Memory the build may use (admitted against the quota; default 1 GiB; k, m, g suffixes)' },
      { name: 'quiet', short: 'q', type: 'boolean', description: 'No output but the image id' },
      { name: 'no-cache', type: 'boolean', description: 'Run every step again, past the project\'s layer cache' },
    ],
    async run({ args, opts, global }) {
      const dir = resolve(args[0]!);
      try {
        if (!lstatSync(dir).isDirectory()) throw new Error('not a directory');
      } catch (e) {
        throw new UsageError(`cannot read ${args[0]}: ${(e as Error).message}`);
      }
      let dockerfile = 'Dockerfile';
      if (opts.file !== undefined) {
        const f = relative(dir, resolve(String(opts.file)));
        if (f.startsWith('..') || f === '') throw new UsageError('the Dockerfile must be inside the build context');
        dockerfile = f.split(sep).join('/');
      }
      const q = new URLSearchParams();
      for (const t of (opts.tag as string[] | undefined) ?? []) q.append('tag', t);
      q.set('dockerfile', dockerfile);
      for (const a of (opts['build-arg'] as string[] | undefined) ?? []) q.append('buildarg', a.includes('=') ? a : `${a}=${process.env[a] ?? ''}`);
      for (const l of (opts.label as string[] | undefined) ?? []) q.append('label', l);
      if (opts.target !== undefined) q.set('target', String(opts.target));
      if (opts.network !== undefined) q.set('network', String(opts.network));
      if (opts.cpus !== undefined) q.set('cpus', String(opts.cpus));
      if (opts['no-cache']) q.set('nocache', 'true');
      if (opts.memory !== undefined) {
        const m = /^(\d+)([kmg]?)b?$/i.exec(String(opts.memory));
        if (!m) throw new UsageError(`--memory must be a size (512m, 2g), got ${String(opts.memory)}`);
        q.set('memory', String(Number(m[1]) * ({ '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as Record<string, number>)[m[2]!.toLowerCase()]!));
      }
      const client = clientOf(global);
      let op = await client.upload<BuildOperation>(`/images/build?${q.toString()}`, contextTar(dir, dockerfile), 'application/x-tar');
      const quiet = Boolean(opts.quiet);
      let steps: StepNumbering | undefined;
      let shown = 0;
      for (;;) {
        const p = op.progress ?? {};
        steps ??= p.totalSteps !== undefined ? new StepNumbering(p.totalSteps) : undefined;
        const lines = p.lines ?? [];
        const dropped = p.dropped ?? 0;
        if (steps) {
          for (let i = Math.max(0, shown - dropped); i < lines.length; i++) {
            const l = steps.docker(lines[i]!);
            if (l !== undefined && !quiet) process.stdout.write(`${l}\n`);
          }
          shown = dropped + lines.length;
        }
        if (op.status !== 'running' && op.status !== 'pending') break;
        await new Promise((r) => setTimeout(r, POLL_MS));
        op = await client.json<BuildOperation>('GET', `/operations/${encodeURIComponent(op.id)}`);
      }
      succeeded(op, 'build');
      if (quiet) process.stdout.write(`${op.result?.digest ?? ''}\n`);
      else {
        process.stdout.write(`Successfully built ${(op.result?.digest ?? '').replace(/^sha256:/, '').slice(0, 12)}\n`);
        for (const t of op.result?.tags ?? []) process.stdout.write(`Successfully tagged ${t}\n`);
      }
      return 0;
    },
  },
];
