import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, statfs, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { hasCode } from '../../core/errors.js';
import { mountsUnder, unmountAll } from '../snapshots/mount.js';
import { DiskSpace, statfsProbe, type SpaceProbe } from '../content/disk-space.js';
import { applyLayer, normaliseEntryPath, type ApplyLayerOptions } from './apply-layer.js';
import { liveFileWriters, setFileWriterIdleExit } from './file-writer.js';
import { ImageBudget } from './unpack-limits.js';

const TAR = 'application/vnd.oci.image.layer.v1.tar';
const TGZ = 'application/vnd.oci.image.layer.v1.tar+gzip';
const TZST = 'application/vnd.oci.image.layer.v1.tar+zstd';

interface E {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  mtime?: Date;
  pax?: Record<string, string>;
  devmajor?: number;
  devminor?: number;
}

async function makeTar(entries: E[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    const { content, ...header } = e;
    const h = { mtime: new Date(1_700_000_000_000), ...header };
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (content === undefined) pack.entry(h, cb);
      else pack.entry(h, Buffer.from(content), cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const exists = (p: string) =>
  lstat(p).then(
    () => true,
    () => false,
  );

let base: string;
let n = 0;
before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-apply-'));
});
after(async () => {
  await unmountAll(base).catch(() => undefined);
  const left = await mountsUnder(base);
  await rm(base, { recursive: true, force: true });
  assert.deepEqual(left, [], 'mounts left behind');
});

async function freshDir(): Promise<string> {
  const d = path.join(base, `t${n++}`);
  await mkdir(d);
  return d;
}

async function apply(dir: string, entries: E[], opts: Partial<ApplyLayerOptions> = {}) {
  const buf = await makeTar(entries);
  const r = await applyLayer(dir, Readable.from([buf]), { mediaType: TAR, mode: 'native', ...opts });
  return { ...r, buf };
}

async function refused(entries: E[], match: RegExp, opts: Partial<ApplyLayerOptions> = {}, prepare?: (d: string) => Promise<void>) {
  const outer = await freshDir();
  const dir = path.join(outer, 'root');
  const outside = path.join(outer, 'outside');
  await mkdir(dir);
  await mkdir(outside);
  await writeFile(path.join(outside, 'file'), 'original');
  if (prepare) await prepare(dir);
  await assert.rejects(apply(dir, entries, opts), (e: unknown) => {
    assert.ok(hasCode(e, 'InvalidArgument'), `expected InvalidArgument, got ${String(e)}`);
    assert.match((e as Error).message, match);
    return true;
  });
  assert.deepEqual((await readdir(outer)).sort(), ['outside', 'root'], 'nothing created next to the root');
  assert.deepEqual(await readdir(outside), ['file'], 'nothing created outside');
  assert.equal(await readFile(path.join(outside, 'file'), 'utf8'), 'original');
  return { dir, outside };
}

describe('applyLayer: content', () => {
  it('overlay mode into an empty directory (no lstat before writes): one chunk, uncompressed, paths written twice replaced', async () => {
    // Regression: an await between starting the tar pipeline and iterating its entries lost
    // the first entries of a small uncompressed layer, and the layer never finished.
    for (let i = 0; i < 20; i++) {
      const dir = await freshDir();
      const r = await apply(dir, [
        { name: 'a/', type: 'directory', mode: 0o755 },
        { name: 'a/f', content: 'first' },
        { name: 'a/f', content: 'second', uid: 7, gid: 8 },
        { name: 'a/l', type: 'symlink', linkname: 'f' },
        { name: 'a/l', content: 'now a file' },
        { name: 'b/c/d', content: 'deep', mode: 0o600 },
      ], { mode: 'overlay' });
      assert.equal(r.entries, 6);
      assert.equal(await readFile(path.join(dir, 'a/f'), 'utf8'), 'second');
      const st = await lstat(path.join(dir, 'a/f'));
      assert.deepEqual([st.uid, st.gid], [7, 8]);
      assert.equal(await readFile(path.join(dir, 'a/l'), 'utf8'), 'now a file');
      assert.equal((await stat(path.join(dir, 'b/c/d'))).mode & 0o777, 0o600);
    }
  });

  it('writes files, dirs, symlinks, hard links with modes, owners and mtimes; diffId is the tar sha256', async () => {
    const dir = await freshDir();
    const mtime = new Date('2020-01-02T03:04:05Z');
    const r = await apply(dir, [
      { name: 'etc/', type: 'directory', mode: 0o750, uid: 10, gid: 20, mtime },
      { name: 'etc/conf', content: 'hello', mode: 0o640, uid: 1000, gid: 1001, mtime },
      { name: 'bin/tool', content: '#!/bin/sh\n', mode: 0o755 },
      { name: 'bin/alias', type: 'link', linkname: 'bin/tool' },
      { name: 'lib', type: 'symlink', linkname: '/usr/lib' },
      { name: './rel', type: 'symlink', linkname: '../etc/conf' },
      { name: '/abs/file', content: 'abs' },
    ]);
    assert.equal(r.diffId, sha(r.buf));
    assert.equal(r.size, r.buf.length);
    assert.equal(r.entries, 7);
    const st = await stat(path.join(dir, 'etc/conf'));
    assert.equal(st.mode & 0o7777, 0o640);
    assert.equal(st.uid, 1000);
    assert.equal(st.gid, 1001);
    assert.equal(st.mtimeMs, mtime.getTime());
    const d = await stat(path.join(dir, 'etc'));
    assert.equal(d.mode & 0o7777, 0o750);
    assert.equal(d.uid, 10);
    assert.equal(d.mtimeMs, mtime.getTime(), 'directory mtime set after its children');
    assert.equal(await readFile(path.join(dir, 'etc/conf'), 'utf8'), 'hello');
    assert.equal((await stat(path.join(dir, 'bin/alias'))).ino, (await stat(path.join(dir, 'bin/tool'))).ino);
    assert.equal(await readlink(path.join(dir, 'lib')), '/usr/lib');
    assert.equal(await readlink(path.join(dir, 'rel')), '../etc/conf');
    assert.equal(await readFile(path.join(dir, 'abs/file'), 'utf8'), 'abs', 'absolute paths are made relative');
  });

  it('gzip input gives the same diffId as the uncompressed tar', async () => {
    const buf = await makeTar([{ name: 'a', content: 'x'.repeat(100_000) }, { name: 'b/c', content: 'c' }]);
    const dir = await freshDir();
    const gz = gzipSync(buf);
    // feed it in small chunks through an async iterable
    async function* chunks() {
      for (let i = 0; i < gz.length; i += 1000) yield gz.subarray(i, i + 1000);
    }
    const r = await applyLayer(dir, chunks(), { mediaType: TGZ, mode: 'native' });
    assert.equal(r.diffId, sha(buf));
    assert.equal(r.size, buf.length);
    assert.equal(await readFile(path.join(dir, 'b/c'), 'utf8'), 'c');
    assert.equal((await readFile(path.join(dir, 'a'), 'utf8')).length, 100_000);
  });

  it('a layer of megabytes (its diff id hashed on the digest thread) has the diff id of its tar', async () => {
    const big = Buffer.alloc(3 * 1024 * 1024 + 5);
    for (let i = 0; i < big.length; i += 512) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    const buf = await makeTar([{ name: 'big', content: big }, { name: 'small', content: 's' }]);
    const dir = await freshDir();
    const gz = gzipSync(buf);
    const r = await applyLayer(dir, Readable.from([gz.subarray(0, 100_000), gz.subarray(100_000)]), { mediaType: TGZ, mode: 'native' });
    assert.equal(r.diffId, sha(buf));
    assert.equal(r.size, buf.length);
    assert.deepEqual(await readFile(path.join(dir, 'big')), big);
  });

  it('zstd input works through the zstd program', async (t) => {
    if (spawnSync('zstd', ['--version']).status !== 0) {
      t.diagnostic('zstd not installed: checking the refusal instead');
      await assert.rejects(
        applyLayer(await freshDir(), Readable.from([Buffer.alloc(10)]), { mediaType: TZST, mode: 'native' }),
        /zstd layers need the zstd program/,
      );
      return;
    }
    const buf = await makeTar([{ name: 'z', content: 'zstd!' }]);
    const zst = spawnSync('zstd', ['-c', '-q'], { input: buf }).stdout;
    const dir = await freshDir();
    const r = await applyLayer(dir, Readable.from([zst]), { mediaType: TZST, mode: 'native' });
    assert.equal(r.diffId, sha(buf));
    assert.equal(await readFile(path.join(dir, 'z'), 'utf8'), 'zstd!');
    await assert.rejects(
      applyLayer(await freshDir(), Readable.from([Buffer.from('not zstd at all')]), { mediaType: TZST, mode: 'native' }),
      (e: unknown) => hasCode(e, 'InvalidArgument'),
    );
  });

  it('refuses unknown media types, garbage and truncated streams', async () => {
    const dir = await freshDir();
    await assert.rejects(
      applyLayer(dir, Readable.from([Buffer.alloc(1)]), { mediaType: 'text/plain', mode: 'native' }),
      (e: unknown) => hasCode(e, 'InvalidArgument'),
    );
    await assert.rejects(
      applyLayer(dir, Readable.from([Buffer.from('x'.repeat(2000))]), { mediaType: TAR, mode: 'native' }),
      (e: unknown) => hasCode(e, 'InvalidArgument'),
    );
    const gz = gzipSync(await makeTar([{ name: 'a', content: 'y'.repeat(50_000) }]));
    await assert.rejects(
      applyLayer(dir, Readable.from([gz.subarray(0, gz.length / 2)]), { mediaType: TGZ, mode: 'native' }),
      (e: unknown) => hasCode(e, 'InvalidArgument'),
    );
  });

  it('replaces existing entries without following them', async () => {
    const outer = await freshDir();
    const dir = path.join(outer, 'root');
    const outside = path.join(outer, 'outside');
    await mkdir(dir);
    await mkdir(outside);
    await writeFile(path.join(outside, 'file'), 'original');
    await apply(dir, [{ name: 'x', type: 'symlink', linkname: path.join(outside, 'file') }]);
    await apply(dir, [{ name: 'x', content: 'new content' }]);
    assert.equal(await readFile(path.join(outside, 'file'), 'utf8'), 'original');
    assert.ok((await lstat(path.join(dir, 'x'))).isFile());
    // a directory replaced by a file, and a file by a directory
    await apply(dir, [{ name: 'd/f', content: '1' }]);
    await apply(dir, [{ name: 'd', content: 'now a file' }, { name: 'x', type: 'directory' }]);
    assert.ok((await lstat(path.join(dir, 'd'))).isFile());
    assert.ok((await lstat(path.join(dir, 'x'))).isDirectory());
  });
});

describe('applyLayer: small files written by the writer threads', () => {
  // Small files are queued and created by worker threads (file-writer.ts); anything touching a
  // queued path must wait for it. Each case puts the touching entry right behind many queued files.
  const many = (dir: string, n = 300): E[] => Array.from({ length: n }, (_, i) => ({ name: `${dir}/f${i}`, content: `content ${i}`.repeat(1 + (i % 50)) }));

  it('writes a many-file layer with every byte, mode, owner and mtime, in both modes', async () => {
    for (const mode of ['overlay', 'native'] as const) {
      const dir = await freshDir();
      const mtime = new Date('2021-05-06T07:08:09Z');
      const entries: E[] = Array.from({ length: 2000 }, (_, i) => ({ name: `d${Math.floor(i / 100)}/f${i}`, content: Buffer.alloc(100 + (i % 4000), i % 251), mode: 0o600 | (i % 2 ? 0o044 : 0), uid: i % 3, gid: i % 5, mtime }));
      const r = await apply(dir, entries, { mode });
      assert.equal(r.entries, 2000);
      for (const i of [0, 1, 2, 999, 1998, 1999]) {
        const p = path.join(dir, `d${Math.floor(i / 100)}/f${i}`);
        assert.deepEqual(await readFile(p), Buffer.alloc(100 + (i % 4000), i % 251), `bytes of f${i}`);
        const st = await lstat(p);
        assert.equal(st.mode & 0o7777, 0o600 | (i % 2 ? 0o044 : 0), `mode of f${i}`);
        assert.deepEqual([st.uid, st.gid], [i % 3, i % 5], `owner of f${i}`);
        assert.equal(st.mtimeMs, mtime.getTime(), `mtime of f${i}`);
      }
      assert.equal((await readdir(path.join(dir, 'd19'))).length, 100);
    }
  });

  it('an entry at a queued path, under it, linking to it or removing its directory waits for it', async () => {
    const dir = await freshDir();
    await apply(dir, [
      ...many('a'),
      { name: 'a/f299', content: 'replaced' }, // the same path again, right behind it
      ...many('b'),
      { name: 'b/f299', type: 'symlink', linkname: 'f0' },
      ...many('c'),
      { name: 'c/hard', type: 'link', linkname: 'c/f299' },
      ...many('d'),
      { name: 'd/f299', type: 'directory' },
      { name: 'd/f299/inside', content: 'in a directory now' },
    ], { mode: 'overlay' });
    assert.equal(await readFile(path.join(dir, 'a/f299'), 'utf8'), 'replaced');
    assert.equal(await readlink(path.join(dir, 'b/f299')), 'f0');
    assert.equal((await lstat(path.join(dir, 'c/hard'))).ino, (await lstat(path.join(dir, 'c/f299'))).ino);
    assert.equal(await readFile(path.join(dir, 'd/f299/inside'), 'utf8'), 'in a directory now');
    assert.equal(await readFile(path.join(dir, 'd/f298'), 'utf8'), 'content 298'.repeat(1 + (298 % 50)));

    // a queued file used as a parent is refused as before
    await refused([...many('e'), { name: 'e/f299/x', content: 'x' }], /parent "e\/f299" is not a directory/);
    // a directory replaced by a file while its files are queued; a whiteout and an opaque marker over queued files
    const dir2 = await freshDir();
    await apply(dir2, [...many('g'), { name: 'g', content: 'a file now' }, ...many('h'), { name: '.wh.h', content: '' }, ...many('o'), { name: 'o/.wh..wh..opq', content: '' }]);
    assert.equal(await readFile(path.join(dir2, 'g'), 'utf8'), 'a file now');
    // h was never an entry of its own (its files' parent, made on the way): the whiteout removes it, after its files were written
    assert.equal(await exists(path.join(dir2, 'h')), false, 'the whiteout removed the whole tree, written first');
    assert.equal((await readdir(path.join(dir2, 'o'))).length, 300, 'nor does an opaque marker');
  });

  it('idle writer threads end, and the next layer starts new ones', async () => {
    setFileWriterIdleExit(150);
    try {
      await apply(await freshDir(), many('x', 100));
      assert.ok(liveFileWriters() > 0);
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(liveFileWriters(), 0, 'idle threads ended');
      const dir = await freshDir();
      await apply(dir, many('y', 100));
      assert.equal((await readdir(path.join(dir, 'y'))).length, 100);
    } finally {
      setFileWriterIdleExit(60_000);
    }
  });

  it("a writer thread's error fails the layer, typed, and nothing is written after it returns", async (t) => {
    const dir = await freshDir();
    // a name the thread cannot create: the parent is made immutable after the extractor checked it
    await mkdir(path.join(dir, 'locked'));
    const chattr = spawnSync('chattr', ['+i', path.join(dir, 'locked')]);
    if (chattr.status !== 0) {
      t.skip(`chattr +i failed (${chattr.stderr}): nothing here provokes the error`);
      return;
    }
    try {
      await assert.rejects(apply(dir, [...many('free'), ...many('locked')]), (e: unknown) => {
        assert.ok(hasCode(e, 'InvalidArgument'), String(e));
        assert.match((e as Error).message, /EPERM|operation not permitted/i);
        return true;
      });
      const before = (await readdir(path.join(dir, 'free'))).length;
      await new Promise((r) => setTimeout(r, 200));
      assert.equal((await readdir(path.join(dir, 'free'))).length, before, 'nothing written once the layer failed');
      assert.deepEqual(await readdir(path.join(dir, 'locked')), []);
    } finally {
      spawnSync('chattr', ['-i', path.join(dir, 'locked')]);
    }
  });
});

describe('applyLayer: whiteouts', () => {
  const lowerLayer: E[] = [
    { name: 'gone', content: 'g' },
    { name: 'keep', content: 'k' },
    { name: 'dir/', type: 'directory' },
    { name: 'dir/sub/deep', content: 'd' },
    { name: 'opq/', type: 'directory', mode: 0o755 },
    { name: 'opq/old1', content: '1' },
    { name: 'opq/old2/x', content: '2' },
  ];
  const upperLayer: E[] = [
    { name: '.wh.gone', content: '' },
    { name: 'dir/.wh.sub', content: '' },
    { name: 'opq/', type: 'directory', mode: 0o755 },
    { name: 'opq/.wh..wh..opq', content: '' },
    { name: 'opq/new', content: 'n' },
    { name: 'fresh/.wh.nothing-there', content: '' },
  ];

  it('native mode deletes whited-out paths and empties opaque directories', async () => {
    const dir = await freshDir();
    await apply(dir, lowerLayer);
    await apply(dir, upperLayer);
    // a whiteout under a directory that does not exist has nothing to delete and creates nothing
    assert.deepEqual((await readdir(dir)).sort(), ['dir', 'keep', 'opq']);
    assert.deepEqual(await readdir(path.join(dir, 'dir')), []);
    assert.deepEqual(await readdir(path.join(dir, 'opq')), ['new']);
  });

  it('a whiteout does not hide an entry of its own layer', async () => {
    const dir = await freshDir();
    await apply(dir, [{ name: 'same', content: 's' }, { name: '.wh.same', content: '' }]);
    assert.equal(await readFile(path.join(dir, 'same'), 'utf8'), 's');
  });

  it('overlay mode makes 0:0 char devices and opaque xattrs that a real overlay mount honours', async () => {
    const outer = await freshDir();
    const [lower, upper, work, merged] = ['lower', 'upper', 'work', 'merged'].map((d) => path.join(outer, d)) as [
      string,
      string,
      string,
      string,
    ];
    for (const d of [lower, upper, work, merged]) await mkdir(d);
    await apply(lower, lowerLayer, { mode: 'overlay' });
    await apply(upper, upperLayer, { mode: 'overlay' });
    const wh = await lstat(path.join(upper, 'gone'));
    assert.ok(wh.isCharacterDevice());
    assert.equal(wh.rdev, 0);
    assert.equal(wh.uid, 0);
    assert.ok((await lstat(path.join(upper, 'dir/sub'))).isCharacterDevice());
    const m = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, merged]);
    assert.equal(m.status, 0, m.stderr.toString());
    try {
      assert.deepEqual((await readdir(merged)).sort(), ['dir', 'fresh', 'keep', 'opq']);
      assert.deepEqual(await readdir(path.join(merged, 'dir')), []);
      assert.deepEqual(await readdir(path.join(merged, 'opq')), ['new'], 'opaque dir hides lower content');
      assert.equal(await readFile(path.join(merged, 'keep'), 'utf8'), 'k');
      assert.equal(await exists(path.join(merged, 'gone')), false);
    } finally {
      await unmountAll(merged);
    }
    assert.deepEqual(await mountsUnder(outer), []);
  });
});

describe('applyLayer: hostile layers', () => {
  it('refuses paths escaping the root', async () => {
    await refused([{ name: '../evil', content: 'x' }], /"\.\.\/evil".*escapes/);
    await refused([{ name: 'a/../../evil', content: 'x' }], /"a\/\.\.\/\.\.\/evil"/);
    await refused([{ name: 'ok', content: 'x' }, { name: '../outside/file', content: 'pwned' }], /escapes/);
  });

  it('never follows a symlink already in the tree', async () => {
    await refused(
      [
        { name: 'a', type: 'symlink', linkname: '/will-be-replaced' },
        { name: 'a/passwd', content: 'pwned' },
      ],
      /"a\/passwd".*symlink/,
      {},
    );
    // a symlink to the real outside dir, via a relative target
    await refused(
      [
        { name: 'esc', type: 'symlink', linkname: '../outside' },
        { name: 'esc/file', content: 'pwned' },
      ],
      /"esc\/file".*symlink/,
    );
    // a symlink planted by a previous layer
    await refused([{ name: 'p/x', content: 'pwned' }], /"p\/x".*symlink/, {}, async (d) => {
      await apply(d, [{ name: 'p', type: 'symlink', linkname: path.join(d, '..', 'outside') }]);
    });
  });

  it('refuses hard links that leave the root or go through symlinks', async () => {
    await refused([{ name: 'h', type: 'link', linkname: '../outside/file' }], /"h".*escapes/);
    await refused([{ name: 'h', type: 'link', linkname: '/etc/passwd' }], /"h".*does not exist/);
    await refused(
      [
        { name: 's', type: 'symlink', linkname: '../outside' },
        { name: 'h', type: 'link', linkname: 's/file' },
      ],
      /"h".*symlink/,
    );
    await refused([{ name: 'd/', type: 'directory' }, { name: 'h', type: 'link', linkname: 'd' }], /"h".*directory/);
  });

  it('refuses devices by default, allows fifos, honours the options', async () => {
    await refused([{ name: 'dev/sda', type: 'block-device', devmajor: 8, devminor: 0 }], /"dev\/sda".*block-device/);
    await refused([{ name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3 }], /"dev\/null"/);
    await refused([{ name: 'wh', type: 'character-device', devmajor: 0, devminor: 0 }], /"wh"/, { mode: 'overlay' });
    await refused([{ name: 'p', type: 'fifo' }], /"p".*fifo/, { fifos: 'refuse' });
    const dir = await freshDir();
    await apply(dir, [{ name: 'dev/mem', type: 'character-device', devmajor: 1, devminor: 1 }, { name: 'pipe', type: 'fifo', mode: 0o620, uid: 7 }], {
      devices: 'skip',
    });
    assert.equal(await exists(path.join(dir, 'dev/mem')), false);
    const f = await lstat(path.join(dir, 'pipe'));
    assert.ok(f.isFIFO());
    assert.equal(f.mode & 0o777, 0o620);
    assert.equal(f.uid, 7);
  });

  it('strips setuid/setgid unless allowed', async () => {
    const dir = await freshDir();
    await apply(dir, [
      { name: 'su', content: 'x', mode: 0o4755 },
      { name: 'sg', content: 'x', mode: 0o2755 },
      { name: 'shared/', type: 'directory', mode: 0o2775 },
    ]);
    assert.equal((await stat(path.join(dir, 'su'))).mode & 0o7777, 0o755);
    assert.equal((await stat(path.join(dir, 'sg'))).mode & 0o7777, 0o755);
    assert.equal((await stat(path.join(dir, 'shared'))).mode & 0o7777, 0o2775, 'setgid directories are kept');
    const dir2 = await freshDir();
    await apply(dir2, [{ name: 'su', content: 'x', mode: 0o4755 }], { allowSetuid: true });
    assert.equal((await stat(path.join(dir2, 'su'))).mode & 0o7777, 0o4755);
  });

  it('enforces entry size, total size and entry count limits', async () => {
    await refused([{ name: 'big', content: 'x'.repeat(2000) }], /"big".*entry limit/, { limits: { maxEntryBytes: 1000 } });
    await assert.rejects(
      apply(await freshDir(), [{ name: 'a', content: 'x'.repeat(5000) }, { name: 'b', content: 'y'.repeat(5000) }], {
        limits: { maxTotalBytes: 8000 },
      }),
      /larger than the 8000-byte limit/,
    );
    await refused(
      Array.from({ length: 5 }, (_, i) => ({ name: `f${i}`, content: '' })),
      /"f3".*more than 3 entries/,
      { limits: { maxEntries: 3 } },
    );
  });

  it('a gzip bomb is stopped by the total size limit', async () => {
    const buf = await makeTar([{ name: 'zeros', content: Buffer.alloc(20 << 20) }]);
    const gz = gzipSync(buf);
    assert.ok(gz.length < 100_000);
    await assert.rejects(
      applyLayer(await freshDir(), Readable.from([gz]), { mediaType: TGZ, mode: 'native', limits: { maxTotalBytes: 1 << 20 } }),
      (e: unknown) => hasCode(e, 'InvalidArgument') && /limit/.test(String(e)),
    );
  });

  it('refuses NUL in names, overlong paths and components', async () => {
    await refused([{ name: 'x', content: 'x', pax: { path: 'nul\0name' } }], /NUL/);
    await refused([{ name: `${'d/'.repeat(2100)}f`, content: 'x' }], /longer than 4095/);
    await refused([{ name: `${'c'.repeat(256)}`, content: 'x' }], /longer than 255/);
    await refused([{ name: 's', type: 'symlink', linkname: '' }], /"s".*empty/);
    assert.deepEqual(normaliseEntryPath('/a/./b//c/../d'), ['a', 'b', 'd']);
    assert.throws(() => normaliseEntryPath('a/../..'), /escapes/);
  });

  /** getfattr's dump of p's xattrs (every namespace; attr is installed by bootstrap). */
  function xattrDump(p: string): string {
    const g = spawnSync('getfattr', ['-h', '-d', '-m', '-', p]);
    assert.equal(g.status, 0, `getfattr: ${g.stderr.toString()}`);
    return g.stdout.toString();
  }

  for (const mode of ['overlay', 'native'] as const) {
    it(`${mode}: what an entry queued for the end of the layer is dropped when a later entry replaces its path, never applied through the symlink that replaced it`, async () => {
      const outer = await freshDir();
      const dir = path.join(outer, 'root');
      const outside = path.join(outer, 'outside');
      await mkdir(dir);
      await mkdir(outside, { mode: 0o700 });
      await writeFile(path.join(outside, 'file'), 'original', { mode: 0o600 });
      const then = new Date(1_600_000_000_000);
      await utimes(outside, then, then);
      const before = { dir: await stat(outside), file: await stat(path.join(outside, 'file')), xattrs: xattrDump(path.join(outside, 'file')) };
      await apply(
        dir,
        [
          { name: 'd/', type: 'directory', mode: 0o777, mtime: new Date(0) }, // its mode and mtime are set at the end
          { name: 'a/', type: 'directory' },
          { name: 'a/file', content: 'inner', pax: { 'SCHILY.xattr.user.pwned': 'yes' } }, // its xattr too
          { name: 'a/p', type: 'fifo', mode: 0o666 }, // made at the end
          ...(mode === 'overlay' ? [{ name: 'a/.wh.gone', content: '' }] : []), // a whiteout node, made at the end
          { name: 'd', type: 'symlink', linkname: outside },
          { name: 'a', type: 'symlink', linkname: outside },
        ],
        { mode },
      );
      assert.equal(await readlink(path.join(dir, 'd')), outside);
      assert.equal(await readlink(path.join(dir, 'a')), outside);
      const after = await stat(outside);
      assert.equal(after.mode & 0o7777, 0o700, 'the directory the symlink names keeps its mode');
      assert.equal(after.mtimeMs, before.dir.mtimeMs, 'and its mtime');
      assert.deepEqual(await readdir(outside), ['file'], 'no fifo or whiteout made outside');
      assert.equal((await stat(path.join(outside, 'file'))).mode & 0o7777, before.file.mode & 0o7777);
      assert.equal(xattrDump(path.join(outside, 'file')), before.xattrs, 'no xattr set outside');
      assert.doesNotMatch(xattrDump(path.join(outside, 'file')), /pwned/);
    });
  }

  it('a path written again takes its last entry: a fifo or a whiteout superseded by a file, a directory named twice', async () => {
    const dir = await freshDir();
    await apply(
      dir,
      [
        { name: 'p', type: 'fifo' },
        { name: 'p', content: 'file now' },
        { name: '.wh.x', content: '' },
        { name: 'x', content: 'x is a file' },
        { name: 'd/', type: 'directory', mode: 0o700 },
        { name: 'd/', type: 'directory', mode: 0o751 },
      ],
      { mode: 'overlay' },
    );
    assert.equal(await readFile(path.join(dir, 'p'), 'utf8'), 'file now');
    assert.equal(await readFile(path.join(dir, 'x'), 'utf8'), 'x is a file');
    assert.equal((await stat(path.join(dir, 'd'))).mode & 0o7777, 0o751);
  });

  it('drops trusted.* xattrs from layers (overlay metadata cannot be injected)', async () => {
    const dir = await freshDir();
    await apply(
      dir,
      [
        { name: 'f', content: 'x', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc', 'SCHILY.xattr.user.note': 'hi' } },
      ],
      { mode: 'overlay' },
    );
    const py = spawnSync('python3', [
      '-c',
      'import os,sys; print(" ".join(sorted(os.listxattr(sys.argv[1], follow_symlinks=False))))',
      path.join(dir, 'f'),
    ]);
    if (py.status === 0) assert.equal(py.stdout.toString().trim(), 'user.note');
    const g = spawnSync('getfattr', ['-d', '-m', '-', path.join(dir, 'f')]);
    if (g.status === 0) {
      assert.doesNotMatch(g.stdout.toString(), /trusted\.overlay/);
      assert.match(g.stdout.toString(), /user\.note="hi"/);
    }
  });
});

describe('applyLayer: unpack limits and disk space', () => {
  const MiB = 1024 ** 2;
  const DIGEST = `sha256:${'b'.repeat(64)}`;
  const zeros = (name: string, size: number): E => ({ name, content: Buffer.alloc(size) });
  async function bomb(entries: E[]): Promise<Buffer> {
    const gz = gzipSync(await makeTar(entries), { level: 9 });
    assert.ok(gz.length < 128 * 1024, `a bomb is small (${gz.length} bytes)`);
    return gz;
  }
  async function fileBytes(dir: string): Promise<number> {
    let n = 0;
    for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
      if (e.isFile()) n += (await stat(path.join(e.parentPath ?? e.path, e.name))).size;
    }
    return n;
  }

  it('a gzip bomb past the per-layer limit stops at the entry that crosses it, naming the digest and the limit', async () => {
    const gz = await bomb(Array.from({ length: 8 }, (_, i) => zeros(`d/f${i}`, MiB)));
    const dir = await freshDir();
    await assert.rejects(
      applyLayer(dir, Readable.from([gz]), { mediaType: TGZ, mode: 'overlay', digest: DIGEST, limits: { maxUnpackedBytes: 3 * MiB } }),
      (e: unknown) => {
        assert.ok(hasCode(e, 'InvalidArgument'), String(e));
        assert.match((e as Error).message, new RegExp(`layer ${DIGEST}: unpacks to more than the per-layer limit of 3 MiB \\(at entry "d/f3"\\)`));
        return true;
      },
    );
    assert.deepEqual((await readdir(path.join(dir, 'd'))).sort(), ['f0', 'f1', 'f2'], 'nothing written past the limit');
    assert.equal(await fileBytes(dir), 3 * MiB);
  });

  it('a file larger than what is left of the limit is refused before a byte of it is written', async () => {
    const dir = await freshDir();
    await assert.rejects(
      applyLayer(dir, Readable.from([await bomb([zeros('a', MiB), zeros('huge', 10 * MiB)])]), {
        mediaType: TGZ, mode: 'native', digest: DIGEST, limits: { maxUnpackedBytes: 4 * MiB },
      }),
      /per-layer limit of 4 MiB \(at entry "huge"\)/,
    );
    assert.deepEqual(await readdir(dir), ['a']);
    // the same layer within the default limits unpacks (the limit, not the content, refused it)
    const ok = await applyLayer(await freshDir(), Readable.from([await bomb([zeros('a', MiB), zeros('huge', 10 * MiB)])]), { mediaType: TGZ, mode: 'native' });
    assert.equal(ok.unpackedBytes, 11 * MiB);
  });

  it('the image budget spans its layers: the layer that crosses it is refused, naming itself and the image limit', async () => {
    const budget = new ImageBudget(5 * MiB);
    const a = await applyLayer(await freshDir(), Readable.from([await bomb([zeros('a', 3 * MiB)])]), {
      mediaType: TGZ, mode: 'overlay', digest: `sha256:${'a'.repeat(64)}`, imageBudget: budget,
    });
    assert.equal(a.unpackedBytes, 3 * MiB);
    assert.equal(budget.bytes, 3 * MiB);
    const dir = await freshDir();
    await assert.rejects(
      applyLayer(dir, Readable.from([await bomb([zeros('b1', MiB), zeros('b2', 2 * MiB)])]), {
        mediaType: TGZ, mode: 'overlay', digest: DIGEST, imageBudget: budget,
      }),
      (e: unknown) => hasCode(e, 'InvalidArgument') && new RegExp(`layer ${DIGEST}: the image unpacks to more than the per-image limit of 5 MiB`).test(String(e)),
    );
    assert.deepEqual(await readdir(dir), ['b1']);
  });

  it('the unpack stops at the free-space reserve of a real small tmpfs; without the check the disk fills up', async () => {
    const mnt = await freshDir();
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'nimbus-test', mnt]);
    assert.equal(m.status, 0, `mount tmpfs: ${m.stderr}`);
    try {
      const avail = async () => {
        const s = await statfs(mnt);
        return s.bavail * s.bsize;
      };
      let lowest = Infinity;
      const probe: SpaceProbe = async (d) => {
        const s = await statfsProbe(d);
        lowest = Math.min(lowest, s.availBytes);
        return s;
      };
      const room = new DiskSpace({ content: mnt, snapshots: mnt }, { reserveBytes: 4 * MiB, reserveRatio: 1, probe });
      // 64 MiB of zeros into 32 MiB: small files, then one large one
      const layer = await bomb([...Array.from({ length: 40 }, (_, i) => zeros(`small/${i}`, 60 * 1024)), zeros('large', 62 * MiB)]);
      const target = path.join(mnt, 'upper');
      await mkdir(target);
      await assert.rejects(
        applyLayer(target, Readable.from([layer]), { mediaType: TGZ, mode: 'overlay', digest: DIGEST, room }),
        (e: unknown) => {
          assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
          assert.match((e as Error).message, new RegExp(`fell to its 4\\.0 MiB reserve while unpacking layer ${DIGEST}`));
          assert.doesNotMatch((e as Error).message, new RegExp(mnt));
          return true;
        },
      );
      const left = await avail();
      assert.ok(left >= 3.5 * MiB, `the reserve is kept: ${left} bytes free`);
      assert.ok(lowest >= 3.5 * MiB, `never below the reserve when asked: ${lowest}`);
      await rm(target, { recursive: true, force: true });
      await mkdir(target);
      // the same layer without the check runs into ENOSPC: typed, and no host path in it
      await assert.rejects(applyLayer(target, Readable.from([layer]), { mediaType: TGZ, mode: 'overlay', digest: DIGEST }), (e: unknown) => {
        assert.ok(hasCode(e, 'ResourceExhausted'), String(e));
        assert.match((e as Error).message, /no space left on the image filesystem while unpacking layer sha256:b{64}/);
        assert.doesNotMatch((e as Error).message, new RegExp(mnt));
        return true;
      });
      assert.ok((await avail()) < MiB, 'without the check the filesystem filled up');
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});
