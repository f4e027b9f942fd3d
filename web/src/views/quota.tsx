import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, type Loan, type Project, type QuotaView as Quota } from '../api.js';

const COLUMNS = ['hard', 'used', 'reserved', 'allocated', 'free', 'lent', 'borrowed', 'pool'] as const;
const UNIT: Record<string, string> = { memory: ' MiB' };

export function QuotaView({ project }: { project: Project }) {
  const [quota, setQuota] = useState<Quota | null>(null);
  const [loans, setLoans] = useState<Loan[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const p = encodeURIComponent(project.path);
    Promise.all([call<Quota>('GET', `/quota/${p}`), call<Loan[]>('GET', `/quota/${p}/loans`)]).then(([qv, l]) => {
      setQuota(qv);
      setLoans(l);
    }, (e: unknown) => setError(e instanceof ApiError ? e.message : String(e)));
  }, [project.path]);
  if (error) return <p role="alert">{error}</p>;
  if (!quota) return <p>Loading…</p>;
  return (
    <section aria-labelledby="quota-title">
      <h2 id="quota-title">Quota of {project.path}</h2>
      <table class="figures">
        <caption>Per resource, as the quota ledger shows it (0 hard: unlimited unless a parent limits it)</caption>
        <thead><tr><th scope="col">Resource</th>{COLUMNS.map((c) => <th scope="col" key={c}>{c}</th>)}</tr></thead>
        <tbody>
          {Object.entries(quota.resources).map(([name, f]) => (
            <tr key={name}><th scope="row">{name}</th>{COLUMNS.map((c) => <td key={c}>{f[c]}{f[c] ? UNIT[name] ?? '' : ''}</td>)}</tr>
          ))}
        </tbody>
      </table>
      <h3>Loans</h3>
      {loans.length === 0 ? <p class="muted">No active loans.</p> : (
        <table class="figures">
          <thead><tr><th scope="col">Lender</th><th scope="col">Borrower</th><th scope="col">Resource</th><th scope="col">Amount</th><th scope="col">Instance</th></tr></thead>
          <tbody>{loans.map((l, i) => <tr key={i}><td>{l.lenderPath}</td><td>{l.borrowerPath}</td><td>{l.resource}</td><td>{l.amount}</td><td>{l.instance ?? ''}</td></tr>)}</tbody>
        </table>
      )}
      <h3>Pools</h3>
      {quota.pools.length === 0 ? <p class="muted">No pools owned by this project.</p> : quota.pools.map((pool) => (
        <div key={pool.id} class="pool">
          <h4>{pool.id}</h4>
          <p>Capacity {JSON.stringify(pool.capacity)} · used {JSON.stringify(pool.used)}</p>
          <ul>{pool.members.map((m) => <li key={m.project}>{m.project}: weight {m.weight}</li>)}</ul>
        </div>
      ))}
      {quota.memberOf.length ? <p>Member of pools: {quota.memberOf.join(', ')}</p> : null}
    </section>
  );
}
