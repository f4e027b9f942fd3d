/**
 * Who may do what: the project's role grants (own and inherited; granting and revoking for the
 * project's admins) and the caller's own API keys (a new key is shown once, then only its name).
 */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, type ApiKey, type Grant, type Project } from '../api.js';

const ROLES = ['reader', 'member', 'admin'] as const;

function RolesSection({ project, admin }: { project: Project; admin: boolean }) {
  const [grants, setGrants] = useState<Grant[] | null>(null);
  const [user, setUser] = useState('');
  const [role, setRole] = useState<string>('reader');
  const [error, setError] = useState<string | null>(null);
  const base = `/projects/${encodeURIComponent(project.path)}/roles`;
  const load = () => call<Grant[]>('GET', base).then(setGrants, (e: unknown) => setError(messageOf(e)));
  useEffect(() => {
    void load();
  }, [project.path]);
  const run = (p: Promise<unknown>) => p.then(() => {
    setError(null);
    return load();
  }, (e: unknown) => setError(messageOf(e)));
  return (
    <>
      <h3 id="roles-title" data-testid="roles">Roles on {project.path}</h3>
      {error ? <p role="alert" class="error">{error}</p> : null}
      {!grants ? <p>Loading…</p> : grants.length === 0 ? <p class="muted">No role granted on this project or its ancestors (system administrators need none).</p> : (
        <table class="figures" aria-labelledby="roles-title">
          <thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">From</th>{admin ? <th scope="col"><span class="sr-only">Actions</span></th> : null}</tr></thead>
          <tbody>{grants.map((g) => (
            <tr key={`${g.user}-${g.project}`} data-testid={`grant-${g.user}`}>
              <th scope="row">{g.user}</th><td>{g.role}</td><td class="left">{g.inheritedFrom ? `inherited from ${g.inheritedFrom}` : 'this project'}</td>
              {admin ? <td>{g.inheritedFrom ? null : <button type="button" class="danger" aria-label={`Revoke ${g.user}'s role`} onClick={() => void run(call('DELETE', `${base}/${encodeURIComponent(g.user)}`))}>Revoke</button>}</td> : null}
            </tr>
          ))}</tbody>
        </table>
      )}
      {admin ? (
        <form class="inline-form" onSubmit={(e) => {
          e.preventDefault();
          void run(call('PUT', `${base}/${encodeURIComponent(user.trim())}`, { role })).then(() => setUser(''));
        }}>
          <label>User to grant <input name="grant-user" required value={user} onInput={(e) => setUser((e.target as HTMLInputElement).value)} /></label>
          <label>Role <select name="grant-role" aria-label="Role" value={role} onChange={(e) => setRole((e.target as HTMLSelectElement).value)}>{ROLES.map((r) => <option key={r} value={r}>{r}</option>)}</select></label>
          <button type="submit">Grant</button>
        </form>
      ) : null}
    </>
  );
}

function ApiKeysSection() {
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [name, setName] = useState('');
  const [days, setDays] = useState('');
  const [created, setCreated] = useState<{ name: string; key: string } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = () => call<ApiKey[]>('GET', '/apikeys').then(setKeys, (e: unknown) => setError(messageOf(e)));
  useEffect(() => {
    void load();
  }, []);
  return (
    <>
      <h3 id="keys-title">Your API keys</h3>
      {error ? <p role="alert" class="error">{error}</p> : null}
      <form class="inline-form" onSubmit={(e) => {
        e.preventDefault();
        setError(null);
        const body = { name: name.trim(), ...(days ? { expiresInSeconds: Math.round(Number(days) * 86400) } : {}) };
        call<{ name: string; key: string }>('POST', '/apikeys', body).then((k) => {
          setCreated({ name: k.name, key: k.key });
          setName('');
          return load();
        }, (x: unknown) => setError(messageOf(x)));
      }}>
        <label>Key name <input name="key-name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} /></label>
        <label>Expires in (days) <input name="key-days" type="number" min="1" step="1" value={days} placeholder="never" onInput={(e) => setDays((e.target as HTMLInputElement).value)} /></label>
        <button type="submit">Create key</button>
      </form>
      {created ? (
        <div class="explain ok" role="status" data-testid="new-key">
          <p>Key <strong>{created.name}</strong> — copy it now, it is not shown again:</p>
          <code class="secret" data-testid="new-key-value">{created.key}</code>
          <button type="button" onClick={() => setCreated(null)}>Done</button>
        </div>
      ) : null}
      {!keys ? <p>Loading…</p> : keys.length === 0 ? <p class="muted">No API key.</p> : (
        <table class="figures" aria-labelledby="keys-title" data-testid="apikeys">
          <thead><tr><th scope="col">Name</th><th scope="col">Created</th><th scope="col">Expires</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
          <tbody>{keys.map((k) => (
            <tr key={k.name} data-testid={`apikey-${k.name}`}>
              <th scope="row">{k.name}</th><td>{new Date(k.createdAt).toLocaleString()}</td><td>{k.expiresAt ? new Date(k.expiresAt).toLocaleString() : 'never'}</td>
              <td><button type="button" class="danger" aria-label={`Delete API key ${k.name}`} onClick={() => {
                if (!confirm(`Delete API key ${k.name}? Whatever uses it stops working.`)) return;
                call('DELETE', `/apikeys/${encodeURIComponent(k.name)}`).then(() => load(), (x: unknown) => setError(messageOf(x)));
              }}>Delete</button></td>
            </tr>
          ))}</tbody>
        </table>
      )}
    </>
  );
}

export function AccessView({ project, role }: { project: Project; role: string | undefined }) {
  return (
    <section aria-labelledby="access-title" class="stack">
      <h2 id="access-title">Access</h2>
      <RolesSection key={project.id} project={project} admin={role === 'admin'} />
      <ApiKeysSection />
    </section>
  );
}
