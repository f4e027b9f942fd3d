/**
 * Registry credentials per project (docker login, nimbus registry login): one row per project
 * and registry server. The password is stored sealed (the caller seals it with the control
 * plane's key; this repository never sees it in clear).
 */
import { str, type Row, type SqlExecutor } from '../sql/executor.js';

export interface RegistryCredentialRecord {
  projectId: string;
  /** The registry as pulls name it: host[:port], lowercase, Docker Hub as docker.io. */
  server: string;
  username: string;
  /** The password sealed (sealed-secret.ts's format); never the password itself. */
  sealedPassword: string;
  createdAt: string;
  updatedAt: string;
  /** Who stored them last (a user's name, or local-admin). */
  updatedBy: string;
}

export interface RegistryCredentialRepo {
  get(projectId: string, server: string): Promise<RegistryCredentialRecord | undefined>;
  /** The project's, by server. */
  list(projectId: string): Promise<RegistryCredentialRecord[]>;
  /** Insert, or replace the user name and password of the project's row for that server (created_at kept). */
  put(r: RegistryCredentialRecord): Promise<void>;
  /** False when the project had none for that server. */
  delete(projectId: string, server: string): Promise<boolean>;
}

function credential(r: Row): RegistryCredentialRecord {
  return {
    projectId: str(r.project_id), server: str(r.server), username: str(r.username), sealedPassword: str(r.sealed_password),
    createdAt: str(r.created_at), updatedAt: str(r.updated_at), updatedBy: str(r.updated_by),
  };
}

export class SqlRegistryCredentialRepo implements RegistryCredentialRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(projectId: string, server: string) {
    const r = await this.db.get('SELECT * FROM registry_credentials WHERE project_id = ? AND server = ?', [projectId, server]);
    return r && credential(r);
  }
  async list(projectId: string) {
    return (await this.db.all('SELECT * FROM registry_credentials WHERE project_id = ? ORDER BY server', [projectId])).map(credential);
  }
  async put(c: RegistryCredentialRecord) {
    await this.db.run(
      `INSERT INTO registry_credentials (project_id, server, username, sealed_password, created_at, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (project_id, server) DO UPDATE SET username = excluded.username, sealed_password = excluded.sealed_password,
         updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
      [c.projectId, c.server, c.username, c.sealedPassword, c.createdAt, c.updatedAt, c.updatedBy],
    );
  }
  async delete(projectId: string, server: string) {
    return (await this.db.run('DELETE FROM registry_credentials WHERE project_id = ? AND server = ?', [projectId, server])).changes > 0;
  }
}
