/**
 * The project's quota audit log (GET /quota-audit?project=): every admit, reject, loan, return
 * and reclaim with its reason, newest first. The API sends the whole log of the project (it has
 * `since` but no limit), so the page shows the newest entries only.
 */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, q, type AuditEntry, type Project } from '../api.js';

const SHOWN = 200;

export function AuditView({ project, projects }: { project: Project; projects: Project[] }) {
  const [entries, setEntries] = useState<AuditEntry[] | null>(null);
  const [kind, setKind] = useState('');
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    call<AuditEntry[]>('GET', `/quota-audit?${q(project.path)}`).then((l) => setEntries([...l].sort((a, b) => b.seq - a.seq)), (e: unknown) => setError(messageOf(e)));
  }, [project.path]);
  if (error) return <p role="alert">{error}</p>;
  if (!entries) return <p>Loading…</p>;
  // the ledger speaks in project ids; the ones the caller can read have paths
  const pathOf = new Map(projects.map((p) => [p.id, p.path]));
  const kinds = [...new Set(entries.map((e) => e.kind))].sort();
  const shown = entries.filter((e) => !kind || e.kind === kind).slice(0, SHOWN);
  return (
    <section aria-labelledby="audit-title" class="stack">
      <div class="toolbar">
        <h2 id="audit-title">Quota audit of {project.path}</h2>
        <label>Kind <select aria-label="Kind" value={kind} onChange={(e) => setKind((e.target as HTMLSelectElement).value)}>
          <option value="">all</option>{kinds.map((k) => <option key={k} value={k}>{k}</option>)}
        </select></label>
        <span class="muted" data-testid="audit-count">{entries.length} entries{shown.length < entries.length ? `, newest ${shown.length} shown` : ''}</span>
      </div>
      <table class="figures audit" data-testid="audit">
        <thead><tr><th scope="col">#</th><th scope="col">When</th><th scope="col">Kind</th><th scope="col">Project</th><th scope="col">Instance</th><th scope="col">Reason</th></tr></thead>
        <tbody>{shown.map((e) => (
          <tr key={e.seq}><td>{e.seq}</td><td>{new Date(e.at).toLocaleString()}</td><th scope="row">{e.kind}</th><td class="left">{pathOf.get(e.project) ?? e.project}</td><td class="left"><code>{e.instance?.slice(0, 12) ?? ''}</code></td><td class="left">{e.reason}</td></tr>
        ))}</tbody>
      </table>
    </section>
  );
}
