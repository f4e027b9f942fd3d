/**
 * Files a SIGKILLed nimbusd leaves half-written, removed when the next one starts (the crash
 * campaign, scripts/chaos.ts, found each kind):
 * - replaceStateFile's <file>.<pid>.<random>.tmp (containers/requests, network/endpoints): the
 *   kill fell between write and rename; the file it was replacing kept its old contents;
 * - a content store's ingest/<random> (a pull killed mid-blob) and a snapshotter's
 *   metadata.json.<random>.tmp: no pid in the name, so "written before this process started".
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

const STATE_TEMP = /\.(\d+)\.[a-z0-9]+\.tmp$/;

/** Remove other processes' interrupted replaceStateFile writes in dirs (not recursive); returns how many. */
export async function removeInterruptedWrites(dirs: readonly string[]): Promise<number> {
  let removed = 0;
  for (const dir of dirs) {
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      const m = STATE_TEMP.exec(n);
      if (!m || Number(m[1]) === process.pid) continue; // ours may be a write in progress
      await rm(join(dir, n), { force: true });
      removed++;
    }
  }
  return removed;
}

/** Remove entries of dir matching `name` last written before this process started (so not ours, in progress). */
export async function removeEarlierLeftovers(dir: string, name: RegExp = /./): Promise<number> {
  const startedAt = Date.now() - process.uptime() * 1000;
  let removed = 0;
  for (const n of await readdir(dir).catch(() => [] as string[])) {
    if (!name.test(n)) continue;
    const st = await stat(join(dir, n)).catch(() => undefined);
    if (!st || st.mtimeMs >= startedAt) continue;
    await rm(join(dir, n), { recursive: true, force: true });
    removed++;
  }
  return removed;
}
