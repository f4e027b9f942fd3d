/**
 * Conformance suite every Snapshotter must pass (modelled on containerd's
 * snapshots/testsuite). It mounts for real through mount.ts, so it needs root.
 * Every test works in its own temp dir and unmounts + removes everything even on
 * failure, then checks /proc/self/mountinfo that no mount was left behind.
 */
import assert from 'node:assert/strict';
import { chmod, lchown, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { hasCode, type ErrorCode } from '../../core/errors.js';
import { mountAll, mountsUnder, unmountAll } from './mount.js';
import type { Snapshotter } from './snapshotter.js';

const MiB = 1024 * 1024;

export type MakeSnapshotter = (root: string) => Promise<Snapshotter>;

interface Env {
  root: string;
  sn: Snapshotter;
  /** Mount a snapshot at a fresh target; unmounted automatically at the end of the test. */
  mount(key: string): Promise<string>;
  unmount(target: string): Promise<void>;
  /** prepare → write files → commit, in one step. */
  layer(name: string, parent: string | undefined, files: Record<string, string | null>): Promise<void>;
}

async function withEnv(make: MakeSnapshotter, fn: (env: Env) => Promise<void>): Promise<void> {
  const base = await mkdtemp(path.join(tmpdir(), 'nimbus-snap-'));
  const root = path.join(base, 'root');
  const targets: string[] = [];
  let n = 0;
  const env: Env = {
    root,
    sn: await make(root),
    async mount(key) {
      const target = path.join(base, `m${n++}`);
      await mkdir(target);
      targets.push(target);
      await mountAll(await env.sn.mounts(key), target);
      return target;
    },
    async unmount(target) {
      await unmountAll(target);
    },
    async layer(name, parent, files) {
      const key = `${name}-active`;
      await env.sn.prepare(key, parent);
      const t = await env.mount(key);
      try {
        for (const [p, content] of Object.entries(files)) {
          const full = path.join(t, p);
          if (content === null) await rm(full, { recursive: true });
          else {
            await mkdir(path.dirname(full), { recursive: true });
            await writeFile(full, content);
          }
        }
      } finally {
        await unmountAll(t);
      }
      await env.sn.commit(name, key);
    },
  };
  try {
    await fn(env);
  } finally {
    for (const t of targets.reverse()) await unmountAll(t).catch(() => undefined);
    const left = await mountsUnder(base);
    // what a failed test left (a sized snapshot's filesystem) goes too, and is still reported
    for (const m of left) await unmountAll(m).catch(() => undefined);
    await rm(base, { recursive: true, force: true }).catch(() => undefined);
    assert.deepEqual(left, [], `mounts left behind under ${base}`);
  }
}

async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(hasCode(e, code), `expected ${code}, got ${String(e)}`);
    return true;
  });
}

const read = (p: string) => readFile(p, 'utf8');

/** Files below dir whose name matches. */
async function filesUnder(dir: string, match: (name: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) if (e.isFile() && match(e.name)) out.push(e.name);
  return out;
}
const exists = (p: string) =>
  lstat(p).then(
    () => true,
    () => false,
  );

export function snapshotterConformance(name: string, makeSnapshotter: MakeSnapshotter): void {
  const test = (title: string, fn: (env: Env) => Promise<void>) =>
    it(title, () => withEnv(makeSnapshotter, fn));

  describe(`snapshotter conformance: ${name}`, () => {
    test('prepare/commit/view chain shows the right files', async ({ sn, mount, layer }) => {
      await layer('base', undefined, { 'etc/hostname': 'one', 'bin/tool': 'v1', 'keep': 'k' });
      await layer('mid', 'base', { 'bin/tool': 'v2', 'var/new': 'n' });
      await layer('top', 'mid', { 'etc/hostname': 'three' });

      await sn.view('v-top', 'top');
      const t = await mount('v-top');
      assert.equal(await read(path.join(t, 'etc/hostname')), 'three');
      assert.equal(await read(path.join(t, 'bin/tool')), 'v2');
      assert.equal(await read(path.join(t, 'var/new')), 'n');
      assert.equal(await read(path.join(t, 'keep')), 'k');
      await assert.rejects(writeFile(path.join(t, 'x'), 'x'), /EROFS|read-only/);

      await sn.view('v-base', 'base');
      const b = await mount('v-base');
      assert.equal(await read(path.join(b, 'bin/tool')), 'v1');
      assert.equal(await exists(path.join(b, 'var/new')), false);
      await assert.rejects(writeFile(path.join(b, 'x'), 'x'), /EROFS|read-only/);

      await sn.view('v-mid', 'mid');
      const m = await mount('v-mid');
      assert.equal(await read(path.join(m, 'etc/hostname')), 'one');
    });

    test('writes in an active snapshot do not show in its parent', async ({ sn, mount, unmount, layer }) => {
      await layer('base', undefined, { 'a': 'parent' });
      await sn.prepare('work', 'base');
      const w = await mount('work');
      assert.equal(await read(path.join(w, 'a')), 'parent');
      await writeFile(path.join(w, 'a'), 'child');
      await writeFile(path.join(w, 'b'), 'new');
      await sn.view('v', 'base');
      const v = await mount('v');
      assert.equal(await read(path.join(v, 'a')), 'parent');
      assert.equal(await exists(path.join(v, 'b')), false);
      // a second active snapshot of the same parent is isolated too
      await sn.prepare('work2', 'base');
      const w2 = await mount('work2');
      assert.equal(await read(path.join(w2, 'a')), 'parent');
      await unmount(w);
      await unmount(w2);
    });

    test('files deleted in a child are gone in its commit, not in the parent', async ({ sn, mount, layer }) => {
      await layer('base', undefined, { 'gone': 'x', 'dir/f': 'y', 'stay': 'z' });
      await layer('child', 'base', { 'gone': null, 'dir': null });
      await sn.view('vc', 'child');
      const c = await mount('vc');
      assert.deepEqual((await readdir(c)).sort(), ['stay']);
      await sn.prepare('p', 'child');
      const p = await mount('p');
      assert.deepEqual((await readdir(p)).sort(), ['stay']);
      await sn.view('vb', 'base');
      const b = await mount('vb');
      assert.deepEqual((await readdir(b)).sort(), ['dir', 'gone', 'stay']);
    });

    test('modes, ownership and symlinks carry through a chain', async ({ sn, mount, unmount }) => {
      await sn.prepare('a', undefined);
      const t = await mount('a');
      await writeFile(path.join(t, 'secret'), 's');
      await chmod(path.join(t, 'secret'), 0o640);
      await lchown(path.join(t, 'secret'), 1234, 5678);
      await mkdir(path.join(t, 'd'), { mode: 0o711 });
      await chmod(path.join(t, 'd'), 0o711);
      await symlink('/etc/passwd', path.join(t, 'link'));
      await unmount(t);
      await sn.commit('A', 'a');
      await sn.prepare('b', 'A');
      const u = await mount('b');
      const st = await stat(path.join(u, 'secret'));
      assert.equal(st.mode & 0o7777, 0o640);
      assert.equal(st.uid, 1234);
      assert.equal(st.gid, 5678);
      assert.equal((await stat(path.join(u, 'd'))).mode & 0o7777, 0o711);
      assert.equal(await readlink(path.join(u, 'link')), '/etc/passwd');
    });

    test('stat and list report kind, parent and key', async ({ sn, layer }) => {
      await layer('base', undefined, { f: '1' });
      await sn.prepare('act', 'base');
      await sn.view('vw', 'base');
      const st = await sn.stat('act');
      assert.equal(st.key, 'act');
      assert.equal(st.kind, 'active');
      assert.equal(st.parent, 'base');
      assert.ok(!Number.isNaN(Date.parse(st.createdAt)));
      assert.equal((await sn.stat('base')).kind, 'committed');
      assert.equal((await sn.stat('base')).parent, undefined);
      assert.equal((await sn.stat('vw')).kind, 'view');
      const list = (await sn.list()).map((i) => `${i.key}:${i.kind}:${i.parent ?? ''}`).sort();
      assert.deepEqual(list, ['act:active:base', 'base:committed:', 'vw:view:base']);
    });

    test('remove refuses while children exist, then works', async ({ sn, layer }) => {
      await layer('base', undefined, { f: '1' });
      await layer('child', 'base', { g: '2' });
      await sn.view('v', 'child');
      await rejectsWith(sn.remove('base'), 'Conflict');
      await rejectsWith(sn.remove('child'), 'Conflict');
      await sn.remove('v');
      await sn.remove('child');
      await sn.remove('base');
      assert.deepEqual(await sn.list(), []);
      await rejectsWith(sn.remove('base'), 'NotFound');
    });

    test('NotFound, AlreadyExists and wrong-kind errors', async ({ sn, layer }) => {
      await rejectsWith(sn.stat('nope'), 'NotFound');
      await rejectsWith(sn.mounts('nope'), 'NotFound');
      await rejectsWith(sn.usage('nope'), 'NotFound');
      await rejectsWith(sn.commit('x', 'nope'), 'NotFound');
      await rejectsWith(sn.remove('nope'), 'NotFound');
      await rejectsWith(sn.prepare('k', 'nope'), 'NotFound');
      await rejectsWith(sn.view('k', 'nope'), 'NotFound');
      await rejectsWith(sn.prepare(''), 'InvalidArgument');

      await layer('base', undefined, { f: '1' });
      await sn.prepare('act', 'base');
      await rejectsWith(sn.prepare('act', 'base'), 'AlreadyExists');
      await rejectsWith(sn.view('act', 'base'), 'AlreadyExists');
      await rejectsWith(sn.prepare('base'), 'AlreadyExists');
      await rejectsWith(sn.commit('base', 'act'), 'AlreadyExists');
      // parents must be committed
      await rejectsWith(sn.prepare('k2', 'act'), 'InvalidArgument');
      // only active snapshots commit; committed ones have no mounts
      await sn.view('vw', 'base');
      await rejectsWith(sn.commit('c', 'vw'), 'Conflict');
      await rejectsWith(sn.commit('c', 'base'), 'Conflict');
      await rejectsWith(sn.mounts('base'), 'Conflict');
      // failed calls left nothing behind
      assert.deepEqual((await sn.list()).map((i) => i.key).sort(), ['act', 'base', 'vw']);
      // a committed key becomes free after commit
      await sn.commit('act2', 'act');
      await rejectsWith(sn.stat('act'), 'NotFound');
      await sn.prepare('act', 'act2');
    });

    test('commit with a parent: layers unpacked apart are stacked at commit, or refused when the snapshotter cannot', async ({ root, sn, mount, layer }) => {
      await layer('base', undefined, { 'a': 'base', 'gone': 'x' });
      // the child's own layer, written before its parent is known (as a parallel unpack does)
      await sn.prepare('child-act');
      const t = await mount('child-act');
      await writeFile(path.join(t, 'b'), 'child');
      if (!sn.parentIndependent) {
        await rejectsWith(sn.commit('child', 'child-act', { parent: 'base' }), 'InvalidArgument');
        assert.equal((await sn.stat('child-act')).kind, 'active', 'a refused commit changes nothing');
        return;
      }
      await rejectsWith(sn.commit('child', 'child-act', { parent: 'nope' }), 'NotFound');
      await sn.prepare('open', 'base');
      await rejectsWith(sn.commit('child', 'child-act', { parent: 'open' }), 'InvalidArgument');
      await sn.commit('child', 'child-act', { parent: 'base' });
      assert.equal((await sn.stat('child')).parent, 'base');
      await rejectsWith(sn.remove('base'), 'Conflict');
      const v = await mount((await sn.view('v', 'child'), 'v'));
      assert.deepEqual((await readdir(v)).sort(), ['a', 'b', 'gone']);
      assert.equal(await read(path.join(v, 'b')), 'child');
      // a snapshot that has a parent keeps it
      await sn.prepare('k', 'base');
      await rejectsWith(sn.commit('k2', 'k', { parent: 'child' }), 'InvalidArgument');
      // and the parent is persisted
      assert.equal((await (await makeSnapshotter(root)).stat('child')).parent, 'base');
    });

    test('metadata survives re-instantiation on the same root', async ({ root, sn, mount, layer }) => {
      await layer('base', undefined, { f: 'persisted' });
      await sn.prepare('act', 'base');
      const before = (await sn.list()).sort((a, b) => a.key.localeCompare(b.key));
      const again = await makeSnapshotter(root);
      const after = (await again.list()).sort((a, b) => a.key.localeCompare(b.key));
      assert.deepEqual(after, before);
      await again.view('v', 'base');
      const mounts = await again.mounts('v');
      assert.ok(mounts.length > 0);
      const t = await mount('act'); // uses the first instance; both agree on paths
      assert.equal(await read(path.join(t, 'f')), 'persisted');
      await rejectsWith(again.prepare('act'), 'AlreadyExists');
      await again.commit('c2', 'act');
      const third = await makeSnapshotter(root);
      assert.equal((await third.stat('c2')).kind, 'committed');
      assert.equal((await third.stat('c2')).parent, 'base');
    });

    test('concurrent calls within one process are safe', async ({ root, sn, layer }) => {
      await layer('base', undefined, { f: '1' });
      const keys = Array.from({ length: 16 }, (_, i) => `c${i}`);
      const results = await Promise.allSettled([
        ...keys.map((k) => sn.prepare(k, 'base')),
        sn.prepare('c0', 'base'), // a duplicate: exactly one of the two wins
      ]);
      assert.equal(results.filter((r) => r.status === 'rejected').length, 1);
      const specs = results.flatMap((r) => (r.status === 'fulfilled' ? [JSON.stringify(r.value)] : []));
      assert.equal(new Set(specs).size, specs.length, 'every snapshot has its own directories');
      await Promise.all(keys.slice(0, 8).map((k, i) => sn.commit(`done${i}`, k)));
      await Promise.all(keys.slice(8).map((k) => sn.remove(k)));
      const again = await makeSnapshotter(root);
      assert.equal((await again.list()).length, 1 + 8);
    });

    test('a second create of a key being created fails AlreadyExists once the first is on record, whose mounts it can then ask', async ({ sn, layer }) => {
      await layer('base', undefined, { f: '1' });
      const first = sn.prepare('twice', 'base');
      const second = sn.prepare('twice', 'base').then(
        () => assert.fail('created twice'),
        async (e: unknown) => {
          assert.ok(hasCode(e, 'AlreadyExists'), String(e));
          return sn.mounts('twice'); // as a cold create does after AlreadyExists
        },
      );
      const [made, asked] = await Promise.all([first, second]);
      assert.deepEqual(asked, made);
    });

    test('a parent removed while its children are being made: either it stays with them, or they fail and leave no directory', async ({ sn, layer }) => {
      for (let round = 0; round < 4; round++) {
        await layer(`base${round}`, undefined, { f: String(round) });
        const kids = Array.from({ length: 6 }, (_, i) => `kid${round}-${i}`);
        const made = Promise.allSettled(kids.map((k) => sn.prepare(k, `base${round}`)));
        await new Promise((r) => setTimeout(r, round)); // the removal lands at different points of their making
        const removal = await Promise.allSettled([sn.remove(`base${round}`)]);
        const results = await made;
        const listed = new Map((await sn.list()).map((i) => [i.key, i]));
        if (removal[0]!.status === 'fulfilled') {
          assert.ok(results.every((r) => r.status === 'rejected'), 'a child was made on a parent that is gone');
          assert.ok(!listed.has(`base${round}`));
        } else {
          assert.ok(listed.has(`base${round}`), 'the refused removal kept its parent');
        }
        for (const [i, r] of results.entries()) assert.equal(listed.has(kids[i]!), r.status === 'fulfilled');
        for (const [i, r] of results.entries()) if (r.status === 'fulfilled') assert.equal(listed.get(kids[i]!)!.parent, `base${round}`);
        for (const [i, r] of results.entries()) if (r.status === 'fulfilled') await sn.remove(kids[i]!);
        if (listed.has(`base${round}`)) await sn.remove(`base${round}`);
      }
      // every directory left is one on record: none of a create that failed (a directory snapshotter's)
      const own = (sn as { root?: unknown }).root;
      const dirs = typeof own === 'string' ? await readdir(path.join(own, 'snapshots')) : [];
      assert.deepEqual(dirs, [], `directories left: ${dirs.join(', ')}`);
      assert.deepEqual(await sn.list(), []);
    });

    test('usage counts the snapshot own layer', async ({ sn, mount, unmount, layer }) => {
      await layer('base', undefined, { big: 'x'.repeat(1 << 20) });
      const base = await sn.usage('base');
      assert.ok(base.size >= 1 << 20, `base size ${base.size}`);
      assert.ok(base.inodes >= 2, `base inodes ${base.inodes}`);
      await sn.prepare('act', 'base');
      const t = await mount('act');
      const empty = await sn.usage('act');
      await writeFile(path.join(t, 'more'), 'y'.repeat(256 << 10));
      await mkdir(path.join(t, 'd'));
      await writeFile(path.join(t, 'd', 'e'), 'e');
      await unmount(t);
      const grown = await sn.usage('act');
      assert.ok(grown.size >= empty.size + (256 << 10), `grown ${grown.size} vs ${empty.size}`);
      assert.equal(grown.inodes, empty.inodes + 3);
    });

    test('a sized snapshot holds its size and no more, and leaves nothing when removed', async ({ root, sn, mount, unmount, layer }) => {
      await layer('base', undefined, { f: 'from the image' });
      await sn.prepare('sized', 'base', { sizeBytes: 16 * MiB });
      assert.equal((await sn.stat('sized')).sizeBytes, 16 * MiB);
      const t = await mount('sized');
      assert.equal(await read(path.join(t, 'f')), 'from the image');
      await writeFile(path.join(t, 'fits'), Buffer.alloc(4 * MiB, 1));
      await assert.rejects(writeFile(path.join(t, 'too-big'), Buffer.alloc(20 * MiB, 1)), /ENOSPC/);
      await unlink(path.join(t, 'too-big')).catch(() => undefined);
      // an unsized one beside it is not bounded by it
      await sn.prepare('free', 'base');
      const u = await mount('free');
      await writeFile(path.join(u, 'big'), Buffer.alloc(20 * MiB, 1));
      await unmount(u);
      await unmount(t);
      const used = await sn.usage('sized');
      assert.ok(used.size >= 4 * MiB && used.size < 16 * MiB, `usage ${used.size}`);
      await sn.remove('sized');
      await sn.remove('free');
      assert.deepEqual(await mountsUnder(root), []);
      assert.deepEqual(await filesUnder(root, (n) => n.endsWith('.ext4')), [], 'no filesystem image left');
    });

    test('sizes that are not whole MiB from 16 MiB are refused, and one the host cannot hold', async ({ root, sn, layer }) => {
      await layer('base', undefined, { f: '1' });
      for (const sizeBytes of [0, 1000, 8 * MiB, 16 * MiB + 1, 1.5 * MiB, -MiB, 2 ** 60]) {
        await rejectsWith(sn.prepare('k', 'base', { sizeBytes }), 'InvalidArgument');
      }
      // a size the host's filesystem cannot hold today (16 TiB here) is refused, and leaves nothing
      await rejectsWith(sn.prepare('k', 'base', { sizeBytes: 16 * 1024 * 1024 * MiB }), 'ResourceExhausted');
      assert.deepEqual(await filesUnder(root, (n) => n.endsWith('.ext4')), []);
      assert.deepEqual((await sn.list()).map((i) => i.key), ['base']);
    });

    test('empty snapshots: prepare and view without parent', async ({ sn, mount, unmount }) => {
      await sn.prepare('a');
      const t = await mount('a');
      assert.deepEqual(await readdir(t), []);
      await writeFile(path.join(t, 'f'), 'f');
      await unlink(path.join(t, 'f'));
      await unmount(t);
      await sn.view('v');
      const v = await mount('v');
      assert.deepEqual(await readdir(v), []);
      await assert.rejects(writeFile(path.join(v, 'x'), 'x'), /EROFS|read-only/);
    });
  });
}
