/**
 * A build context (a tenant's tar stream) onto the host, checked as it arrives: regular files,
 * directories and symlinks only (devices, fifos and the like are skipped), every name relative and
 * inside the context, never written through a symlink an earlier entry made, hard links copied
 * from a file already extracted, and bounded in bytes, entries and name length. Symlinks are kept
 * as they are: buildah resolves COPY sources inside the context root (its copier chroots there).
 */
import { constants } from 'node:fs';
import { copyFile, mkdir, open, symlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { InvalidArgument, PayloadTooLarge, ResourceExhausted } from '../../core/errors.js';

export interface ContextLimits {
  /** The bytes of the files, all told. */
  maxBytes: number;
  maxEntries: number;
}

export const DEFAULT_CONTEXT_LIMITS: ContextLimits = { maxBytes: 1024 * 1024 * 1024, maxEntries: 100_000 };
const MAX_NAME = 4096;

/** "./a/b/" → "a/b"; undefined for what may not be extracted (absolute, `..`, empty). */
export function contextPath(name: string): string | undefined {
  if (name.length > MAX_NAME || name.includes('\0')) return undefined;
  const n = posix.normalize(name.replace(/^\/+/, '')).replace(/^(\.\/)+/, '').replace(/\/+$/, '');
  if (n === '' || n === '.') return '';
  if (n.startsWith('/') || n === '..' || n.startsWith('../')) return undefined;
  return n;
}

/**
 * A system error names the host path of the context (EEXIST for a directory named again as a link, a name
 * too long): the tenant gets the entry and the error's code, never where the host keeps its context.
 */
function hostFailure(e: unknown, entry: string): unknown {
  const err = e as NodeJS.ErrnoException;
  if (typeof err?.syscall !== 'string') return e;
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') return new ResourceExhausted('no space left on the host for the build context', undefined, { cause: e });
  return new InvalidArgument(`build context: entry ${JSON.stringify(entry.slice(0, 200))} cannot be unpacked (${err.code ?? 'system error'})`, undefined, { cause: e });
}

export async function extractContext(source: AsyncIterable<Uint8Array>, dir: string, limits: ContextLimits = DEFAULT_CONTEXT_LIMITS): Promise<{ files: number; bytes: number }> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const symlinks = new Set<string>();
  const files = new Set<string>();
  const madeDirs = new Set<string>(['']);
  let bytes = 0;
  let entries = 0;
  /** No prefix of the path is a symlink the context made (writing through it would leave the context). */
  const throughLink = (p: string) => {
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) if (symlinks.has(parts.slice(0, i).join('/'))) return true;
    return false;
  };
  const ensureDir = async (p: string) => {
    if (madeDirs.has(p)) return;
    const parts = p.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const sub = parts.slice(0, i).join('/');
      if (madeDirs.has(sub)) continue;
      if (symlinks.has(sub) || files.has(sub)) throw new InvalidArgument(`build context: ${sub} is both a file and a directory`);
      await mkdir(join(dir, sub), { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      madeDirs.add(sub);
    }
  };
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      void (async () => {
        if (++entries > limits.maxEntries) throw new PayloadTooLarge(`the build context has more than ${limits.maxEntries} entries`);
        const name = contextPath(header.name);
        if (name === undefined) throw new InvalidArgument(`build context: entry ${JSON.stringify(header.name.slice(0, 200))} is outside the context`);
        if (name === '' || throughLink(name) || symlinks.has(name) || files.has(name)) {
          if (name !== '' && (throughLink(name) || symlinks.has(name) || files.has(name))) throw new InvalidArgument(`build context: ${name} is written twice or through a symlink`);
          stream.resume();
          await new Promise<void>((r) => stream.on('end', () => r()));
          return;
        }
        const parent = posix.dirname(name) === '.' ? '' : posix.dirname(name);
        const mode = (header.mode ?? 0o644) & 0o777;
        switch (header.type) {
          case 'directory':
            await ensureDir(name);
            break;
          case 'file':
          case 'contiguous-file': {
            await ensureDir(parent);
            files.add(name);
            // O_EXCL|O_NOFOLLOW: nothing is there yet, and if something were it is not followed
            const fh = await open(join(dir, name), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode | 0o600);
            try {
              for await (const chunk of stream as AsyncIterable<Buffer>) {
                bytes += chunk.length;
                if (bytes > limits.maxBytes) throw new PayloadTooLarge(`the build context is larger than ${limits.maxBytes} bytes`);
                await fh.write(chunk);
              }
            } finally {
              await fh.close();
            }
            return;
          }
          case 'symlink': {
            await ensureDir(parent);
            if (!header.linkname || header.linkname.length > MAX_NAME || header.linkname.includes('\0')) throw new InvalidArgument(`build context: symlink ${name} has no valid target`);
            symlinks.add(name);
            await symlink(header.linkname, join(dir, name));
            break;
          }
          case 'link': {
            const target = contextPath(header.linkname ?? '');
            if (target === undefined || !files.has(target)) throw new InvalidArgument(`build context: hard link ${name} names no file before it in the context`);
            await ensureDir(parent);
            files.add(name);
            await copyFile(join(dir, target), join(dir, name), constants.COPYFILE_EXCL);
            break;
          }
          default:
            break; // devices, fifos, pax headers' leftovers: not part of a context
        }
        stream.resume();
        await new Promise<void>((r) => stream.on('end', () => r()));
      })().then(() => next(), (e: unknown) => {
        const failed = hostFailure(e, header.name);
        extract.destroy(failed as Error);
        reject(failed);
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  const input = Readable.from(source);
  input.on('error', (e) => extract.destroy(e));
  input.pipe(extract as unknown as NodeJS.WritableStream);
  try {
    await done;
  } catch (e) {
    if (e instanceof InvalidArgument || e instanceof PayloadTooLarge || e instanceof ResourceExhausted) throw e;
    throw new InvalidArgument(`the build context is not a valid tar archive: ${(e as Error).message}`, undefined, { cause: e });
  } finally {
    input.unpipe();
    input.destroy();
  }
  return { files: files.size, bytes };
}
