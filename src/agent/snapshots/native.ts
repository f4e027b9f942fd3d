/**
 * Native snapshotter (containerd's "native"): every active snapshot is a full copy
 * of its parent's tree, mounted with a bind mount. Works on any filesystem; costs
 * space and time per snapshot (reflinks make the copy cheap on btrfs/xfs).
 *
 *   <root>/metadata.json      shared format with the overlayfs snapshotter (and its journal)
 *   <root>/snapshots/<n>/fs   the snapshot's full tree
 *
 * Views are not copied: a view is a read-only bind of its (immutable, committed)
 * parent, which cannot be removed while the view exists.
 */
import { runOk } from '../../core/exec.js';
import { DirSnapshotter, type SnapshotRecord } from './overlayfs.js';
import type { MountSpec, SnapshotKind } from './snapshotter.js';

export class NativeSnapshotter extends DirSnapshotter {
  readonly name = 'native';
  /** A snapshot holds a copy of its parent's tree. */
  readonly parentIndependent = false;

  protected async populate(fsDir: string, parentFs: string | undefined, kind: SnapshotKind): Promise<void> {
    if (parentFs === undefined || kind === 'view') return;
    // -a: recursive, symlinks as symlinks, modes, ownership, timestamps, hard links,
    // xattrs (GNU cp -a implies --preserve=all minus failures it tolerates for xattr/context).
    await runOk('cp', ['-a', '--reflink=auto', '--', `${parentFs}/.`, `${fsDir}/`]);
  }

  protected mountsOf(_key: string, rec: SnapshotRecord, chain: SnapshotRecord[]): MountSpec[] {
    if (rec.kind === 'view') {
      const src = chain[0] ? this.fsDir(chain[0].id) : this.fsDir(rec.id);
      return [{ type: 'bind', source: src, options: ['bind', 'ro'] }];
    }
    return [{ type: 'bind', source: this.fsDir(rec.id), options: ['bind', 'rw'] }];
  }
}
