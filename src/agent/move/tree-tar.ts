/**
 * A directory tree as a tar stream and back: how a container's writable layer (an overlayfs
 * upper directory) and a named volume's data travel between hosts in a cold move
 * (docs/overlay.md, "Moving containers").
 *
 * The tar is an OCI layer: overlayfs whiteouts (0:0 character devices) travel as `.wh.NAME`
 * entries and opaque directories (trusted.overlay.opaque=y) as `.wh..wh..opq`, so the receiving
 * side unpacks it with the hardened image-layer code (apply-layer.ts), which turns them back into
 * whiteouts and the opaque xattr. Ownership, modes, mtimes, symlinks, hard links and fifos are
 * kept; `user.*` xattrs too (text values only: what apply-layer keeps). A name that already looks
 * like a whiteout would be read as one at the other end: the export refuses it rather than lose it.
 * Other device nodes and sockets are not content a tenant can recreate and are skipped.
 *
 * The export never follows a symlink (lstat, O_NOFOLLOW): the tree is a tenant's. The import is
 * hostile input: paths out of the target, devices, oversize trees and too many entries are refused
 * (apply-layer.ts); the caller passes the byte limit and the free-space check.
 */
import { constants as FS, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { Conflict, Unavailable } from '../../core/errors.js';
import { run } from '../../core/exec.js';
import { logger } from '../../core/log.js';
import type { UnpackRoom } from '../content/disk-space.js';
import { applyLayer } from '../layers/apply-layer.js';
import type { TreeImportResult } from '../agent.js';

const log = logger('agent.move');

const WH_PREFIX = '.wh.';
const WH_OPAQUE = '.wh..wh..opq';
/** The xattrs that travel: the opaque marker (as `.wh..wh..opq`) and tenants' own user.* ones. */
const XATTR_PATTERN = '^(user\\..*|trusted\\.overlay\\.opaque)$';

export interface ExportTreeOptions {
  /** 'overlay': an upper dir (whiteouts and opaque dirs are encoded); 'plain': a volume's data. */
  kind: 'overlay' | 'plain';
  /** Names (relative, at the root) left out. */
  skipAtRoot?: string[];
  /** The name the root travels as (its children under it); default '.'. `docker cp` names a file or directory by its base name. */
  rootName?: string;
  /** Names that look like whiteouts: refused (default: the other end would read them as whiteouts) or kept as they are (docker cp's plain tar). */
  whiteoutNames?: 'refuse' | 'keep';
}

/** getfattr's escapes (\ooo octal for bytes it will not print, \\ for a backslash) undone. */
function unescapeGetfattr(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else if (s[i] === '\\' && s[i + 1] === '\\') {
      bytes.push(0x5c);
      i += 1;
    } else bytes.push(...Buffer.from(s[i]!, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

/** Every travelling xattr under root, by absolute path (one getfattr for the whole tree, symlinks not followed). */
export async function readXattrs(root: string): Promise<Map<string, Map<string, Buffer>>> {
  const r = await run('getfattr', ['-R', '-P', '--absolute-names', '-d', '-m', XATTR_PATTERN, '-e', 'hex', '--', root]).catch((e: unknown) => {
    throw new Unavailable(`reading extended attributes needs getfattr (Debian package attr): ${String(e)}`);
  });
  // exit 1 with output: some file had none readable; only a silent failure is one
  if (r.code !== 0 && !r.stdout.trim()) throw new Unavailable(`getfattr failed (exit ${r.code})`);
  const out = new Map<string, Map<string, Buffer>>();
  let file: string | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      file = unescapeGetfattr(line.slice('# file: '.length));
      continue;
    }
    const eq = line.indexOf('=');
    if (!file || eq <= 0) continue;
    const name = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (!value.startsWith('0x')) continue;
    let attrs = out.get(file);
    if (!attrs) out.set(file, (attrs = new Map()));
    attrs.set(name, Buffer.from(value.slice(2), 'hex'));
  }
  return out;
}

/** A text value survives the PAX header (apply-layer decodes it as UTF-8); a binary one would not. */
function paxOf(attrs: Map<string, Buffer> | undefined, where: string): Record<string, string> | undefined {
  if (!attrs) return undefined;
  const pax: Record<string, string> = {};
  for (const [name, value] of attrs) {
    if (!name.startsWith('user.')) continue;
    const text = value.toString('utf8');
    if (text.includes('\uFFFD') || text.includes('\0')) {
      log.warn('an xattr with a binary value does not travel', { entry: where, name });
      continue;
    }
    pax[`SCHILY.xattr.${name}`] = text;
  }
  return Object.keys(pax).length ? pax : undefined;
}

/** tar-stream takes PAX records (xattrs) beside the header fields its types name. */
type TarHeader = Parameters<tar.Pack["entry"]>[0] & { pax?: Record<string, string> };

/** Regular files in a tar: bodies streamed from the tree, never held whole. */
function addEntry(pack: tar.Pack, header: TarHeader, body?: Readable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (!body) {
      pack.entry(header, Buffer.alloc(0), (e) => (e ? reject(e) : resolve()));
      return;
    }
    const sink = pack.entry(header, (e) => (e ? reject(e) : resolve()));
    pipeline(body, sink).catch(reject);
  });
}

/**
 * The tree under root as a tar stream (see the file comment). Errors (a whiteout-like name, a file
 * that changed size while read) end the stream with that error.
 */
export function exportTree(root: string, opts: ExportTreeOptions): Readable {
  const pack = tar.pack();
  const fail = (e: unknown) => pack.destroy(e instanceof Error ? e : new Error(String(e)));
  void (async () => {
    const xattrs = await readXattrs(root);
    const links = new Map<string, string>();
    const skip = new Set(opts.skipAtRoot ?? []);
    const walk = async (rel: string, st: Stats): Promise<void> => {
      const abs = rel ? path.join(root, rel) : root;
      const name = opts.rootName === undefined ? rel || '.' : rel ? `${opts.rootName}/${rel}` : opts.rootName;
      const base = { name, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime };
      if (st.isDirectory()) {
        const pax = paxOf(xattrs.get(abs), name);
        await addEntry(pack, { ...base, name: `${name}/`, type: 'directory', ...(pax ? { pax } : {}) });
        if (opts.kind === 'overlay' && xattrs.get(abs)?.get('trusted.overlay.opaque')?.toString() === 'y') {
          await addEntry(pack, { name: rel ? `${rel}/${WH_OPAQUE}` : WH_OPAQUE, mode: 0, uid: 0, gid: 0, mtime: st.mtime, type: 'file', size: 0 });
        }
        for (const child of (await readdir(abs)).sort()) {
          if (!rel && skip.has(child)) continue;
          if (child.startsWith(WH_PREFIX) && opts.whiteoutNames !== 'keep') {
            throw new Conflict(`${JSON.stringify(rel ? `${rel}/${child}` : child)} has a name an image layer reserves for whiteouts (.wh.*); rename it before moving or committing the container`, { entry: rel ? `${rel}/${child}` : child });
          }
          const childRel = rel ? `${rel}/${child}` : child;
          await walk(childRel, await lstat(path.join(root, childRel)));
        }
        return;
      }
      if (st.isCharacterDevice() && st.rdev === 0 && opts.kind === 'overlay') {
        // an overlayfs whiteout: the OCI spelling, turned back into one at the other end
        const dir = path.posix.dirname(rel);
        const wh = `${dir === '.' ? '' : `${dir}/`}${WH_PREFIX}${path.posix.basename(rel)}`;
        await addEntry(pack, { name: wh, mode: 0, uid: 0, gid: 0, mtime: st.mtime, type: 'file', size: 0 });
        return;
      }
      if (st.isSymbolicLink()) {
        await addEntry(pack, { ...base, type: 'symlink', linkname: await readlink(abs) });
        return;
      }
      if (st.isFIFO()) {
        await addEntry(pack, { ...base, type: 'fifo' });
        return;
      }
      if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? links.get(key) : undefined;
        if (first !== undefined) {
          await addEntry(pack, { ...base, type: 'link', linkname: first });
          return;
        }
        if (st.nlink > 1) links.set(key, name);
        const pax = paxOf(xattrs.get(abs), name);
        const body = (await open(abs, FS.O_RDONLY | FS.O_NOFOLLOW)).createReadStream();
        await addEntry(pack, { ...base, type: 'file', size: st.size, ...(pax ? { pax } : {}) }, body);
        return;
      }
      // block and other character devices, sockets: nothing a tenant can make or carry
      log.warn('an entry that cannot travel is left out', { entry: name, mode: st.mode.toString(8) });
    };
    await walk('', await lstat(root));
    pack.finalize();
  })().catch(fail);
  return pack as unknown as Readable;
}

export interface ImportTreeOptions {
  /** 'overlay': the target is an empty upper dir (whiteouts made); 'plain': a volume's data directory. */
  kind: 'overlay' | 'plain';
  /** Most bytes of regular files the tree may unpack to. */
  maxBytes: number;
  /** Most tar entries (default 1,000,000). */
  maxEntries?: number;
  /** Free space of the target's filesystem, asked as files are written. */
  room?: UnpackRoom;
  /** Named in limit errors. */
  what: string;
}

/**
 * A tree received from another host unpacked into target, checked as an image layer is (hostile
 * input): nothing outside target, no device nodes, within maxBytes and maxEntries. Setuid bits
 * are kept: they are the tenant's own files, which root in the container could set anyway.
 */
export async function importTree(target: string, source: AsyncIterable<Uint8Array> | Readable, opts: ImportTreeOptions): Promise<TreeImportResult> {
  const r = await applyLayer(target, source, {
    mediaType: 'application/vnd.oci.image.layer.v1.tar',
    mode: opts.kind === 'overlay' ? 'overlay' : 'native',
    allowSetuid: true,
    devices: 'refuse',
    fifos: 'allow',
    xattrs: true,
    digest: opts.what,
    limits: { maxUnpackedBytes: opts.maxBytes, maxEntryBytes: opts.maxBytes, ...(opts.maxEntries !== undefined ? { maxEntries: opts.maxEntries } : {}) },
    ...(opts.room ? { room: opts.room } : {}),
  });
  return { bytes: r.size, digest: r.diffId, entries: r.entries, unpackedBytes: r.unpackedBytes };
}
