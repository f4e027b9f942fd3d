import { AlreadyExists, NotFound } from '../../core/errors.js';
import { isUniqueViolation, str, type Row, type SqlExecutor, type SqlValue } from '../sql/executor.js';

/** The noun a message uses for an instance of each kind (instance_names.kind). */
const NOUN = { container: 'container', vm: 'VM' } as const;
export type InstanceKind = keyof typeof NOUN;

/**
 * What the two instance tables (containers, vms) share: rows by id, listed by project and
 * status, inserted and patched through a map of record fields to columns, and the name an
 * instance holds in its project (instance_names: one name per project across both kinds).
 */
export class InstanceRows<R extends { id: string; name: string; projectId: string }> {
  private readonly table: 'containers' | 'vms';
  constructor(
    protected readonly db: SqlExecutor,
    private readonly kind: InstanceKind,
    private readonly columns: Record<string, string>,
    private readonly value: (field: string, v: unknown) => SqlValue,
    private readonly row: (r: Row) => R,
  ) {
    this.table = kind === 'container' ? 'containers' : 'vms';
  }
  async get(id: string): Promise<R | undefined> {
    const r = await this.db.get(`SELECT * FROM ${this.table} WHERE id = ?`, [id]);
    return r && this.row(r);
  }
  async byName(projectId: string, name: string): Promise<R | undefined> {
    const r = await this.db.get(`SELECT * FROM ${this.table} WHERE project_id = ? AND name = ?`, [projectId, name]);
    return r && this.row(r);
  }
  /** Every project's instances of this name, oldest first (the caller scopes them). */
  async named(name: string): Promise<R[]> {
    return (await this.db.all(`SELECT * FROM ${this.table} WHERE name = ? ORDER BY created_at, id`, [name])).map(this.row);
  }
  /** Ids are lower-case hex: anything else matches none (and is no LIKE pattern). */
  async withIdPrefix(prefix: string): Promise<R[]> {
    if (!/^[0-9a-f]{1,64}$/.test(prefix)) return [];
    return (await this.db.all(`SELECT * FROM ${this.table} WHERE id LIKE ? ORDER BY created_at, id`, [`${prefix}%`])).map(this.row);
  }
  async list(filter: { projectId?: string; status?: string[] } = {}): Promise<R[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (filter.projectId) {
      where.push('project_id = ?');
      params.push(filter.projectId);
    }
    if (filter.status?.length) {
      where.push(`status IN (${filter.status.map(() => '?').join(',')})`);
      params.push(...filter.status);
    }
    const sql = `SELECT * FROM ${this.table} ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at DESC, id DESC`;
    return (await this.db.all(sql, params)).map(this.row);
  }
  /**
   * The name's row, then the instance's, in one transaction. A name an instance of either kind
   * holds in the project, or a row this kind's table refuses (its id, or its name in the
   * project): AlreadyExists naming the kind that holds it.
   */
  async insert(rec: R): Promise<void> {
    const duplicate = (kind: InstanceKind) => `a ${NOUN[kind]} named "${rec.name}" already exists in this project`;
    const cols = ['id', ...Object.values(this.columns)];
    const vals = [rec.id, ...Object.keys(this.columns).map((k) => this.value(k, rec[k as keyof R]))];
    try {
      await this.db.transaction(async () => {
        // DO NOTHING rather than a unique violation: the holder's kind is then read in the same transaction
        const reserved = await this.db.run(
          'INSERT INTO instance_names (project_id, name, kind, instance_id) VALUES (?, ?, ?, ?) ON CONFLICT (project_id, name) DO NOTHING',
          [rec.projectId, rec.name, this.kind, rec.id],
        );
        if (reserved.changes === 0) {
          const holder = await this.db.get('SELECT kind FROM instance_names WHERE project_id = ? AND name = ?', [rec.projectId, rec.name]);
          const kind = holder ? (str(holder.kind) as InstanceKind) : this.kind;
          throw new AlreadyExists(duplicate(kind));
        }
        await this.db.run(`INSERT INTO ${this.table} (${cols.join(',')}) VALUES (${cols.map(() => '?').join(',')})`, vals);
      });
    } catch (e) {
      // the name's row of an id in use (instance_names_instance), or this table's own keys
      if (isUniqueViolation(e)) throw new AlreadyExists(duplicate(this.kind));
      throw e;
    }
  }
  async update(id: string, patch: Partial<Omit<R, 'id'>>): Promise<R> {
    const keys = Object.keys(patch).filter((k) => k in this.columns);
    if (keys.length) {
      const sets = keys.map((k) => `${this.columns[k]} = ?`).join(', ');
      const vals = keys.map((k) => this.value(k, patch[k as keyof typeof patch]));
      // the row as updated, in the same statement (no second read)
      const patchRow = async () => {
        const r = await this.db.get(`UPDATE ${this.table} SET ${sets} WHERE id = ? RETURNING *`, [...vals, id]);
        if (!r) throw new NotFound(`no such ${this.kind}: ${id}`);
        return this.row(r);
      };
      if (!('name' in patch) && !('projectId' in patch)) return patchRow();
      // a rename (or a move) takes the new name in the same transaction, or fails whole
      try {
        return await this.db.transaction(async () => {
          const rec = await patchRow();
          await this.db.run('DELETE FROM instance_names WHERE instance_id = ?', [id]);
          await this.db.run('INSERT INTO instance_names (project_id, name, kind, instance_id) VALUES (?, ?, ?, ?)', [rec.projectId, rec.name, this.kind, id]);
          return rec;
        });
      } catch (e) {
        if (isUniqueViolation(e)) throw new AlreadyExists(`another instance of that project has the name of ${this.kind} ${id}`);
        throw e;
      }
    }
    const row = await this.get(id);
    if (!row) throw new NotFound(`no such ${this.kind}: ${id}`);
    return row;
  }
  /**
   * The row, its name's reservation, and the instance's address leases (network_leases has no
   * foreign key: it serves both tables).
   */
  async delete(id: string): Promise<void> {
    await this.db.transaction(async () => {
      await this.db.run('DELETE FROM network_leases WHERE instance_id = ?', [id]);
      await this.db.run('DELETE FROM instance_names WHERE instance_id = ?', [id]);
      await this.db.run(`DELETE FROM ${this.table} WHERE id = ?`, [id]);
    });
  }
}
