/**
 * The host's network records on disk, one JSON file per record under <stateDir>/<kind>/:
 * networks/<id>.json, endpoints/<instance id>.json, overlays/<network id>.json,
 * routes/<network id>.json. Read whole once, when the daemon starts; written as they change.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { replaceStateFile } from '../../core/state-files.js';

export type NetworkRecordKind = 'networks' | 'endpoints' | 'overlays' | 'routes';

export class NetworkStateDir {
  constructor(private readonly stateDir: string) {}

  /** Every record of a kind (synchronous: read once, at daemon start). */
  read<T>(kind: NetworkRecordKind): T[] {
    const dir = path.join(this.stateDir, kind);
    if (!existsSync(dir)) return [];
    return readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as T);
  }

  async save(kind: NetworkRecordKind, id: string, value: unknown): Promise<void> {
    const dir = path.join(this.stateDir, kind);
    await mkdir(dir, { recursive: true });
    await replaceStateFile(path.join(dir, `${id}.json`), JSON.stringify(value));
  }

  async forget(kind: NetworkRecordKind, id: string): Promise<void> {
    await rm(path.join(this.stateDir, kind, `${id}.json`), { force: true });
  }
}
