/**
 * Where snapshots and containers come and go, ask ext4 to spread their directories over its block
 * groups (issue 18: pulls, back-to-back starts).
 *
 * ext4 puts a new directory in or near its parent's block group (the Orlov allocator) and a new
 * file in its directory's group, so each new snapshot lands where the last removed ones were. On an
 * ext4 without a journal (this project's test host, `/proc/fs/jbd2` empty), inode allocation avoids
 * inodes freed in the last 60 s (longer while their inode table block is dirty) by testing them one
 * by one, from the start of the group, on every create: after an image of 2,000 files was removed,
 * the next 2,000 creates cost 0.17–0.62 s instead of 20 ms (`recently_deleted()` under
 * `ext4_create` was 31 % of the daemon's CPU in a pull). The "top of directory hierarchies" flag
 * (`chattr +T`, FS_TOPDIR_FL) makes ext4 place a directory's subdirectories as it places the root's:
 * spread over the groups, each snapshot then in a group of its own. The flag is a placement hint
 * and is not inherited: only the marked directory's own children are spread. An ext4 with a journal
 * does not make the scan; there the flag only spreads the directories. Other filesystems do not
 * support it: `chattr` fails and nothing changes.
 */
import { run } from '../core/exec.js';
import { logger } from '../core/log.js';

const log = logger('agent.spread-directories');
const marked = new Map<string, Promise<boolean>>();

/**
 * Mark `dir` (which exists) once per process; resolves true when the flag is set, false when this
 * filesystem or host cannot (no `chattr`, not ext4): never rejects.
 */
export function spreadSubdirectories(dir: string): Promise<boolean> {
  let done = marked.get(dir);
  if (!done) {
    done = run('chattr', ['+T', '--', dir], { timeoutMs: 10_000 }).then(
      (r) => {
        if (r.code === 0) return true;
        log.debug('directories not spread over block groups', { dir, reason: r.stderr.trim() || `chattr exited ${r.code}` });
        return false;
      },
      (e: unknown) => {
        log.debug('directories not spread over block groups', { dir, reason: e instanceof Error ? e.message : String(e) });
        return false;
      },
    );
    marked.set(dir, done);
  }
  return done;
}
