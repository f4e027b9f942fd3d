/**
 * The trees a cold move carries (tree-tar.ts): an overlayfs upper directory exported and imported
 * keeps its files, owners, modes, links, fifos, whiteouts and opaque directories; an import is
 * hostile input (paths out of the target, through symlinks, device nodes, oversize trees refused,
 * nothing written outside the target). Runs as root (whiteouts are device nodes).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync, chownSync, chmodSync, linkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { run } from '../../core/exec.js';
import { hasCode } from '../../core/errors.js';
import { exportTree, importTree } from './tree-tar.js';
import { readTreeXattrs } from './tree-xattrs.js';

const root = process.getuid?.() === 0;
let base: string;

const getfattr = async (p: string, name: string) => (await run('getfattr', ['-h', '--only-values', '-n', name, p])).stdout;

/** A tar from entries given by hand (what a hostile sender could send). */
async function tarOf(entries: Array<{ header: Parameters<tar.Pack['entry']>[0]; body?: string }>): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry(e.header, e.body ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

async function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

const importInto = (target: string, bytes: Buffer, maxBytes = 1 << 20) => importTree(target, Readable.from([bytes]), { kind: 'overlay', maxBytes, what: 'test' });

describe('a writable layer as a tar and back', { skip: !root && 'needs root (whiteouts are device nodes)' }, () => {
  before(() => {
    base = mkdtempSync(join(tmpdir(), 'nimbus-tree-tar-'));
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  test('files, owners, modes, links, fifos, whiteouts, opaque dirs and user xattrs travel', async () => {
    const src = join(base, 'upper');
    mkdirSync(join(src, 'etc'), { recursive: true });
    mkdirSync(join(src, 'opaque'));
    writeFileSync(join(src, 'etc', 'written'), 'in the writable layer\n');
    chownSync(join(src, 'etc', 'written'), 1234, 5678);
    chmodSync(join(src, 'etc', 'written'), 0o4750);
    writeFileSync(join(src, 'big'), Buffer.alloc(300 * 1024, 7));
    linkSync(join(src, 'big'), join(src, 'big-link'));
    symlinkSync('../etc/written', join(src, 'etc', 'sym'));
    writeFileSync(join(src, 'opaque', 'kept'), 'x');
    assert.equal((await run('mkfifo', [join(src, 'fifo')])).code, 0);
    assert.equal((await run('mknod', [join(src, 'etc', 'gone'), 'c', '0', '0'])).code, 0, 'a whiteout');
    assert.equal((await run('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(src, 'opaque')])).code, 0);
    assert.equal((await run('setfattr', ['-n', 'user.note', '-v', 'kept', join(src, 'etc', 'written')])).code, 0);

    const bytes = await collect(exportTree(src, { kind: 'overlay' }));
    const dst = join(base, 'dst');
    mkdirSync(dst);
    const r = await importInto(dst, bytes);
    assert.equal(r.bytes, bytes.length);

    assert.equal(readFileSync(join(dst, 'etc', 'written'), 'utf8'), 'in the writable layer\n');
    const st = lstatSync(join(dst, 'etc', 'written'));
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [1234, 5678, 0o4750], 'owner and mode (setuid kept: the tenant\'s own file)');
    assert.equal(readlinkSync(join(dst, 'etc', 'sym')), '../etc/written');
    assert.equal(lstatSync(join(dst, 'big')).ino, lstatSync(join(dst, 'big-link')).ino, 'the hard link stays one file');
    assert.ok(lstatSync(join(dst, 'fifo')).isFIFO());
    const wh = lstatSync(join(dst, 'etc', 'gone'));
    assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'the whiteout is a 0:0 device again');
    assert.equal(await getfattr(join(dst, 'opaque'), 'trusted.overlay.opaque'), 'y', 'the opaque directory is opaque again');
    assert.equal(readFileSync(join(dst, 'opaque', 'kept'), 'utf8'), 'x');
    assert.equal(await getfattr(join(dst, 'etc', 'written'), 'user.note'), 'kept');
    assert.ok(!readdirSync(dst).some((n) => n.startsWith('.wh.')), 'no OCI whiteout file is left as a file');
  });

  test('a name that reads as a whiteout is refused at the export, not lost', async () => {
    const src = join(base, 'wh-name');
    mkdirSync(src);
    writeFileSync(join(src, '.wh.mine'), 'a tenant file');
    await assert.rejects(collect(exportTree(src, { kind: 'plain' })), (e: unknown) => hasCode(e, 'Conflict') && /\.wh\.mine/.test(String(e)));
  });
});

/** renameat2(2) by number (RENAME_EXCHANGE swaps two names in one step: neither is ever missing). */
const RENAMEAT2: Partial<Record<string, number>> = { x64: 316, arm64: 276, riscv64: 276 };

/** A process swapping the names a and b in dir as fast as it can (a tenant's process racing the export); it ends with this one. */
function swapping(dir: string, a: string, b: string): { stop(): void } {
  const p = spawn('perl', ['-e', `
    chdir $ARGV[0] or die "chdir: $!"; my ($a, $b) = @ARGV[1, 2]; my $parent = getppid();
    for (my $i = 0; ; $i++) { syscall(${RENAMEAT2[process.arch]}, -100, $a, -100, $b, 2) == 0 or die "renameat2: $!"; exit 0 if $i % 4096 == 0 && getppid() != $parent }`, dir, a, b], { stdio: 'ignore' });
  return { stop: () => p.kill() };
}

describe('an exported tree is a tenant\'s, and may change while it is read', { skip: (!root && 'needs root') || (RENAMEAT2[process.arch] === undefined && 'renameat2 number unknown here') }, () => {
  before(() => {
    base = mkdtempSync(join(tmpdir(), 'nimbus-tree-export-'));
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  // commit --pause=false reads a running container's upper directory: its process can swap a
  // directory for a symlink to a host path (an absolute one, which the host resolves from its own
  // root) between the walk's look at it and its reads in it
  test('a directory swapped for a symlink while the tree is read: nothing of the host\'s is read (contents, names, links, xattrs)', async () => {
    const tree = join(base, 'upper');
    const outside = join(base, 'elsewhere');
    mkdirSync(join(tree, 'd'), { recursive: true });
    writeFileSync(join(tree, 'd', 'mine'), 'tenant');
    mkdirSync(join(outside, 'etc'), { recursive: true });
    writeFileSync(join(outside, 'secret'), 'HOST SECRET');
    writeFileSync(join(outside, 'etc', 'secret'), 'HOST SECRET');
    symlinkSync('/host-target', join(outside, 'secret-link'));
    assert.equal((await run('setfattr', ['-n', 'user.leak', '-v', 'HOST SECRET', join(outside, 'secret')])).code, 0);
    symlinkSync(outside, join(tree, 'dl'));
    const flipper = swapping(tree, 'd', 'dl');
    const seen: string[] = [];
    let runs = 0;
    try {
      const until = Date.now() + 2000;
      while (Date.now() < until && !seen.length) {
        runs++;
        const ex = tar.extract();
        ex.on('entry', (h, body, next) => {
          const chunks: Buffer[] = [];
          body.on('data', (c) => chunks.push(c as Buffer));
          body.on('end', () => {
            const what = `${h.name} ${h.linkname ?? ''} ${JSON.stringify(h.pax ?? {})} ${Buffer.concat(chunks).toString()}`;
            if (/secret/i.test(what)) seen.push(what);
            next();
          });
        });
        // the walk may fail (a name went meanwhile): that is fine, a host file in the tar is not
        await pipeline(exportTree(tree, { kind: 'overlay' }), ex).catch(() => undefined);
      }
    } finally {
      flipper.stop();
    }
    assert.deepEqual(seen, [], `the export read host files through the swapped symlink (in ${runs} runs)`);
    assert.ok(runs > 20, `the race was run (${runs} exports)`);
  });

  test('the xattr walk does not follow a directory swapped for a symlink either', async () => {
    const tree = join(base, 'xattr-swap');
    const outside = join(base, 'xattr-elsewhere');
    mkdirSync(join(tree, 'd'), { recursive: true });
    mkdirSync(outside);
    writeFileSync(join(outside, 'secret'), 'x');
    assert.equal((await run('setfattr', ['-n', 'user.leak', '-v', 'HOST SECRET', join(outside, 'secret')])).code, 0);
    assert.equal((await run('setfattr', ['-n', 'user.leak', '-v', 'HOST SECRET', outside])).code, 0);
    symlinkSync(outside, join(tree, 'dl'));
    const flipper = swapping(tree, 'd', 'dl');
    const seen: string[] = [];
    try {
      for (let i = 0; i < 300 && !seen.length; i++) {
        for (const [rel, attrs] of await readTreeXattrs(tree, '^user\\.')) if (attrs.has('user.leak')) seen.push(rel);
      }
    } finally {
      flipper.stop();
    }
    assert.deepEqual(seen, [], 'a host file\'s attributes were read through the swapped symlink');
  });

  test('a file swapped for a fifo while the tree is read: the export does not hang on it', async () => {
    const tree = join(base, 'fifo-swap');
    mkdirSync(tree);
    for (let i = 0; i < 50; i++) writeFileSync(join(tree, `f${i}`), 'x');
    assert.equal((await run('mkfifo', [join(tree, 'p')])).code, 0);
    const flipper = swapping(tree, 'f25', 'p');
    try {
      const until = Date.now() + 1500;
      while (Date.now() < until) {
        const sink = new Writable({ write: (_c, _e, cb) => cb() });
        const done = pipeline(exportTree(tree, { kind: 'plain' }), sink).catch(() => undefined);
        let timer: NodeJS.Timeout | undefined;
        const hung = await Promise.race([done.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), 3000)))]);
        clearTimeout(timer);
        assert.equal(hung, false, 'an export waited on a fifo opened for reading');
      }
    } finally {
      flipper.stop();
      // a reader the old walk left blocked in open(2) is let go
      await run('perl', ['-MFcntl', '-e', 'for (@ARGV) { sysopen(my $f, $_, O_WRONLY | O_NONBLOCK) }', ...readdirSync(tree).map((n) => join(tree, n))]);
    }
  });

  test('extended attributes are bounded: a tree that hangs too many on its files is refused, and the agent stays up', async () => {
    const tree = join(base, 'many-xattrs');
    mkdirSync(tree);
    // 20,000 files with a 4,000-byte user.* attribute each (80 MB; ext4 shares the identical blocks)
    const made = await run('perl', ['-e', `
      my ($d, $n, $setxattr) = @ARGV; my $v = "a" x 4000; my $name = "user.big";
      for my $i (1..$n) { my $p = "$d/f$i"; open(my $f, ">", $p) or die "$!"; close $f; syscall($setxattr + 0, $p, $name, $v, length($v), 0) == 0 or die "setxattr: $!" }`,
      tree, '20000', String(process.arch === 'x64' ? 188 : 5)]);
    assert.equal(made.code, 0, made.stderr);
    await assert.rejects(pipeline(exportTree(tree, { kind: 'plain' }), new Writable({ write: (_c, _e, cb) => cb() })),
      (e: unknown) => hasCode(e, 'ResourceExhausted') && /extended attributes/.test(String(e)));
  });
});

describe('an imported tree is hostile input', { skip: !root && 'needs root' }, () => {
  let target: string;
  let outside: string;
  before(() => {
    base = mkdtempSync(join(tmpdir(), 'nimbus-tree-hostile-'));
    outside = join(base, 'outside');
    mkdirSync(outside);
  });
  after(() => rmSync(base, { recursive: true, force: true }));
  const fresh = (n: string) => {
    target = join(base, n);
    mkdirSync(target);
    return target;
  };
  const refused = async (n: string, entries: Parameters<typeof tarOf>[0], code = 'InvalidArgument', maxBytes?: number) => {
    await assert.rejects(importInto(fresh(n), await tarOf(entries), maxBytes), (e: unknown) => hasCode(e, code as never), `${n} is refused`);
    assert.deepEqual(readdirSync(outside), [], 'nothing written outside the target');
  };

  test('a path out of the target', () => refused('dotdot', [{ header: { name: '../outside/escaped', type: 'file', size: 1 }, body: 'x' }]));
  test('a path through a symlink the tar made', () => refused('via-symlink', [
    { header: { name: 'out', type: 'symlink', linkname: outside } },
    { header: { name: 'out/escaped', type: 'file', size: 1 }, body: 'x' },
  ]));
  test('a hard link to a file outside', () => refused('hardlink', [{ header: { name: 'passwd', type: 'link', linkname: '../../../etc/passwd' } }]));
  test('a device node a tenant could not make', () => refused('device', [{ header: { name: 'mem', type: 'character-device', devmajor: 1, devminor: 1 } }]));
  test('a block device', () => refused('block', [{ header: { name: 'sda', type: 'block-device', devmajor: 8, devminor: 0 } }]));
  test('more bytes than the limit', () => refused('oversize', [
    { header: { name: 'a', type: 'file', size: 600 }, body: 'a'.repeat(600) },
    { header: { name: 'b', type: 'file', size: 600 }, body: 'b'.repeat(600) },
  ], 'InvalidArgument', 1000));
  test('an absolute path lands inside the target', async () => {
    await importInto(fresh('absolute'), await tarOf([{ header: { name: '/etc/nimbus-absolute-test', type: 'file', size: 2 }, body: 'ok' }]));
    assert.equal(readFileSync(join(target, 'etc', 'nimbus-absolute-test'), 'utf8'), 'ok');
    assert.ok(!existsSync('/etc/nimbus-absolute-test'), 'not the host\'s /etc');
  });
  test('a truncated tar', async () => {
    const whole = await tarOf([{ header: { name: 'f', type: 'file', size: 4096 }, body: 'z'.repeat(4096) }]);
    await assert.rejects(importInto(fresh('truncated'), whole.subarray(0, 1500)), (e: unknown) => hasCode(e, 'InvalidArgument'));
  });
});
