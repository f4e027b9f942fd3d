/**
 * The host's network records on disk, one JSON file per record under <stateDir>/<kind>/:
 * networks/<id>.json, endpoints/<instance id>.json, overlays/<network id>.json,
 * routes/<network id>.json. Read whole once, when the daemon starts; written as they change.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { replaceStateFile } from '../../core/state-files.js';

export type NetworkRecordKind = 'networks' | 'endpoints' | 'overlays' | 'routes';

export class NetworkStateDir {
  /**
   * What each record's file holds, as read or written by this process (this class is the files'
   * only writer): a save that would write the same text is skipped. A warm container's claim saved
   * its endpoints again unchanged, a new file and a rename (~0.4 ms of CPU on this host's ext4).
   */
  private readonly onDisk = new Map<string, string>();
  /** The kinds whose directory this process has made or found. */
  private readonly dirs = new Set<NetworkRecordKind>();

  constructor(private readonly stateDir: string) {}

  /** Every record of a kind (synchronous: read once, at daemon start). */
  read<T>(kind: NetworkRecordKind): T[] {
    const dir = path.join(this.stateDir, kind);
    if (!existsSync(dir)) return [];
    this.dirs.add(kind);
    return readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => {
      const text = readFileSync(path.join(dir, f), 'utf8');
      const value = JSON.parse(text) as T;
      this.onDisk.set(`${kind}/${f.slice(0, -'.json'.length)}`, text);
      return value;
    });
  }

  async save(kind: NetworkRecordKind, id: string, value: unknown): Promise<void> {
    const key = `${kind}/${id}`;
    const text = JSON.stringify(value);
    if (this.onDisk.get(key) === text) return;
    const dir = path.join(this.stateDir, kind);
    if (!this.dirs.has(kind)) {
      await mkdir(dir, { recursive: true });
      this.dirs.add(kind);
    }
    this.onDisk.delete(key); // not known while the write is under way (it may fail)
    await replaceStateFile(path.join(dir, `${id}.json`), text);
    this.onDisk.set(key, text);
  }

  async forget(kind: NetworkRecordKind, id: string): Promise<void> {
    this.onDisk.delete(`${kind}/${id}`);
    rmSync(path.join(this.stateDir, kind, `${id}.json`), { force: true }); // one unlink: no thread-pool round trip
  }
}
