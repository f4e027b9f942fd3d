import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { copyUpIntoVolumes, sweepCopyUpLeftovers } from './copy-up.js';

const root = process.getuid?.() === 0;

/** A hostile image tree: owners, modes, setuid, symlinks out of it, a VOLUME path that is a symlink out of the root. */
function fixture() {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-copy-up-'));
  const rootfs = path.join(base, 'rootfs');
  const srv = path.join(rootfs, 'srv');
  mkdirSync(path.join(srv, 'sub'), { recursive: true });
  writeFileSync(path.join(srv, 'index.html'), 'from the image\n');
  chmodSync(path.join(srv, 'index.html'), 0o640);
  writeFileSync(path.join(srv, 'tool'), '#!/bin/sh\n');
  chmodSync(path.join(srv, 'tool'), 0o4755);
  writeFileSync(path.join(srv, 'sub', 'deep.txt'), 'deep\n');
  symlinkSync('/etc/shadow', path.join(srv, 'escape'));
  symlinkSync('../../../../../../etc', path.join(srv, 'up'));
  chownSync(srv, 1000, 1000);
  chownSync(path.join(srv, 'index.html'), 1000, 1001);
  chmodSync(srv, 0o750);
  mkdirSync(path.join(rootfs, 'etc'));
  writeFileSync(path.join(rootfs, 'etc', 'image-only'), 'the image\'s /etc\n');
  symlinkSync('../../../../../../../etc', path.join(rootfs, 'evil')); // a VOLUME path out of the root
  symlinkSync('/srv', path.join(rootfs, 'linked'));
  writeFileSync(path.join(rootfs, 'afile'), 'x');
  const vol = (name: string) => {
    const d = path.join(base, 'volumes', name);
    mkdirSync(d, { recursive: true });
    return d;
  };
  return { base, rootfs, vol, scratch: path.join(base, 'scratch'), room: () => ({ snapshotRoom: async () => 1024 ** 4 }) };
}

test('copy-up: the image\'s files at the path, owners, modes and setuid kept, symlinks copied as symlinks; a full volume untouched; nothing outside the root', { skip: root ? false : 'mounting needs root' }, async () => {
  const f = fixture();
  try {
    const fresh = f.vol('fresh');
    const full = f.vol('full');
    writeFileSync(path.join(full, 'mine'), 'mine\n');
    const evil = f.vol('evil');
    const linked = f.vol('linked');
    const missing = f.vol('missing');
    const file = f.vol('file');
    await copyUpIntoVolumes([{ type: 'bind', source: f.rootfs, options: ['rbind'] }], [
      { target: '/srv', dir: fresh }, { target: '/srv', dir: full }, { target: '/evil', dir: evil }, { target: '/linked', dir: linked },
      { target: '/nowhere/at/all', dir: missing }, { target: '/afile', dir: file },
    ], { scratchDir: f.scratch, room: f.room });

    assert.deepEqual(readdirSync(fresh).sort(), ['escape', 'index.html', 'sub', 'tool', 'up']);
    assert.equal(readFileSync(path.join(fresh, 'index.html'), 'utf8'), 'from the image\n');
    assert.equal(readFileSync(path.join(fresh, 'sub', 'deep.txt'), 'utf8'), 'deep\n');
    const st = lstatSync(path.join(fresh, 'index.html'));
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [1000, 1001, 0o640]);
    assert.equal(lstatSync(path.join(fresh, 'tool')).mode & 0o7777, 0o4755, 'setuid kept, as dockerd copies it');
    const top = lstatSync(fresh);
    assert.deepEqual([top.uid, top.gid, top.mode & 0o7777], [1000, 1000, 0o750], 'the volume\'s root takes the directory\'s owner and mode');
    assert.equal(readlinkSync(path.join(fresh, 'escape')), '/etc/shadow', 'a symlink stays a symlink (never followed)');
    assert.ok(lstatSync(path.join(fresh, 'up')).isSymbolicLink());

    assert.deepEqual(readdirSync(full), ['mine'], 'a volume with files keeps them');
    // /evil climbs out of the root: resolved inside it, it is the image's /etc, never the host's
    assert.deepEqual(readdirSync(evil), ['image-only']);
    assert.deepEqual(readdirSync(linked).sort(), ['escape', 'index.html', 'sub', 'tool', 'up'], 'an absolute symlink resolves in the root');
    assert.deepEqual(readdirSync(missing), [], 'nothing at the path: the volume starts empty');
    assert.deepEqual(readdirSync(file), [], 'a file at the path: nothing copied');

    assert.deepEqual(readdirSync(f.scratch), [], 'the mount aside is gone');
    assert.equal(readFileSync(path.join(f.rootfs, 'srv', 'index.html'), 'utf8'), 'from the image\n');
  } finally {
    rmSync(f.base, { recursive: true, force: true });
  }
});

test('copy-up: nothing mounted when every volume has files already', async () => {
  const f = fixture();
  try {
    const full = f.vol('full');
    writeFileSync(path.join(full, 'mine'), 'mine\n');
    // a rootfs that cannot be mounted: reached only if a volume were empty
    await copyUpIntoVolumes([{ type: 'bind', source: path.join(f.base, 'does-not-exist'), options: ['rbind'] }], [{ target: '/srv', dir: full }], { scratchDir: f.scratch, room: f.room });
    assert.deepEqual(readdirSync(full), ['mine']);
  } finally {
    rmSync(f.base, { recursive: true, force: true });
  }
});

test('copy-up: a crashed agent\'s leftover mount in the scratch directory is unmounted and removed; what was beneath it is untouched', { skip: root ? false : 'mounting needs root' }, async () => {
  const f = fixture();
  try {
    const left = path.join(f.scratch, 'copy-up-0123456789ab');
    mkdirSync(left, { recursive: true });
    const { execFileSync } = await import('node:child_process');
    execFileSync('mount', ['--bind', '-o', 'ro', f.rootfs, left]);
    execFileSync('mount', ['-o', 'remount,bind,ro', left]);
    mkdirSync(path.join(f.scratch, 'copy-up-plain'));
    await sweepCopyUpLeftovers(f.scratch);
    assert.deepEqual(readdirSync(f.scratch), [], 'both gone');
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(left), 'unmounted');
    assert.equal(readFileSync(path.join(f.rootfs, 'srv', 'index.html'), 'utf8'), 'from the image\n', 'the tree beneath is untouched');
    await sweepCopyUpLeftovers(path.join(f.base, 'missing')); // no scratch directory yet: nothing to do
  } finally {
    rmSync(f.base, { recursive: true, force: true });
  }
});

// a named volume is made by one create (the one that copies up) but may be mounted meanwhile by
// another container of the project, already running: its process can replace a directory the
// copy made with a symlink to a host path while the copy still writes under it
test('copy-up: a running container sharing the volume swaps a directory for a symlink mid-copy: nothing is written outside the volume', { skip: root ? false : 'mounting needs root' }, async () => {
  const f = fixture();
  try {
    const many = path.join(f.rootfs, 'data', 'x');
    mkdirSync(path.join(many, 'sub'), { recursive: true });
    for (let i = 0; i < 3000; i++) writeFileSync(path.join(many, i % 2 ? `f${i}` : path.join('sub', `f${i}`)), `file ${i}\n`);
    const data = path.join(f.vol('shared'), '_data');
    mkdirSync(data);
    const outside = path.join(f.base, 'host-dir');
    mkdirSync(outside);
    const { spawn } = await import('node:child_process');
    // the other container: as soon as x appears, it becomes a symlink to a host directory
    const racer = spawn('perl', ['-e', `
      my ($data, $outside) = @ARGV; my $parent = getppid();
      until (-d "$data/x") { exit 0 if getppid() != $parent }
      rename("$data/x", "$data/x.old") or die "rename: $!"; symlink($outside, "$data/x") or die "symlink: $!";`, data, outside], { stdio: 'ignore' });
    const raced = new Promise<void>((r) => racer.once('exit', () => r()));
    try {
      await copyUpIntoVolumes([{ type: 'bind', source: f.rootfs, options: ['rbind'] }], [{ target: '/data', dir: data }], { scratchDir: f.scratch, room: f.room }).catch(() => undefined);
    } finally {
      racer.kill();
      await raced;
    }
    assert.deepEqual(readdirSync(outside), [], 'the copy wrote through the swapped symlink into a host directory');
  } finally {
    rmSync(f.base, { recursive: true, force: true });
  }
});
