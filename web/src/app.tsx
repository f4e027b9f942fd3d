/**
 * The shell: login, who the caller is, the project switcher and the views. Routing is by path
 * under /ui/ (the server answers every deep link with index.html).
 */
import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, logout, storedToken, whenLoggedOut, type Project, type Whoami } from './api.js';
import { roleOn } from './roles.js';
import { Login } from './views/login.js';
import { InstancesView } from './views/instances.js';
import { CreateContainerView } from './views/create.js';
import { QuotaView } from './views/quota.js';
import { HostsView } from './views/hosts.js';
import { CreateVmView } from './views/create-vm.js';
import { OperatorView } from './views/operator.js';
import { UsageView } from './views/usage.js';
import { NetworksView } from './views/networks.js';
import { ImagesView } from './views/images.js';
import { AuditView } from './views/audit.js';
import { AccessView } from './views/access.js';

/** Views without parameters, each at /ui/<name>. */
const PLAIN_VIEWS = ['create', 'create-vm', 'quota', 'hosts', 'operator', 'usage', 'networks', 'images', 'audit', 'access'] as const;
type PlainView = (typeof PLAIN_VIEWS)[number];

export type Route = { view: 'instances'; selected?: { kind: 'container' | 'vm'; id: string } } | { view: PlainView };

const BASE = '/ui/';

export function parseRoute(pathname: string): Route {
  const parts = pathname.slice(BASE.length).split('/').filter(Boolean).map(decodeURIComponent);
  const plain = PLAIN_VIEWS.find((v) => v === parts[0]);
  if (plain) return { view: plain };
  if (parts[0] === 'instances' && (parts[1] === 'container' || parts[1] === 'vm') && parts[2]) return { view: 'instances', selected: { kind: parts[1], id: parts[2] } };
  return { view: 'instances' };
}

export function routePath(r: Route): string {
  if (r.view === 'instances') return r.selected ? `${BASE}instances/${r.selected.kind}/${encodeURIComponent(r.selected.id)}` : BASE;
  return `${BASE}${r.view}`;
}

/** The project choice survives a reload (it is not a secret). */
const PROJECT_KEY = 'nimbus.project';

export function App() {
  const [me, setMe] = useState<Whoami | null>(null);
  const [projects, setProjects] = useState<Project[]>([]);
  const [project, setProject] = useState<Project | null>(null);
  const [route, setRoute] = useState<Route>(() => parseRoute(location.pathname));
  const [error, setError] = useState<string | null>(null);
  const [loggedIn, setLoggedIn] = useState(() => storedToken() !== null);

  useEffect(() => {
    whenLoggedOut(() => {
      setLoggedIn(false);
      setMe(null);
    });
    const onPop = () => setRoute(parseRoute(location.pathname));
    addEventListener('popstate', onPop);
    return () => removeEventListener('popstate', onPop);
  }, []);

  useEffect(() => {
    if (!loggedIn) return;
    let live = true;
    (async () => {
      const who = await call<Whoami>('GET', '/auth/whoami');
      const list = await call<Project[]>('GET', '/projects');
      if (!live) return;
      setMe(who);
      setProjects(list);
      const wanted = sessionStorage.getItem(PROJECT_KEY) ?? who.defaultProject;
      setProject(list.find((p) => p.path === wanted) ?? list[0] ?? null);
    })().catch((e: unknown) => live && setError(e instanceof ApiError ? e.message : String(e)));
    return () => {
      live = false;
    };
  }, [loggedIn]);

  const navigate = (r: Route) => {
    history.pushState(null, '', routePath(r));
    setRoute(r);
  };

  if (!loggedIn) return <Login onLoggedIn={() => setLoggedIn(true)} />;
  if (!me) return <main class="loading">{error ? <p role="alert">{error}</p> : <p>Loading…</p>}</main>;

  const role = project ? roleOn(me, project.path) : undefined;
  const nav = (r: Route, label: string) => (
    <a href={routePath(r)} aria-current={route.view === r.view ? 'page' : undefined}
      onClick={(e) => {
        e.preventDefault();
        navigate(r);
      }}>{label}</a>
  );

  return (
    <div class="shell">
      <header>
        <span class="brand">Nimbus</span>
        <label class="switcher">
          Project
          <select aria-label="Project" value={project?.id ?? ''} onChange={(e) => {
            const p = projects.find((x) => x.id === (e.target as HTMLSelectElement).value) ?? null;
            if (p) sessionStorage.setItem(PROJECT_KEY, p.path);
            setProject(p);
            if (route.view === 'instances' && route.selected) navigate({ view: 'instances' });
          }}>
            {projects.map((p) => (
              <option key={p.id} value={p.id}>{'\u00a0\u00a0'.repeat(p.path.split('/').length - 1)}{p.path}</option>
            ))}
          </select>
        </label>
        <nav aria-label="Views">
          {nav({ view: 'instances' }, 'Instances')}
          {nav({ view: 'networks' }, 'Networks')}
          {nav({ view: 'images' }, 'Images')}
          {nav({ view: 'quota' }, 'Quota')}
          {nav({ view: 'usage' }, 'Usage')}
          {nav({ view: 'audit' }, 'Audit')}
          {nav({ view: 'access' }, 'Access')}
          {me.systemAdmin ? nav({ view: 'hosts' }, 'Hosts') : null}
          {me.systemAdmin ? nav({ view: 'operator' }, 'Operator') : null}
        </nav>
        <span class="who" data-testid="whoami">{me.user}{role ? ` (${role})` : ''}</span>
        <button type="button" onClick={() => {
          void logout().finally(() => {
            setLoggedIn(false);
            setMe(null);
          });
        }}>Log out</button>
      </header>
      <main>
        {!project ? <p>You can read no project. Ask a project administrator for a role.</p>
          : route.view === 'instances' ? <InstancesView key={project.id} project={project} role={role} selected={route.selected} navigate={navigate} />
          : route.view === 'create' ? <CreateContainerView project={project} role={role} navigate={navigate} />
          : route.view === 'create-vm' ? <CreateVmView key={project.id} project={project} role={role} navigate={navigate} />
          : route.view === 'quota' ? <QuotaView key={project.id} project={project} />
          : route.view === 'usage' ? <UsageView key={project.id} project={project} />
          : route.view === 'networks' ? <NetworksView key={project.id} project={project} />
          : route.view === 'images' ? <ImagesView key={project.id} project={project} role={role} />
          : route.view === 'audit' ? <AuditView key={project.id} project={project} projects={projects} />
          : route.view === 'access' ? <AccessView project={project} role={role} />
          // operators' views: a link only for system administrators; the API answers others with their own slice or a refusal
          : route.view === 'operator' && me.systemAdmin ? <OperatorView />
          : route.view === 'hosts' && me.systemAdmin ? <HostsView />
          : <p>This view is for system administrators.</p>}
      </main>
    </div>
  );
}
