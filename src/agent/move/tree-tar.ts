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
 * The export never follows a symlink, at any depth: the tree is a tenant's, and may be changing
 * while it is read (commit --pause=false reads a running container's layer), so a directory looked
 * at may be a symlink to a host path by the time it is read. Each directory is held open
 * (O_DIRECTORY|O_NOFOLLOW) and its entries are reached through that descriptor
 * (/proc/self/fd/N/name: no path walk that a swapped symlink could redirect); files are opened
 * O_NOFOLLOW|O_NONBLOCK (a file swapped for a fifo does not hang the read) and must still be
 * regular files, their size taken from the descriptor and read no further. Extended attributes
 * come from tree-xattrs.ts, walked the same way. The import is hostile input: paths out of the
 * target, devices, oversize trees and too many entries are refused (apply-layer.ts); the caller
 * passes the byte limit and the free-space check.
 */
import { constants as FS, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { Conflict, ResourceExhausted } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import type { UnpackRoom } from '../content/disk-space.js';
import { applyLayer } from '../layers/apply-layer.js';
import type { TreeImportResult } from '../agent.js';
import { readTreeXattrs } from './tree-xattrs.js';

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
  /**
   * Most bytes of regular files the tar carries (a sparse file counts whole: the tar writes it
   * out); past it the export ends with ResourceExhausted before that file is read.
   */
  maxBytes?: number;
}

/** Deepest entry the export takes (a host path's PATH_MAX): each directory on the way is held open. */
const MAX_ENTRY_NAME_BYTES = 4096;

const formatMiB = (n: number) => `${Math.round((n / 1024 / 1024) * 10) / 10} MiB`;

/** An entry of a directory held open, reached through its descriptor: no symlink on the way is followed, and the last component is the caller's to follow or not. */
const inDir = (dir: FileHandle, name: string) => `/proc/self/fd/${dir.fd}/${name}`;

/** An open that found something other than what the walk had looked at (a symlink, a non-directory, a socket, nothing). */
const replaced = (e: unknown) => ['ELOOP', 'ENOTDIR', 'ENOENT', 'ENXIO'].includes((e as NodeJS.ErrnoException).code ?? '');

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
    const xattrs = await readTreeXattrs(root, XATTR_PATTERN);
    const links = new Map<string, string>();
    let carried = 0;
    const skip = new Set(opts.skipAtRoot ?? []);
    const changed = (name: string) => new Conflict(`${JSON.stringify(name)} changed while the tree was read; try again with the container stopped or paused`, { entry: name });
    /** rel: the entry's path in the tree; at: how to reach it (root, or through its parent's descriptor); st: its lstat there. */
    const walk = async (rel: string, at: string, st: Stats): Promise<void> => {
      const name = opts.rootName === undefined ? rel || '.' : rel ? `${opts.rootName}/${rel}` : opts.rootName;
      if (Buffer.byteLength(rel) >= MAX_ENTRY_NAME_BYTES) throw new Conflict(`an entry of the tree is nested deeper than ${MAX_ENTRY_NAME_BYTES} bytes of path`, { entry: name.slice(0, 200) });
      const base = { name, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime };
      if (st.isDirectory()) {
        const dir = await open(at, FS.O_RDONLY | FS.O_DIRECTORY | FS.O_NOFOLLOW).catch((e: unknown) => {
          throw replaced(e) ? changed(name) : e;
        });
        try {
          const dst = await dir.stat(); // the directory opened, not the one looked at before
          const pax = paxOf(xattrs.get(rel), name);
          await addEntry(pack, { ...base, mode: dst.mode & 0o7777, uid: dst.uid, gid: dst.gid, mtime: dst.mtime, name: `${name}/`, type: 'directory', ...(pax ? { pax } : {}) });
          if (opts.kind === 'overlay' && xattrs.get(rel)?.get('trusted.overlay.opaque')?.toString() === 'y') {
            await addEntry(pack, { name: rel ? `${rel}/${WH_OPAQUE}` : WH_OPAQUE, mode: 0, uid: 0, gid: 0, mtime: dst.mtime, type: 'file', size: 0 });
          }
          for (const child of (await readdir(`/proc/self/fd/${dir.fd}`)).sort()) {
            if (!rel && skip.has(child)) continue;
            if (child.startsWith(WH_PREFIX) && opts.whiteoutNames !== 'keep') {
              throw new Conflict(`${JSON.stringify(rel ? `${rel}/${child}` : child)} has a name an image layer reserves for whiteouts (.wh.*); rename it before moving or committing the container`, { entry: rel ? `${rel}/${child}` : child });
            }
            const childRel = rel ? `${rel}/${child}` : child;
            const cst = await lstat(inDir(dir, child)).catch((e: unknown) => {
              throw replaced(e) ? changed(childRel) : e;
            });
            await walk(childRel, inDir(dir, child), cst);
          }
        } finally {
          await dir.close();
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
        await addEntry(pack, { ...base, type: 'symlink', linkname: await readlink(at) });
        return;
      }
      if (st.isFIFO()) {
        await addEntry(pack, { ...base, type: 'fifo' });
        return;
      }
      if (st.isFile()) {
        const file = await open(at, FS.O_RDONLY | FS.O_NOFOLLOW | FS.O_NONBLOCK).catch((e: unknown) => {
          throw replaced(e) ? changed(name) : e;
        });
        let fst: Stats;
        try {
          fst = await file.stat();
          if (!fst.isFile()) throw changed(name);
        } catch (e) {
          await file.close();
          throw e;
        }
        const fbase = { ...base, mode: fst.mode & 0o7777, uid: fst.uid, gid: fst.gid, mtime: fst.mtime };
        const key = `${fst.dev}:${fst.ino}`;
        const first = fst.nlink > 1 ? links.get(key) : undefined;
        if (first !== undefined) {
          await file.close();
          await addEntry(pack, { ...fbase, type: 'link', linkname: first });
          return;
        }
        carried += fst.size;
        if (opts.maxBytes !== undefined && carried > opts.maxBytes) {
          await file.close();
          throw new ResourceExhausted(`the tree's files take more than ${formatMiB(opts.maxBytes)} (at ${JSON.stringify(name)}; a sparse file counts whole)`, { entry: name, maxBytes: opts.maxBytes });
        }
        if (fst.nlink > 1) links.set(key, name);
        const pax = paxOf(xattrs.get(rel), name);
        const header: TarHeader = { ...fbase, type: 'file', size: fst.size, ...(pax ? { pax } : {}) };
        if (fst.size === 0) {
          await file.close();
          await addEntry(pack, header);
          return;
        }
        // no further than the size the header gives: a file growing meanwhile is cut, not spilled into the next header
        await addEntry(pack, header, file.createReadStream({ start: 0, end: fst.size - 1 }));
        return;
      }
      // block and other character devices, sockets: nothing a tenant can make or carry
      log.warn('an entry that cannot travel is left out', { entry: name, mode: st.mode.toString(8) });
    };
    await walk('', root, await lstat(root));
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
