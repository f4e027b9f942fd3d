import type { RoleGrantRecord } from '../records.js';
import type { RoleRepo } from '../store.js';
import { str, type SqlExecutor, type SqlValue } from '../sql/executor.js';
import { where } from './where.js';

export class SqlRoleRepo implements RoleRepo {
  constructor(private readonly db: SqlExecutor) {}
  async list(filter: { userId?: string; projectId?: string } = {}): Promise<RoleGrantRecord[]> {
    const w = where([['user_id', filter.userId], ['project_id', filter.projectId]]);
    const rows = await this.db.all(`SELECT * FROM role_grants ${w.sql} ORDER BY created_at, user_id, project_id`, w.params);
    return rows.map((r) => ({ userId: str(r.user_id), projectId: str(r.project_id), role: str(r.role) as RoleGrantRecord['role'], createdAt: str(r.created_at) }));
  }
  async grant(g: RoleGrantRecord) {
    const params: SqlValue[] = [g.userId, g.projectId, g.role, g.createdAt];
    await this.db.run(
      `INSERT INTO role_grants (user_id, project_id, role, created_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (user_id, project_id) DO UPDATE SET role = excluded.role`,
      params,
    );
  }
  async revoke(userId: string, projectId: string) {
    return (await this.db.run('DELETE FROM role_grants WHERE user_id = ? AND project_id = ?', [userId, projectId])).changes > 0;
  }
}
