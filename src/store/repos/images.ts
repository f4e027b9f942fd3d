import type { ImageContentRecord, ImageRecord, ImageTagRecord } from '../records.js';
import type { ImageRepo } from '../store.js';
import { str, strOrNull, type Row, type SqlExecutor } from '../sql/executor.js';
import { where } from './where.js';

function content(r: Row): ImageContentRecord {
  return {
    digest: str(r.digest),
    indexDigest: strOrNull(r.index_digest),
    configDigest: str(r.config_digest),
    config: JSON.parse(str(r.config)) as ImageRecord['config'],
    layers: JSON.parse(str(r.layers)) as ImageRecord['layers'],
    chainId: str(r.chain_id),
    size: Number(r.size),
    createdAt: str(r.created_at),
  };
}

/** A reference row joined with its content: the image as that project sees it (created = when it got it). */
function referenced(r: Row): ImageRecord {
  return { ...content(r), projectId: str(r.project_id), createdAt: str(r.ref_created_at) };
}

function tagRow(r: Row): ImageTagRecord {
  return { name: str(r.name), digest: str(r.digest), projectId: str(r.project_id), updatedAt: str(r.updated_at) };
}

const REFERENCED = 'SELECT i.*, r.project_id, r.created_at AS ref_created_at FROM image_refs r JOIN images i ON i.digest = r.digest';

export class SqlImageRepo implements ImageRepo {
  constructor(private readonly db: SqlExecutor) {}
  async get(digest: string) {
    const r = await this.db.get('SELECT * FROM images WHERE digest = ?', [digest]);
    return r && content(r);
  }
  async contents() {
    return (await this.db.all('SELECT * FROM images ORDER BY created_at, digest')).map(content);
  }
  async ref(projectId: string, digest: string) {
    const r = await this.db.get(`${REFERENCED} WHERE r.project_id = ? AND r.digest = ?`, [projectId, digest]);
    return r && referenced(r);
  }
  async list(projectId?: string) {
    const w = where([['r.project_id', projectId]]);
    return (await this.db.all(`${REFERENCED} ${w.sql} ORDER BY r.created_at, r.project_id, r.digest`, w.params)).map(referenced);
  }
  async upsert(img: ImageRecord) {
    await this.db.run(
      `INSERT INTO images (digest, index_digest, config_digest, config, layers, chain_id, size, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (digest) DO UPDATE SET index_digest = COALESCE(excluded.index_digest, images.index_digest)`,
      [img.digest, img.indexDigest, img.configDigest, JSON.stringify(img.config), JSON.stringify(img.layers), img.chainId, img.size, img.createdAt],
    );
    await this.db.run('INSERT INTO image_refs (project_id, digest, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', [img.projectId, img.digest, img.createdAt]);
  }
  async deleteRef(projectId: string, digest: string) {
    await this.db.run('DELETE FROM image_refs WHERE project_id = ? AND digest = ?', [projectId, digest]);
  }
  async refCount(digest: string) {
    return Number((await this.db.get('SELECT COUNT(*) AS n FROM image_refs WHERE digest = ?', [digest]))!.n);
  }
  async delete(digest: string) {
    await this.db.run('DELETE FROM images WHERE digest = ?', [digest]);
  }
  async tags(filter: { projectId?: string; digest?: string; name?: string } = {}) {
    const w = where([['project_id', filter.projectId], ['digest', filter.digest], ['name', filter.name]]);
    return (await this.db.all(`SELECT * FROM image_tags ${w.sql} ORDER BY name, project_id`, w.params)).map(tagRow);
  }
  async tag(projectId: string, name: string) {
    const r = await this.db.get('SELECT * FROM image_tags WHERE project_id = ? AND name = ?', [projectId, name]);
    return r && tagRow(r);
  }
  async setTag(t: ImageTagRecord) {
    await this.db.run(
      `INSERT INTO image_tags (project_id, name, digest, updated_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (project_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at`,
      [t.projectId, t.name, t.digest, t.updatedAt],
    );
  }
  async deleteTag(projectId: string, name: string) {
    await this.db.run('DELETE FROM image_tags WHERE project_id = ? AND name = ?', [projectId, name]);
  }
  async addHost(chainId: string, host: string, at = new Date().toISOString()) {
    await this.db.run('INSERT INTO image_hosts (chain_id, host, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING', [chainId, host, at]);
  }
  async hosts(chainId: string) {
    return (await this.db.all('SELECT host FROM image_hosts WHERE chain_id = ? ORDER BY host', [chainId])).map((r) => str(r.host));
  }
  async removeHost(host: string, chainId?: string) {
    const r = chainId === undefined
      ? await this.db.run('DELETE FROM image_hosts WHERE host = ?', [host])
      : await this.db.run('DELETE FROM image_hosts WHERE host = ? AND chain_id = ?', [host, chainId]);
    return r.changes;
  }
}
