import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, type Host } from '../api.js';
import { bytes } from '../format.js';

/** A capacity bar: what is allocated against what may be (capacity × over-commit ratio). */
function Bar({ label, used, total, show }: { label: string; used: number; total: number; show: (n: number) => string }) {
  const pct = total > 0 ? Math.min(100, (used / total) * 100) : 0;
  return (
    <div class="bar-row">
      <span class="bar-label">{label}</span>
      <div class="bar" role="meter" aria-label={`${label} allocated`} aria-valuemin={0} aria-valuemax={total} aria-valuenow={used} aria-valuetext={`${show(used)} of ${show(total)}`}>
        <div class={`bar-fill${pct > 90 ? ' high' : ''}`} style={{ width: `${pct}%` }} />
      </div>
      <span class="bar-text">{show(used)} / {show(total)}</span>
    </div>
  );
}

export function HostsView() {
  const [hosts, setHosts] = useState<Host[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    call<Host[]>('GET', '/hosts').then(setHosts, (e: unknown) => setError(e instanceof ApiError ? e.message : String(e)));
  }, []);
  if (error) return <p role="alert">{error}</p>;
  if (!hosts) return <p>Loading…</p>;
  return (
    <section aria-labelledby="hosts-title">
      <h2 id="hosts-title">Hosts</h2>
      <ul class="hosts">
        {hosts.map((h) => {
          const a = h.allocated ?? { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };
          return (
            <li key={h.name} class="host" data-testid={`host-${h.name}`}>
              <h3>{h.name} <span class={`state ${h.state}`}>{h.state}</span>{h.disabled ? <span class="state down">disabled</span> : null}</h3>
              <p class="muted">zone {h.zone}{h.local ? ' · embedded' : ''} · {h.containers ?? 0} containers · {h.vms} VMs{h.reason ? ` · ${h.reason}` : ''}</p>
              <Bar label="vCPUs" used={a.vcpus} total={(h.cpus ?? 0) * h.allocationRatios.cpu} show={(n) => n.toFixed(n % 1 ? 1 : 0)} />
              <Bar label="Memory" used={a.memoryBytes} total={(h.memoryBytes ?? 0) * h.allocationRatios.memory} show={bytes} />
              <Bar label="Disk" used={a.diskBytes} total={(h.diskBytes ?? 0) * h.allocationRatios.disk} show={bytes} />
            </li>
          );
        })}
      </ul>
    </section>
  );
}
