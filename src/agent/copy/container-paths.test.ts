import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { cleanContainerPath, pathStat, resolveContainerPath } from './container-paths.js';

/** A rootfs in a temp dir beside a "host" file it must never reach. */
function fixture(): { root: string; host: string; done: () => void } {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-cp-paths-'));
  const root = path.join(base, 'rootfs');
  mkdirSync(path.join(root, 'etc'), { recursive: true });
  mkdirSync(path.join(root, 'data', 'sub'), { recursive: true });
  mkdirSync(path.join(root, 'vol'), { recursive: true });
  writeFileSync(path.join(root, 'etc', 'shadow'), 'container\n');
  writeFileSync(path.join(base, 'shadow'), 'HOST\n'); // rootfs/../shadow: what an escape would find
  symlinkSync('/etc/shadow', path.join(root, 'data', 'abs'));
  symlinkSync('../../../../../etc/shadow', path.join(root, 'data', 'up'));
  symlinkSync('../shadow', path.join(root, 'data', 'sibling')); // from /data: /shadow inside, not base/shadow
  symlinkSync('/', path.join(root, 'data', 'root'));
  symlinkSync('hop2', path.join(root, 'data', 'hop1'));
  symlinkSync('/data/root/../../etc', path.join(root, 'data', 'hop2'));
  symlinkSync('loop', path.join(root, 'data', 'loop'));
  symlinkSync('/vol/x', path.join(root, 'data', 'tovol'));
  return { root, host: path.join(base, 'shadow'), done: () => rmSync(base, { recursive: true, force: true }) };
}

const opts = { followLast: false, mountPoints: ['/vol', '/proc', '/etc/hosts'] };

test('paths are cleaned as dockerd takes them: absolute, .. stops at the root, a trailing / or /. follows the last link', () => {
  assert.deepEqual(cleanContainerPath('etc/../../..//etc/shadow'), { abs: '/etc/shadow', trailing: false });
  assert.deepEqual(cleanContainerPath('/data/'), { abs: '/data', trailing: true });
  assert.deepEqual(cleanContainerPath('/data/.'), { abs: '/data', trailing: true });
  assert.throws(() => cleanContainerPath(''), /no path/);
  assert.throws(() => cleanContainerPath('/a\0b'), /NUL/);
  assert.throws(() => cleanContainerPath('/' + 'a'.repeat(5000)), /longer than 4096/);
});

test('../ and links pointing out (absolute, .. chains, to /, chains of links) all resolve inside the rootfs', () => {
  const f = fixture();
  try {
    for (const p of ['/../../etc/shadow', '/data/abs/', '/data/up/', '/data/hop1/shadow', '/data/root/etc/shadow', '/data/root/../../../etc/shadow']) {
      const r = resolveContainerPath(f.root, p.endsWith('/') ? p.slice(0, -1) : p, { ...opts, followLast: true });
      assert.equal(r.hostPath, path.join(f.root, 'etc', 'shadow'), p);
      assert.equal(r.containerPath, '/etc/shadow', p);
    }
    // the sibling link resolves to /shadow of the container, which is not there: never base/shadow of the host
    const sib = resolveContainerPath(f.root, '/data/sibling', { ...opts, followLast: true });
    assert.equal(sib.stat, undefined);
    assert.equal(sib.containerPath, '/data/sibling');
  } finally {
    f.done();
  }
});

test('a stat does not follow the last link; its linkTarget is the container path it resolves to', () => {
  const f = fixture();
  try {
    const r = resolveContainerPath(f.root, '/data/up', opts);
    assert.equal(r.hostPath, path.join(f.root, 'data', 'up'));
    const st = pathStat(f.root, r, opts.mountPoints);
    assert.equal(st.name, 'up');
    assert.equal(st.mode & 0o170000, 0o120000, 'a symlink');
    assert.equal(st.linkTarget, '/etc/shadow');
    // a dangling link: where it points in the container
    assert.equal(pathStat(f.root, resolveContainerPath(f.root, '/data/sibling', opts), opts.mountPoints).linkTarget, '/shadow');
    // the same path with a trailing slash follows it: a file where a directory was asked for
    assert.throws(() => resolveContainerPath(f.root, '/data/up/', opts), /not a directory/);
    const root = pathStat(f.root, resolveContainerPath(f.root, '/', opts), opts.mountPoints);
    assert.equal(root.name, '/');
    assert.equal(root.mode & 0o170000, 0o040000);
  } finally {
    f.done();
  }
});

test('missing paths are NotFound, loops and files used as directories are refused', () => {
  const f = fixture();
  try {
    assert.throws(() => pathStat(f.root, resolveContainerPath(f.root, '/nope', opts), opts.mountPoints), (e: Error & { code?: string }) => e.code === 'NotFound');
    assert.throws(() => resolveContainerPath(f.root, '/nope/deeper', opts), (e: Error & { code?: string }) => e.code === 'NotFound');
    assert.throws(() => resolveContainerPath(f.root, '/etc/shadow/x', opts), /not a directory/);
    assert.throws(() => resolveContainerPath(f.root, '/data/loop/x', opts), /too many levels of symbolic links/);
  } finally {
    f.done();
  }
});

test('mounts are refused, also when a link leads into one; a stat of a link to one still answers', () => {
  const f = fixture();
  try {
    for (const p of ['/vol', '/vol/x', '/proc/self/environ', '/etc/hosts', '/data/root/vol/x']) {
      assert.throws(() => resolveContainerPath(f.root, p, opts), /is on the mount/, p);
    }
    assert.throws(() => resolveContainerPath(f.root, '/data/tovol', { ...opts, followLast: true }), /is on the mount "\/vol"/);
    const st = pathStat(f.root, resolveContainerPath(f.root, '/data/tovol', opts), opts.mountPoints);
    assert.equal(st.linkTarget, '/vol/x');
  } finally {
    f.done();
  }
});

test('a name or a path too long for the host is refused without naming the host path', () => {
  const f = fixture();
  try {
    // a whole path within 4096 bytes can still pass PATH_MAX once under the rootfs' own path on the host
    writeFileSync(path.join(f.root, 'data', 'sub', 'f'), 'x');
    let deep = '/data';
    for (let i = 0; i < 19; i++) {
      deep = `${deep}/${String(i).padStart(200, 'd')}`;
      mkdirSync(path.join(f.root, deep), { recursive: true });
    }
    for (const [p, followLast] of [['/' + 'a'.repeat(300), false], ['/data/' + 'b'.repeat(256) + '/x', true], [`${deep}/x`.padEnd(4090, 'e'), false]] as const) {
      assert.throws(() => resolveContainerPath(f.root, p, { ...opts, followLast }), (e: unknown) => {
        assert.equal((e as { code?: string }).code, 'InvalidArgument', String(e));
        assert.ok(!String((e as Error).message).includes(path.dirname(f.root)), `the message names the host path: ${String(e)}`);
        return true;
      });
    }
  } finally {
    f.done();
  }
});
