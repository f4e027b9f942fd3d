/** Facts every control-plane process sharing the store must agree on (one row per key). */
import { str, type SqlExecutor } from '../sql/executor.js';

export interface SettingsRepo {
  /** The stored value of key, storing `value` first if there is none: the first process to ask decides. */
  claim(key: string, value: string): Promise<string>;
  get(key: string): Promise<string | undefined>;
}

export class SqlSettingsRepo implements SettingsRepo {
  constructor(private readonly db: SqlExecutor) {}
  async claim(key: string, value: string): Promise<string> {
    await this.db.run('INSERT INTO control_plane_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING', [key, value]);
    const stored = await this.get(key);
    if (stored === undefined) throw new Error(`settings: ${key} vanished right after it was stored`);
    return stored;
  }
  async get(key: string): Promise<string | undefined> {
    const r = await this.db.get('SELECT value FROM control_plane_settings WHERE key = ?', [key]);
    return r ? str(r.value) : undefined;
  }
}
