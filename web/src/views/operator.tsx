/**
 * The operator's view (system administrators; the API refuses or narrows the same calls for
 * others): each agent's health (read again when a `host` event says one went down or came up),
 * the operations in flight, and recent live migrations with the downtime and bytes their
 * reports give. The migrations are the stored `vm.migrate` operations (GET /operations?kind=,
 * newest first, whatever the server restarted since), read again when an operation changes.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { call, followEvents, messageOf, type Host, type Operation } from '../api.js';
import { bytes } from '../format.js';

interface Migration {
  id: string; time: string; vm: string; outcome: 'moved' | 'failed' | 'moving'; from: string; to: string;
  downtimeMs?: number; totalMs?: number; bytes?: number; diskBytes?: number; iterations?: number; error?: string;
}

/** A `vm.migrate` operation as a migration: its report once it moved, its error once it failed. */
export function migrationOf(o: Operation): Migration | undefined {
  if (o.kind !== 'vm.migrate' || o.status === 'cancelled') return undefined;
  const r = (o.result ?? {}) as Record<string, unknown>;
  const num = (k: string) => (typeof r[k] === 'number' ? r[k] as number : undefined);
  const str = (k: string) => (typeof r[k] === 'string' ? r[k] as string : '');
  // optional fields stay absent rather than undefined (exactOptionalPropertyTypes-safe)
  const some = <K extends string, V>(k: K, v: V | undefined) => (v === undefined || v === '' ? {} : { [k]: v } as Record<K, V>);
  return {
    id: o.id, time: o.updatedAt, vm: o.target, outcome: o.status === 'succeeded' ? 'moved' : o.status === 'failed' ? 'failed' : 'moving',
    from: str('from'), to: str('to'),
    ...some('downtimeMs', num('downtimeMs')), ...some('totalMs', num('totalMs')), ...some('bytes', num('bytes')),
    ...some('diskBytes', num('diskBytes')), ...some('iterations', num('iterations')), ...some('error', o.error?.message),
  };
}

const ago = (iso: string | undefined) => {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
};

const IN_FLIGHT = new Set(['pending', 'running']);
const MAX_MIGRATIONS = 50;

export function OperatorView() {
  const [hosts, setHosts] = useState<Host[] | null>(null);
  const [operations, setOperations] = useState<Operation[] | null>(null);
  const [migrations, setMigrations] = useState<Migration[] | null>(null);
  const [vmNames, setVmNames] = useState<Map<string, string>>(new Map());
  const [error, setError] = useState<string | null>(null);
  const reloadTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);

  const loadHosts = () => call<Host[]>('GET', '/agents').then(setHosts, (e: unknown) => setError(messageOf(e)));
  const loadOperations = () => call<Operation[]>('GET', '/operations').then(setOperations, (e: unknown) => setError(messageOf(e)));
  const loadMigrations = () => Promise.all([
    call<Operation[]>('GET', `/operations?kind=vm.migrate&limit=${MAX_MIGRATIONS}`),
    call<Array<{ id: string; name: string }>>('GET', '/vms?all=true&project=*'),
  ]).then(([ops, vms]) => {
    setMigrations(ops.map(migrationOf).filter((m): m is Migration => m !== undefined));
    setVmNames(new Map(vms.map((v) => [v.id, v.name])));
  }, (e: unknown) => setError(messageOf(e)));

  useEffect(() => {
    void loadHosts();
    void loadOperations();
    void loadMigrations();
    const ac = new AbortController();
    void followEvents((e) => {
      if (e.type === 'host') void loadHosts(); // one went down or came up
      // an operation changed: read the lists again, at most once a second (a pull reports often)
      if (e.type === 'operation' && reloadTimer.current === undefined) {
        reloadTimer.current = setTimeout(() => {
          reloadTimer.current = undefined;
          void loadOperations();
          void loadMigrations();
        }, 1000);
      }
    }, ac.signal);
    return () => {
      ac.abort();
      clearTimeout(reloadTimer.current);
    };
  }, []);

  const inFlight = (operations ?? []).filter((o) => IN_FLIGHT.has(o.status));
  return (
    <section aria-labelledby="operator-title" class="stack">
      <h2 id="operator-title">Operator</h2>
      {error ? <p role="alert" class="error">{error}</p> : null}

      <div class="toolbar"><h3 id="agents-title">Agents</h3><button type="button" onClick={() => void loadHosts()}>Refresh agents</button></div>
      {!hosts ? <p>Loading…</p> : (
        <table class="figures" aria-labelledby="agents-title" data-testid="agents">
          <thead><tr><th scope="col">Agent</th><th scope="col">State</th><th scope="col">Reason</th><th scope="col">Last seen</th><th scope="col">Zone</th><th scope="col">Instances</th></tr></thead>
          <tbody>{hosts.map((h) => {
            const seen = h.lastSeenAt;
            return (
              <tr key={h.name} data-testid={`agent-${h.name}`}>
                <th scope="row">{h.name}{h.local ? <span class="muted"> (embedded)</span> : null}</th>
                <td><span class={`state ${h.state}`}>{h.state}</span>{h.disabled ? <> <span class="state down">disabled</span></> : null}</td>
                <td class="left">{[h.reason, h.disabled ? h.disabledReason : undefined].filter(Boolean).join(' · ') || '—'}</td>
                <td title={seen}>{ago(seen)}</td>
                <td>{h.zone}</td>
                <td>{h.containers ?? 0} containers, {h.vms} VMs</td>
              </tr>
            );
          })}</tbody>
        </table>
      )}

      <h3 id="ops-title">Operations in flight</h3>
      {!operations ? <p>Loading…</p> : inFlight.length === 0 ? <p class="muted" data-testid="operations-none">None in flight ({operations.length} recent, all ended).</p> : (
        <table class="figures" aria-labelledby="ops-title" data-testid="operations">
          <thead><tr><th scope="col">Kind</th><th scope="col">Target</th><th scope="col">Status</th><th scope="col">Progress</th><th scope="col">Started</th></tr></thead>
          <tbody>{inFlight.map((o) => (
            <tr key={o.id}><th scope="row">{o.kind}</th><td class="left">{o.target}</td><td>{o.status}</td><td class="left">{progressText(o.progress)}</td><td>{ago(o.createdAt)}</td></tr>
          ))}</tbody>
        </table>
      )}

      <h3 id="migrations-title">Recent migrations</h3>
      <p class="muted">The newest {MAX_MIGRATIONS} live migrations the store keeps, with their reports.</p>
      {!migrations ? <p>Loading…</p> : migrations.length === 0 ? <p class="muted" data-testid="migrations-none">No VM has been migrated.</p> : (
        <table class="figures" aria-labelledby="migrations-title" data-testid="migrations">
          <thead><tr><th scope="col">VM</th><th scope="col">From → to</th><th scope="col">Outcome</th><th scope="col">Downtime</th><th scope="col">Total</th><th scope="col">RAM sent</th><th scope="col">Disk mirrored</th><th scope="col">When</th></tr></thead>
          <tbody>{migrations.map((m) => (
            <tr key={m.id} data-testid={`migration-${m.vm}`}>
              <th scope="row" title={m.vm}>{vmNames.get(m.vm) ?? m.vm.slice(0, 12)}</th><td>{m.from ? `${m.from} → ${m.to}` : '—'}</td>
              <td>{m.outcome === 'failed' ? <span class="error" title={m.error}>failed</span> : m.outcome}</td>
              <td>{m.downtimeMs === undefined ? '—' : `${m.downtimeMs} ms`}</td>
              <td>{m.totalMs === undefined ? '—' : `${m.totalMs} ms`}</td>
              <td>{m.bytes === undefined ? '—' : `${bytes(m.bytes)}${m.iterations ? ` in ${m.iterations} passes` : ''}`}</td>
              <td>{m.diskBytes === undefined ? '—' : bytes(m.diskBytes)}</td>
              <td title={m.time}>{ago(m.time)}</td>
            </tr>
          ))}</tbody>
        </table>
      )}
    </section>
  );
}

/** An operation's progress in a few words: a pull's bytes, else its phase or step. */
export function progressText(p: Record<string, unknown>): string {
  const done = typeof p.bytesDone === 'number' ? p.bytesDone : undefined;
  const total = typeof p.bytesTotal === 'number' ? p.bytesTotal : undefined;
  const phase = typeof p.phase === 'string' ? p.phase : typeof p.step === 'string' ? p.step : '';
  if (done !== undefined && total) return `${phase ? `${phase} ` : ''}${bytes(done)} of ${bytes(total)} (${Math.round((done / total) * 100)}%)`;
  return phase || '—';
}
