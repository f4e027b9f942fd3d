/**
 * Apply one OCI image layer (a possibly compressed tar stream) to a directory,
 * streaming: decompress → hash (diffId) → parse → write.
 *
 * mode 'overlay': targetDir is an empty upper dir of an active overlay snapshot;
 *   OCI whiteouts become overlayfs whiteouts (0:0 char devices) and opaque markers
 *   become the `trusted.overlay.opaque=y` xattr.
 * mode 'native': targetDir is a full copy of the parent tree; whiteouts delete.
 *
 * Layers are hostile input. Every entry path is normalised lexically and must stay
 * inside targetDir; parent components are checked with lstat so an existing symlink
 * is never followed; files are opened O_NOFOLLOW|O_EXCL; hard link targets must be
 * inside the tree; devices are refused by default; setuid/setgid bits are stripped
 * by default; sizes, entry counts and path lengths are bounded, and so are the bytes a layer
 * (and, through an ImageBudget, an image) unpacks to; with an UnpackRoom the free space of the
 * target's filesystem is checked as files are written, so a layer never fills the disk.
 *
 * Node has neither mknod(2) nor setxattr(2). Whiteouts, fifos and xattrs are
 * collected and applied at the end in one batch (special-ops.ts), as are the modes and
 * times of directories and fifos. A later entry may replace what an earlier one made
 * (a directory by a symlink to a host path): an operation whose target was replaced
 * since it was queued is dropped, and every deferred operation reaches its target
 * without following a symlink, so a case the bookkeeping missed fails the layer
 * rather than changing anything outside the root.
 */
import { constants as FS } from 'node:fs';
import { lchown, link, lstat, lutimes, mkdir, open, readdir, readlink, realpath, rm, symlink, unlink, type FileHandle } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { eachLimited } from '../../core/each-limited.js';
import { InvalidArgument, NimbusError, ResourceExhausted } from '../../core/errors.js';
import { logger } from '../../core/log.js';
import { digestPass } from '../../core/stream-digest.js';
import { RoomPacer, type UnpackRoom } from '../content/disk-space.js';
import { SmallFileWriter } from './file-writer.js';
import { checkDecompressor, decompressor, haveZstd, layerCompression } from './layer-compression.js';
import { applySpecialOps, probeSpecialOps, type NodeOp, type XattrOp } from './special-ops.js';
import { DEFAULT_LAYER_MAX_BYTES, DEFAULT_LAYER_MAX_ENTRIES, formatBytes, type ImageBudget } from './unpack-limits.js';

const log = logger('agent.layers.apply');

/**
 * Files up to this size are read into memory and created by the writer threads (file-writer.ts),
 * in batches, with synchronous calls: five thread-pool round trips each (open, write, chmod,
 * utimes, close), one entry after another, made an image of 2,000 small files latency-bound
 * (1.7 s against umoci's 0.8 s here), and creating them on the main thread (~0.12 ms each, the
 * kernel's inode creation) left that thread, which also parses, hashes and downloads, the pull's
 * bottleneck.
 */
const SMALL_FILE_BYTES = 64 * 1024;

/**
 * Output chunk of the gunzip stream (zlib's default is 16 KiB). Every chunk costs a callback on the
 * event loop and, in a large file, a thread-pool write: 16x fewer of both for a large layer.
 */
const GUNZIP_CHUNK_BYTES = 256 * 1024;


export interface ApplyLayerLimits {
  /** Sum of the sizes of the regular files the layer writes. Default 16 GiB (DEFAULT_LAYER_MAX_BYTES). */
  maxUnpackedBytes?: number;
  /** Total uncompressed tar bytes (headers included). Default maxUnpackedBytes + 1 GiB. */
  maxTotalBytes?: number;
  /** Largest single file. Default 8 GiB. */
  maxEntryBytes?: number;
  /** Most tar entries. Default 1,000,000. */
  maxEntries?: number;
  /** Longest normalised path, in bytes. Default 4095 (PATH_MAX - 1); components are limited to 255. */
  maxPathLength?: number;
}

export interface ApplyLayerOptions {
  mediaType: string;
  mode: 'overlay' | 'native';
  limits?: ApplyLayerLimits;
  /** Keep setuid (and setgid on files) bits. Default false: stripped. setgid on directories is kept. */
  allowSetuid?: boolean;
  /** Character and block devices: refuse the layer (default) or skip the entry. */
  devices?: 'refuse' | 'skip';
  /** FIFOs: create them (default), skip them or refuse the layer. */
  fifos?: 'allow' | 'skip' | 'refuse';
  /** Apply `user.*` and `security.capability` xattrs from PAX headers (default true); others are always dropped. */
  xattrs?: boolean;
  /** The layer's digest, named in limit errors. */
  digest?: string;
  /** The image's budget, shared with its other layers: their file bytes together are bounded too. */
  imageBudget?: ImageBudget;
  /** Free space of targetDir's filesystem, asked as files are written; refusing stops the layer. */
  room?: UnpackRoom;
  /** `.wh.` entries: whiteouts (default, an image layer) or plain names (a `docker cp` tar, which has none). */
  whiteouts?: 'apply' | 'literal';
  /** Refuse to replace an existing directory with a non-directory or the reverse (docker cp's noOverwriteDirNonDir). */
  noOverwriteDirNonDir?: boolean;
  /** Every entry owned by this uid:gid instead of the header's (docker cp -a: the container's user). */
  owner?: { uid: number; gid: number };
}

export interface ApplyLayerResult {
  /** sha256 of the uncompressed tar, "sha256:<hex>". */
  diffId: string;
  /** Uncompressed tar size in bytes. */
  size: number;
  /** Number of tar entries. */
  entries: number;
  /** Bytes of regular files written (what the layer limits count). */
  unpackedBytes: number;
}

export const DEFAULT_LIMITS: Required<ApplyLayerLimits> = {
  maxUnpackedBytes: DEFAULT_LAYER_MAX_BYTES,
  maxTotalBytes: DEFAULT_LAYER_MAX_BYTES + 1024 ** 3,
  maxEntryBytes: 8 * 1024 ** 3,
  maxEntries: DEFAULT_LAYER_MAX_ENTRIES,
  maxPathLength: 4095,
};

const WH_PREFIX = '.wh.';
const WH_OPAQUE = '.wh..wh..opq';

function refuse(entry: string, reason: string): never {
  throw new InvalidArgument(`layer entry ${JSON.stringify(entry)}: ${reason}`, { entry, reason });
}

/** Lexically normalise a tar path to components under the root; absolute paths become relative. */
export function normaliseEntryPath(name: string, maxPathLength = DEFAULT_LIMITS.maxPathLength): string[] {
  if (name.includes('\0')) refuse(name, 'name contains NUL');
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (out.length === 0) refuse(name, 'path escapes the layer root');
      out.pop();
      continue;
    }
    if (Buffer.byteLength(c) > 255) refuse(name, 'path component longer than 255 bytes');
    out.push(c);
  }
  if (Buffer.byteLength(out.join('/')) > maxPathLength) refuse(name, `path longer than ${maxPathLength} bytes`);
  return out;
}

async function drain(body: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of body) {
    // discard
  }
}

async function lstatOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await lstat(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/** Ask ahead for the helper programs a layer may need (each is probed once per process). */
export async function probeLayerTools(): Promise<void> {
  await Promise.all([probeSpecialOps(), haveZstd()]);
}

// ---------------------------------------------------------------------------------------------
// extraction

/** An operation queued for the end of the layer, stamped with when it was queued. */
type Deferred<T> = T & { seq: number };

/** Directory fixups in flight at the end of a layer (each a few thread-pool calls). */
const FIXUPS_IN_FLIGHT = 8;

interface Header {
  name: string;
  type?: string | null;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  mtime?: Date;
  linkname?: string | null;
  pax?: Record<string, string> | null;
}

/** A small entry's body, in memory (SMALL_FILE_BYTES); never more than its header's size. */
async function smallBody(name: string, size: number, body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    got += chunk.length;
    if (got > size) refuse(name, `file longer than its header's ${size} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, got);
}

class Extractor {
  private readonly verifiedDirs = new Set<string>();
  /** Paths (relative) this layer has written: whiteouts only hide lower content. */
  private readonly written = new Set<string>();
  /**
   * Deferred operations, each stamped with `seq` when queued. `replacedAt` holds, per relative
   * path, the last `seq` at which whatever was there was removed or superseded by a later entry:
   * an operation is applied only if neither its target nor any parent was replaced after it was
   * queued (what it was for is gone, and the path may now be a symlink out of the root).
   */
  private seq = 0;
  private readonly replacedAt = new Map<string, number>();
  private readonly nodes: Deferred<NodeOp>[] = [];
  private readonly xattrs: Deferred<XattrOp>[] = [];
  private readonly dirFixups: Deferred<{ rel: string; mode: number; mtime: Date | undefined }>[] = [];
  private readonly fifoFixups: Deferred<{ rel: string; mode: number; uid: number; gid: number; mtime: Date | undefined }>[] = [];
  private readonly isRoot = process.getuid?.() === 0;
  /** Regular-file bytes this layer has written or is about to write (the limits count these). */
  unpackedBytes = 0;
  /** When free space is asked again (none without a room to ask). */
  private readonly roomPacer: RoomPacer | undefined;
  /** Small files queued for the writer threads. */
  private readonly smallFiles = new SmallFileWriter();

  constructor(
    private readonly root: string,
    private readonly opts: ApplyLayerOptions,
    private readonly limits: Required<ApplyLayerLimits>,
    /**
     * The root was empty when extraction began (an overlay layer's own directory): then
     * a path exists only if this layer created it, and the lstat before each write can be
     * skipped for paths it has not (a third of the system calls on a many-file layer).
     */
    private readonly startedEmpty = false,
  ) {
    this.roomPacer = opts.room ? new RoomPacer(opts.room, `layer ${this.layerName}`) : undefined;
  }

  /** Whether p may already exist (always true unless the root started empty). */
  private mayExist(rel: string): boolean {
    return !this.startedEmpty || this.written.has(rel) || this.verifiedDirs.has(rel);
  }

  private get layerName(): string {
    return this.opts.digest ?? 'layer';
  }

  /** Count a regular file's bytes before it is written: the layer's and the image's limits. */
  private claim(entry: string, bytes: number): void {
    this.unpackedBytes += bytes;
    if (this.unpackedBytes > this.limits.maxUnpackedBytes) {
      throw new InvalidArgument(
        `layer ${this.layerName}: unpacks to more than the per-layer limit of ${formatBytes(this.limits.maxUnpackedBytes)} (at entry ${JSON.stringify(entry)})`,
        { layer: this.opts.digest, entry, limitBytes: this.limits.maxUnpackedBytes, limit: 'layer' },
      );
    }
    this.opts.imageBudget?.take(bytes, this.layerName);
  }

  /** Before writing more file data: free space asked again when due (RoomPacer). */
  private async roomFor(written: number): Promise<void> {
    if (!this.roomPacer?.due(written)) return;
    await this.smallFiles.flush(); // free space is asked about bytes on the disk, not ones still queued
    await this.roomPacer.check(written);
  }

  private abs(comps: string[]): string {
    return comps.length === 0 ? this.root : path.join(this.root, ...comps);
  }

  /**
   * Make sure every parent of comps is a real directory inside the root (never a
   * symlink), creating missing ones when create is set. Returns false when a
   * parent is missing and create is false.
   */
  private async parents(entry: string, comps: string[], create: boolean): Promise<boolean> {
    for (let i = 1; i < comps.length; i++) {
      const rel = comps.slice(0, i).join('/');
      if (this.verifiedDirs.has(rel)) continue;
      if (this.smallFiles.has(rel)) await this.smallFiles.flush();
      const p = this.abs(comps.slice(0, i));
      const st = await lstatOrUndefined(p);
      if (st === undefined) {
        if (!create) return false;
        await mkdir(p, { mode: 0o755 });
      } else if (st.isSymbolicLink()) {
        refuse(entry, `parent ${JSON.stringify(rel)} is a symlink; refusing to follow it`);
      } else if (!st.isDirectory()) {
        refuse(entry, `parent ${JSON.stringify(rel)} is not a directory`);
      }
      this.verifiedDirs.add(rel);
    }
    return true;
  }

  /** Remove whatever is at p (never following it) unless it is a directory and keepDir is set. */
  private async clear(p: string, rel: string, keepDir: boolean): Promise<Stats | undefined> {
    if (!this.mayExist(rel)) return undefined;
    if (this.smallFiles.has(rel)) await this.smallFiles.flush();
    const st = await lstatOrUndefined(p);
    if (st === undefined) {
      this.replaced(rel); // a node an earlier entry queued here (not made yet) is superseded
      return undefined;
    }
    if (this.opts.noOverwriteDirNonDir && st.isDirectory() !== keepDir) {
      refuse(rel, st.isDirectory() ? 'cannot overwrite a directory with a non-directory' : 'cannot overwrite a non-directory with a directory');
    }
    if (st.isDirectory()) {
      if (keepDir) return st;
      await this.smallFiles.flush(); // files queued inside it are written before it goes
      await rm(p, { recursive: true, force: true });
      this.forgetDirs(rel);
      this.replaced(rel);
      return undefined;
    }
    await unlink(p);
    this.replaced(rel);
    return undefined;
  }

  /** Whatever an earlier entry made at rel (and under it) is gone: its deferred operations with it. */
  private replaced(rel: string): void {
    this.replacedAt.set(rel, ++this.seq);
  }

  private defer<T extends { rel: string }>(list: Deferred<T>[], op: T): void {
    list.push({ ...op, seq: ++this.seq });
  }

  /** Still wanted: neither the target nor a parent of it was replaced after the operation was queued. */
  private live(op: { rel: string; seq: number }): boolean {
    for (let i = 0; i !== -1; ) {
      const slash = op.rel.indexOf('/', i);
      const p = slash === -1 ? op.rel : op.rel.slice(0, slash);
      if ((this.replacedAt.get(p) ?? 0) > op.seq) return false;
      i = slash === -1 ? -1 : slash + 1;
    }
    return true;
  }

  private forgetDirs(rel: string): void {
    for (const d of this.verifiedDirs) if (d === rel || d.startsWith(rel + '/')) this.verifiedDirs.delete(d);
  }

  private mode(h: Header, isDir: boolean): number {
    let m = (h.mode ?? (isDir ? 0o755 : 0o644)) & 0o7777;
    if (!this.opts.allowSetuid) m &= isDir ? ~0o4000 : ~0o6000;
    return m;
  }

  /** Whether a new entry needs a chown (one we create as root is already 0:0: no setgid dirs while extracting). */
  private needsChown(h: Header): boolean {
    return this.isRoot && ((h.uid ?? 0) !== 0 || (h.gid ?? 0) !== 0);
  }

  private async owner(p: string, h: Header): Promise<void> {
    if (this.needsChown(h)) await lchown(p, h.uid ?? 0, h.gid ?? 0);
  }

  private collectXattrs(rel: string, h: Header): void {
    if (this.opts.xattrs === false || !h.pax) return;
    for (const [k, v] of Object.entries(h.pax)) {
      if (!k.startsWith('SCHILY.xattr.')) continue;
      const name = k.slice('SCHILY.xattr.'.length);
      if (!(name.startsWith('user.') || name === 'security.capability')) {
        log.debug('dropping xattr', { entry: rel, name });
        continue;
      }
      if (v.includes('\uFFFD')) {
        // tar-stream decodes PAX values as UTF-8; binary values do not survive that
        log.warn('dropping xattr with a binary value', { entry: rel, name });
        continue;
      }
      this.defer(this.xattrs, { rel, entry: h.name, name, value: Buffer.from(v, 'utf8') });
    }
  }

  async entry(h: Header, body: Readable): Promise<void> {
    if (this.opts.owner) h = { ...h, uid: this.opts.owner.uid, gid: this.opts.owner.gid };
    const type = h.type ?? 'file';
    const comps = normaliseEntryPath(h.name, this.limits.maxPathLength);
    const rel = comps.join('/');
    const base = comps[comps.length - 1];

    // ---- whiteouts
    if (base !== undefined && base.startsWith(WH_PREFIX) && this.opts.whiteouts !== 'literal') {
      await drain(body);
      const dirComps = comps.slice(0, -1);
      if (base === WH_OPAQUE) return this.opaque(h.name, dirComps);
      if (base.startsWith(WH_PREFIX + WH_PREFIX)) return; // other AUFS metadata (.wh..wh.plnk ...)
      const victim = base.slice(WH_PREFIX.length);
      if (victim === '' || victim === '.' || victim === '..') refuse(h.name, 'invalid whiteout name');
      return this.whiteout(h.name, [...dirComps, victim]);
    }

    if (type !== 'file' && type !== 'contiguous-file') await drain(body);
    switch (type) {
      case 'directory':
        return this.directory(h, comps, rel);
      case 'file':
      case 'contiguous-file':
        return this.file(h, comps, rel, body);
      case 'symlink':
        return this.symlink(h, comps, rel);
      case 'link':
        return this.hardlink(h, comps, rel);
      case 'character-device':
      case 'block-device':
        if ((this.opts.devices ?? 'refuse') === 'refuse') refuse(h.name, `${type} entries are not allowed`);
        return;
      case 'fifo': {
        const policy = this.opts.fifos ?? 'allow';
        if (policy === 'refuse') refuse(h.name, 'fifo entries are not allowed');
        if (policy === 'skip') return;
        return this.fifo(h, comps, rel);
      }
      default:
        log.debug('skipping tar entry of unsupported type', { entry: h.name, type });
        return;
    }
  }

  private async directory(h: Header, comps: string[], rel: string): Promise<void> {
    const p = this.abs(comps);
    if (comps.length > 0) {
      await this.parents(h.name, comps, true);
      const kept = await this.clear(p, rel, true);
      if (!kept) await mkdir(p, { mode: 0o700 });
      this.verifiedDirs.add(rel);
      this.written.add(rel);
    }
    await this.owner(p, h);
    this.defer(this.dirFixups, { rel, mode: this.mode(h, true), mtime: h.mtime });
    this.collectXattrs(rel, h);
  }

  private async file(h: Header, comps: string[], rel: string, body: Readable): Promise<void> {
    if (comps.length === 0) refuse(h.name, 'a file cannot replace the layer root');
    const size = h.size ?? 0;
    if (size > this.limits.maxEntryBytes) refuse(h.name, `file of ${size} bytes exceeds the ${this.limits.maxEntryBytes}-byte entry limit`);
    const p = this.abs(comps);
    const before = this.unpackedBytes;
    this.claim(h.name, size);
    await this.parents(h.name, comps, true);
    await this.clear(p, rel, false);
    if (size <= SMALL_FILE_BYTES) {
      await this.roomFor(this.unpackedBytes);
      const data = await smallBody(h.name, size, body);
      const owner = this.needsChown(h);
      await this.smallFiles.add(rel, { path: p, mode: this.mode(h, false), uid: owner ? (h.uid ?? 0) : -1, gid: owner ? (h.gid ?? 0) : -1, mtimeMs: h.mtime ? h.mtime.getTime() : null }, data);
    } else await this.writeLargeFile(p, h, body, before);
    this.written.add(rel);
    this.collectXattrs(rel, h);
  }

  /** `before`: the layer's file bytes before this file, for the free-space checks along the way. */
  private async writeLargeFile(p: string, h: Header, body: Readable, before: number): Promise<void> {
    const fh = await open(p, FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | FS.O_NOFOLLOW, 0o600);
    try {
      let written = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        written += chunk.length;
        if (written > this.limits.maxEntryBytes) refuse(h.name, `file exceeds the ${this.limits.maxEntryBytes}-byte entry limit`);
        if (written > (h.size ?? 0)) refuse(h.name, `file longer than its header's ${h.size ?? 0} bytes`);
        await this.roomFor(before + written);
        let off = 0;
        while (off < chunk.length) off += (await fh.write(chunk, off)).bytesWritten;
      }
      // One at a time: concurrent operations on one FileHandle made close() hang now and
      // then (seen with Node 20 during a pull). chown before chmod: chown clears setuid bits.
      if (this.needsChown(h)) await fh.chown(h.uid ?? 0, h.gid ?? 0);
      await fh.chmod(this.mode(h, false));
      if (h.mtime) await fh.utimes(h.mtime, h.mtime);
    } finally {
      await fh.close();
    }
  }

  private async symlink(h: Header, comps: string[], rel: string): Promise<void> {
    if (comps.length === 0) refuse(h.name, 'a symlink cannot replace the layer root');
    const target = h.linkname ?? '';
    if (target === '' || target.includes('\0')) refuse(h.name, 'symlink with an empty or NUL-containing target');
    if (Buffer.byteLength(target) > this.limits.maxPathLength) refuse(h.name, 'symlink target too long');
    const p = this.abs(comps);
    await this.parents(h.name, comps, true);
    await this.clear(p, rel, false);
    // the target is content (resolved inside the container at run time); it is never followed here
    await symlink(target, p);
    await this.owner(p, h);
    if (h.mtime) await lutimes(p, h.mtime, h.mtime);
    this.written.add(rel);
  }

  private async hardlink(h: Header, comps: string[], rel: string): Promise<void> {
    if (comps.length === 0) refuse(h.name, 'a hard link cannot replace the layer root');
    const linkname = h.linkname ?? '';
    if (linkname === '') refuse(h.name, 'hard link without a target');
    let tcomps: string[];
    try {
      tcomps = normaliseEntryPath(linkname, this.limits.maxPathLength);
    } catch (e) {
      refuse(h.name, `hard link target ${JSON.stringify(linkname)} ${e instanceof NimbusError ? String(e.details?.reason) : 'invalid'}`);
    }
    if (tcomps.length === 0) refuse(h.name, 'hard link to the layer root');
    if (!(await this.parents(h.name, tcomps, false))) refuse(h.name, `hard link target ${JSON.stringify(linkname)} does not exist`);
    const target = this.abs(tcomps);
    if (this.smallFiles.has(tcomps.join('/'))) await this.smallFiles.flush();
    const tst = await lstatOrUndefined(target);
    if (tst === undefined) refuse(h.name, `hard link target ${JSON.stringify(linkname)} does not exist in this layer`);
    if (tst.isDirectory()) refuse(h.name, `hard link target ${JSON.stringify(linkname)} is a directory`);
    const p = this.abs(comps);
    await this.parents(h.name, comps, true);
    if (this.smallFiles.has(rel)) await this.smallFiles.flush();
    const existing = await lstatOrUndefined(p);
    if (existing && existing.ino === tst.ino && existing.dev === tst.dev) return;
    await this.clear(p, rel, false);
    await link(target, p);
    this.written.add(rel);
  }

  private async fifo(h: Header, comps: string[], rel: string): Promise<void> {
    if (comps.length === 0) refuse(h.name, 'a fifo cannot replace the layer root');
    const p = this.abs(comps);
    await this.parents(h.name, comps, true);
    await this.clear(p, rel, false);
    const mode = this.mode(h, false);
    this.defer(this.nodes, { kind: 'fifo', rel, entry: h.name, mode });
    this.defer(this.fifoFixups, { rel, mode, uid: h.uid ?? 0, gid: h.gid ?? 0, mtime: h.mtime });
    this.written.add(rel);
  }

  private async whiteout(entry: string, comps: string[]): Promise<void> {
    await this.smallFiles.flush(); // it may remove a tree with queued files
    const rel = comps.join('/');
    if (this.written.has(rel)) return; // whiteouts hide lower layers only
    const p = this.abs(comps);
    if (this.opts.mode === 'native') {
      if (!(await this.parents(entry, comps, false))) return;
      await this.clear(p, rel, false);
      return;
    }
    await this.parents(entry, comps, true);
    await this.clear(p, rel, false);
    this.defer(this.nodes, { kind: 'whiteout', rel, entry, mode: 0 });
    this.written.add(rel); // a later entry at this path replaces the whiteout (clear() sees it)
  }

  private async opaque(entry: string, dirComps: string[]): Promise<void> {
    await this.smallFiles.flush();
    const dirRel = dirComps.join('/');
    const p = this.abs(dirComps);
    if (dirComps.length > 0) {
      await this.parents(entry, [...dirComps, WH_OPAQUE], true);
      const st = await lstatOrUndefined(p);
      if (st === undefined) await mkdir(p, { mode: 0o755 });
      else if (!st.isDirectory()) refuse(entry, `opaque marker in ${JSON.stringify(dirRel)}, which is not a directory`);
      this.verifiedDirs.add(dirRel);
    }
    if (this.opts.mode === 'native') {
      for (const name of await readdir(p)) {
        const rel = dirRel ? `${dirRel}/${name}` : name;
        if (this.written.has(rel)) continue;
        await rm(path.join(p, name), { recursive: true, force: true });
        this.forgetDirs(rel);
        this.replaced(rel);
      }
      return;
    }
    this.defer(this.xattrs, { rel: dirRel, entry, name: 'trusted.overlay.opaque', value: Buffer.from('y') });
  }

  /** Every queued small file written; the first error a writer thread met is thrown. */
  flushFiles(): Promise<void> {
    return this.smallFiles.flush();
  }

  /** Queued files written or failed: nothing is still writing into the tree (never throws). */
  settleFiles(): Promise<void> {
    return this.smallFiles.settle();
  }

  /** Deferred work: device nodes and xattrs in one batch, then fifo and directory metadata. */
  async finish(): Promise<void> {
    await this.smallFiles.flush();
    const live = <T extends { rel: string; seq: number }>(ops: T[]) => ops.filter((o) => this.live(o));
    await applySpecialOps(this.root, live(this.nodes), live(this.xattrs));
    for (const f of live(this.fifoFixups)) {
      await this.withMade(f.rel, 'fifo', async (fh) => {
        if (this.isRoot) await fh.chown(f.uid, f.gid);
        await fh.chmod(f.mode);
        if (f.mtime) await fh.utimes(f.mtime, f.mtime);
      });
    }
    // Directories last, as creating their children changed their mtimes; the deepest first, so a
    // parent's mode cannot lock its children out (one depth at a time, its directories together).
    const last = new Map(live(this.dirFixups).map((d) => [d.rel, d])); // a directory named twice: its last entry
    const byDepth = new Map<number, typeof this.dirFixups>();
    for (const d of last.values()) {
      const depth = d.rel === '' ? 0 : d.rel.split('/').length;
      const group = byDepth.get(depth);
      if (group) group.push(d);
      else byDepth.set(depth, [d]);
    }
    for (const depth of [...byDepth.keys()].sort((a, b) => b - a)) {
      await eachLimited(byDepth.get(depth)!, FIXUPS_IN_FLIGHT, (d) =>
        this.withMade(d.rel, 'directory', async (fh) => {
          await fh.chmod(d.mode);
          if (d.mtime) await fh.utimes(d.mtime, d.mtime);
        }),
      );
    }
  }

  /**
   * fn on a descriptor of what this layer made at rel: opened without following a symlink at the
   * end, and checked to be the path asked for (so no parent was a symlink either) and of its kind.
   */
  private async withMade(rel: string, kind: 'directory' | 'fifo', fn: (fh: FileHandle) => Promise<void>): Promise<void> {
    const p = this.abs(rel === '' ? [] : rel.split('/'));
    let fh: FileHandle;
    try {
      fh = await open(p, FS.O_RDONLY | FS.O_NOFOLLOW | (kind === 'directory' ? FS.O_DIRECTORY : FS.O_NONBLOCK));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || code === 'ENOTDIR') refuse(rel, `is no longer a ${kind} of this layer; refusing to follow it`);
      throw e;
    }
    try {
      if ((await readlink(`/proc/self/fd/${fh.fd}`)) !== p) refuse(rel, 'a parent is not a directory of this layer; refusing to follow it');
      if (kind === 'fifo' && !(await fh.stat()).isFIFO()) refuse(rel, 'is no longer a fifo of this layer');
      await fn(fh);
    } finally {
      await fh.close();
    }
  }
}

/**
 * Apply one layer to targetDir (see the file comment). On failure the error is
 * thrown and partial content may remain inside targetDir (the caller removes the
 * snapshot); nothing is ever written outside it.
 */
export async function applyLayer(
  targetDir: string,
  source: AsyncIterable<Uint8Array> | Readable,
  opts: ApplyLayerOptions,
): Promise<ApplyLayerResult> {
  const compression = layerCompression(opts.mediaType);
  if (opts.mode !== 'overlay' && opts.mode !== 'native') {
    throw new InvalidArgument(`unknown apply mode ${JSON.stringify(opts.mode)}`);
  }
  const given = opts.limits ?? {};
  const maxUnpackedBytes = given.maxUnpackedBytes ?? DEFAULT_LIMITS.maxUnpackedBytes;
  const limits: Required<ApplyLayerLimits> = {
    maxUnpackedBytes,
    maxTotalBytes: given.maxTotalBytes ?? maxUnpackedBytes + 1024 ** 3,
    maxEntryBytes: given.maxEntryBytes ?? DEFAULT_LIMITS.maxEntryBytes,
    maxEntries: given.maxEntries ?? DEFAULT_LIMITS.maxEntries,
    maxPathLength: given.maxPathLength ?? DEFAULT_LIMITS.maxPathLength,
  };
  await checkDecompressor(compression, opts.mediaType);
  const root = await realpath(targetDir);
  const rootSt = await lstat(root);
  if (!rootSt.isDirectory()) throw new InvalidArgument(`apply target ${targetDir} is not a directory`);
  const startedEmpty = opts.mode === 'overlay' && (await readdir(root)).length === 0;
  // No await from here until the entries are iterated: tar-stream emits entries as soon as the
  // pipeline feeds it, and one emitted before the iterator is attached is lost (the layer hangs).

  const input = source instanceof Readable ? source : Readable.from(source, { objectMode: false });
  const decompress = decompressor(compression, { chunkSize: GUNZIP_CHUNK_BYTES });

  let size = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > limits.maxTotalBytes) {
        cb(new InvalidArgument(`layer is larger than the ${limits.maxTotalBytes}-byte limit (uncompressed)`));
        return;
      }
      cb(null, chunk);
    },
  });
  // the diff id, hashed off the main thread once past a megabyte (core/stream-digest.ts)
  const hash = digestPass();
  const extract = tar.extract();
  const streams = [input, ...decompress.stages, counter, hash, extract] as unknown as NodeJS.ReadWriteStream[];
  const feeding = pipeline(streams);
  let feedError: unknown;
  feeding.catch((e: unknown) => {
    feedError = e;
  });

  const ex = new Extractor(root, opts, limits, startedEmpty);
  let entries = 0;
  let diffId: string;
  try {
    try {
      for await (const item of extract) {
        const entry = item as unknown as Readable & { header: Header };
        entries++;
        const h = entry.header as Header;
        if (entries > limits.maxEntries) refuse(h.name, `more than ${limits.maxEntries} entries in layer ${opts.digest ?? ''}`.trimEnd());
        await ex.entry(h, entry);
      }
      await ex.flushFiles(); // a writer thread's error is mapped below, as the extractor's own are
    } catch (e) {
      // a decompression or size-limit error surfaces as the iteration error or as feedError
      if (feedError instanceof NimbusError) throw feedError;
      if (e instanceof NimbusError) throw e;
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') {
        // never the host path the errno message carries
        throw new ResourceExhausted(`no space left on the image filesystem while unpacking layer ${opts.digest ?? ''}`.trimEnd(), { layer: opts.digest }, { cause: e });
      }
      throw new InvalidArgument(`layer is not a valid ${compression === 'none' ? '' : compression + ' '}tar stream: ${(e as Error).message}`, undefined, {
        cause: e,
      });
    }
    try {
      await feeding;
    } catch (e) {
      if (e instanceof NimbusError) throw e;
      throw new InvalidArgument(`layer stream failed: ${(e as Error).message}`, undefined, { cause: e });
    }
    const digested = hash.digest(); // the thread's last batches, beside the directories' fixups
    digested.catch(() => undefined); // awaited below; a failed finish() leaves it unread
    await ex.finish();
    diffId = await digested;
  } finally {
    await ex.settleFiles(); // the caller removes a failed layer's directory: no write may still be under way
    decompress.kill();
    if (!input.destroyed) input.destroy();
  }
  return { diffId, size, entries, unpackedBytes: ex.unpackedBytes };
}
