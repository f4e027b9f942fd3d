/**
 * `nimbus cp`: files between a container (running or stopped) and this machine, as `docker cp`:
 *
 *   nimbus cp CONTAINER:SRC DEST     SRC into the directory DEST, or as DEST when it is not a directory
 *   nimbus cp SRC CONTAINER:DEST     the same the other way
 *   nimbus cp CONTAINER:SRC -        a tar of SRC on stdout
 *   nimbus cp - CONTAINER:DIR        a tar from stdin extracted under DIR
 *
 * Over GET/POST /containers/{id}/archive (the tar in NDJSON frames down, raw up). The local side is
 * the system's GNU tar: it refuses members with '..', strips leading '/', does not write through a
 * symlink it extracted, and, told --no-same-owner --no-same-permissions, gives what it writes this
 * user and the umask (a container's setuid files do not become this machine's).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, renameSync, rmdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { UsageError, type CommandSpec } from '../args.js';
import { clientOf } from './shared.js';

const enc = encodeURIComponent;

interface PathStat { name: string; mode: number; linkTarget: string }

/** "NAME:PATH" → container and path; a local path (with no ':' before its first '/') → undefined. */
export function splitContainerPath(arg: string): { container: string; path: string } | undefined {
  if (arg === '-' || arg.startsWith('/') || arg.startsWith('.')) return undefined;
  const colon = arg.indexOf(':');
  const slash = arg.indexOf('/');
  if (colon <= 0 || (slash >= 0 && slash < colon)) return undefined;
  const p = arg.slice(colon + 1);
  return { container: arg.slice(0, colon), path: p.startsWith('/') ? p : `/${p}` };
}

const isDirMode = (mode: number) => (mode & 0o170000) === 0o040000;

/** A sed replacement that renames the tar's top entry OLD to NEW (GNU tar --transform). */
function renameTop(from: string, to: string): string {
  const re = from.replace(/[\\^$.*[\]|]/g, (c) => `\\${c}`);
  const rep = to.replace(/[\\&|]/g, (c) => `\\${c}`);
  return `s|^${re}\\(/\\|$\\)|${rep}\\1|`;
}

function tarProcess(args: string[], stdio: ['pipe' | 'inherit', 'pipe' | 'inherit', 'inherit']): ChildProcess {
  return spawn('tar', args, { stdio });
}

function exited(child: ChildProcess, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`${what}: ${e.message} (GNU tar is needed)`)));
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`${what} failed (exit ${code})`))));
  });
}

/** The tar of container:path, from the frames. */
async function* tarBytes(frames: AsyncIterable<{ stat?: PathStat; data?: string }>): AsyncGenerator<Buffer> {
  for await (const f of frames) if (f.data !== undefined) yield Buffer.from(f.data, 'base64');
}

export const cpCommands: CommandSpec[] = [
  {
    name: 'cp', usage: 'CONTAINER:SRC DEST|-  or  SRC|- CONTAINER:DEST',
    summary: 'Copy files between a container (running or stopped) and this machine; - is a tar on stdin or stdout',
    minArgs: 2, maxArgs: 2,
    options: [{ name: 'archive', short: 'a', type: 'boolean', description: "Copying in: own the files as the container's user (else the tar's owners)" }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const [src, dst] = [args[0]!, args[1]!];
      const from = splitContainerPath(src);
      const to = splitContainerPath(dst);
      if ((from === undefined) === (to === undefined)) throw new UsageError('one of SRC and DEST must be CONTAINER:PATH, the other a local path or -');
      if (from) {
        const frames = await client.openNdjson<{ stat?: PathStat; data?: string }>('GET', `/containers/${enc(from.container)}/archive?path=${enc(from.path)}`);
        if (dst === '-') {
          await pipeline(Readable.from(tarBytes(frames)), process.stdout);
          return 0;
        }
        const it = frames[Symbol.asyncIterator]();
        const first = await it.next();
        const stat = (first.value as { stat?: PathStat } | undefined)?.stat;
        if (!stat) throw new Error('the daemon sent no stat first');
        const rest = { [Symbol.asyncIterator]: () => it };
        const local = path.resolve(dst);
        const intoDir = existsSync(local) && statSync(local).isDirectory();
        // not a directory here: extracted beside it, then renamed to it (as docker cp does)
        const where = intoDir ? local : mkdtempSync(path.join(path.dirname(local), '.nimbus-cp-'));
        const tarx = tarProcess(['-x', '--no-same-owner', '--no-same-permissions', '-C', where, '-f', '-'], ['pipe', 'inherit', 'inherit']);
        const done = exited(tarx, 'tar -x');
        await pipeline(Readable.from(tarBytes(rest)), tarx.stdin!);
        await done;
        if (!intoDir) {
          renameSync(path.join(where, stat.name === '/' ? '.' : stat.name), local);
          rmdirSync(where);
        }
        return 0;
      }
      const target = to!;
      const query = (p: string) => `/containers/${enc(target.container)}/archive?path=${enc(p)}${opts.archive ? '&copyUIDGID=true' : ''}`;
      if (src === '-') {
        await client.upload(query(target.path), process.stdin, 'application/x-tar');
        return 0;
      }
      const local = path.resolve(src);
      if (!existsSync(local)) throw new UsageError(`no such file or directory: ${src}`);
      const base = path.basename(local);
      let stat: PathStat | undefined;
      try {
        stat = await client.json<PathStat>('GET', `/containers/${enc(target.container)}/archive/stat?path=${enc(target.path)}`);
      } catch (e) {
        if ((e as { code?: string }).code !== 'NotFound') throw e;
      }
      // into an existing directory; else as the path itself, in its parent (which must exist)
      const intoDir = stat !== undefined && isDirMode(stat.mode);
      if (stat && !intoDir && statSync(local).isDirectory()) throw new UsageError(`cannot copy a directory onto the file ${dst}`);
      const dir = intoDir ? target.path : path.posix.dirname(target.path);
      const name = intoDir ? base : path.posix.basename(target.path);
      const tarc = tarProcess(['-c', '-C', path.dirname(local), ...(name !== base ? [`--transform=${renameTop(base, name)}`] : []), '-f', '-', '--', base], ['inherit', 'pipe', 'inherit']);
      const done = exited(tarc, 'tar -c');
      await client.upload(query(dir), tarc.stdout as Readable, 'application/x-tar');
      await done;
      return 0;
    },
  },
];
