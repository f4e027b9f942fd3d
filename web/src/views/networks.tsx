/** The project's networks, each with the instances (containers and VMs) leasing an address on it. */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, q, type Network, type Project } from '../api.js';

export function NetworksView({ project }: { project: Project }) {
  const [networks, setNetworks] = useState<Network[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    (async () => {
      const list = await call<Network[]>('GET', `/networks?${q(project.path)}`);
      // the list has no members: each network's inspect has them (a handful per project)
      setNetworks(await Promise.all(list.map((n) => call<Network>('GET', `/networks/${encodeURIComponent(n.id)}`))));
    })().catch((e: unknown) => setError(messageOf(e)));
  }, [project.path]);
  if (error) return <p role="alert">{error}</p>;
  if (!networks) return <p>Loading…</p>;
  return (
    <section aria-labelledby="networks-title" class="stack">
      <h2 id="networks-title">Networks of {project.path}</h2>
      {networks.length === 0 ? <p class="muted">No network yet (the project's "bridge" is made on first use).</p> : networks.map((n) => (
        <div key={n.id} class="card" data-testid={`network-${n.name}`}>
          <h3>{n.name} <span class="muted">{n.driver} · {n.subnet} · gateway {n.gateway}{n.internal ? ' · internal' : ''}{n.builtin ? ' · default' : ''}</span></h3>
          {!n.containers?.length ? <p class="muted">No instance on it.</p> : (
            <table class="figures">
              <caption>Instances on {n.name}</caption>
              <thead><tr><th scope="col">Instance</th><th scope="col">Interface</th><th scope="col">Address</th></tr></thead>
              <tbody>{n.containers.map((c) => <tr key={`${c.id}-${c.ifName}`}><th scope="row">{c.name || c.id.slice(0, 12)}</th><td>{c.ifName}</td><td>{c.address}</td></tr>)}</tbody>
            </table>
          )}
        </div>
      ))}
    </section>
  );
}
