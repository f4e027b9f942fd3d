/**
 * Containers and VMs of the project in one list. Loaded once, then kept live by the event
 * stream (an event about an instance re-reads that one instance): no polling. The list renders
 * only the rows in view, so 1,000 instances cost what 30 do.
 */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { act, ApiError, fetchInstance, followEvents, listInstances, ndjson, type Action, type Instance, type LogLine, type Project } from '../api.js';
import type { Route } from '../app.js';
import { canWrite } from '../roles.js';
import { mib } from '../format.js';
import { ContainerConsole, VmConsole } from './console.js';

const ROW_HEIGHT = 40;
const OVERSCAN = 8;

function actionsFor(i: Instance): Action[] {
  const running = i.status === 'running' || i.status === 'restarting';
  const out: Action[] = [];
  if (running) out.push('stop', ...(i.kind === 'container' ? ['restart' as const] : []), 'pause');
  else if (i.status === 'paused') out.push('unpause', 'stop');
  else if (i.status !== 'removing' && i.status !== 'saved') out.push('start');
  out.push('remove');
  return out;
}

const LABEL: Record<Action, string> = { start: 'Start', stop: 'Stop', restart: 'Restart', pause: 'Pause', unpause: 'Resume', remove: 'Remove' };

function ActionButtons({ i, onError }: { i: Instance; onError: (m: string) => void }) {
  const [busy, setBusy] = useState<Action | null>(null);
  return (
    <span class="actions">
      {actionsFor(i).map((a) => (
        <button key={a} type="button" class={a === 'remove' ? 'danger' : ''} disabled={busy !== null} aria-label={`${LABEL[a]} ${i.name}`}
          onClick={(e) => {
            e.stopPropagation();
            if (a === 'remove' && !confirm(`Remove ${i.kind} ${i.name}? It is force-removed if running.`)) return;
            setBusy(a);
            act(i, a).catch((x: unknown) => onError(x instanceof ApiError ? x.message : String(x))).finally(() => setBusy(null));
          }}>{busy === a ? '…' : LABEL[a]}</button>
      ))}
    </span>
  );
}

export function InstancesView({ project, role, selected, navigate }: {
  project: Project; role: string | undefined; selected: { kind: 'container' | 'vm'; id: string } | undefined; navigate: (r: Route) => void;
}) {
  const [byId, setById] = useState<Map<string, Instance>>(new Map());
  const [loaded, setLoaded] = useState(false);
  const [live, setLive] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [filter, setFilter] = useState('');
  const writer = canWrite(role);

  useEffect(() => {
    const ac = new AbortController();
    const upsert = (i: Instance) => setById((m) => new Map(m).set(i.id, i));
    const drop = (id: string) => setById((m) => {
      if (!m.has(id)) return m;
      const n = new Map(m);
      n.delete(id);
      return n;
    });
    // One read in flight per instance, and one more after it when events came meanwhile: two
    // reads racing could land out of order and leave an older state on screen (CI saw a row
    // stay "created" after its start).
    const reading = new Map<string, { again: boolean }>();
    const destroyed = new Set<string>(); // a read that was in flight when it went must not bring it back
    const reread = (kind: 'container' | 'vm', id: string): void => {
      const inFlight = reading.get(id);
      if (inFlight) { inFlight.again = true; return; }
      const mark = { again: false };
      reading.set(id, mark);
      fetchInstance(kind, id).then((i) => { if (!ac.signal.aborted) (i && !destroyed.has(id) ? upsert(i) : drop(id)); }, () => undefined).finally(() => {
        reading.delete(id);
        if (mark.again && !ac.signal.aborted) reread(kind, id);
      });
    };
    // Subscribe first, then list: an event that lands in between is re-read, never lost.
    void followEvents((e) => {
      if ((e.type !== 'container' && e.type !== 'vm') || e.projectId !== project.id) return;
      if (e.action === 'destroy') { destroyed.add(e.id); return drop(e.id); }
      reread(e.type, e.id);
    }, ac.signal, () => setLive(true));
    listInstances(project.path, ac.signal).then((list) => {
      setById((m) => {
        const n = new Map(list.filter((i) => !destroyed.has(i.id)).map((i) => [i.id, i] as const));
        for (const [id, i] of m) n.set(id, i); // what an event already brought is newer
        return n;
      });
      setLoaded(true);
    }, (e: unknown) => !ac.signal.aborted && setError(e instanceof ApiError ? e.message : String(e)));
    return () => ac.abort();
  }, [project.id, project.path]);

  const rows = useMemo(() => {
    const all = [...byId.values()].sort((a, b) => a.name.localeCompare(b.name));
    const f = filter.trim().toLowerCase();
    return f ? all.filter((i) => i.name.toLowerCase().includes(f) || i.status.includes(f) || i.image.toLowerCase().includes(f)) : all;
  }, [byId, filter]);

  const current = selected ? byId.get(selected.id) : undefined;

  return (
    <div class="instances-layout">
      <section aria-labelledby="instances-title" class="instances">
        <div class="toolbar">
          <h2 id="instances-title">Instances <span class="muted" data-testid="instance-count">{rows.length}</span></h2>
          <span class={`live ${live ? 'on' : ''}`} data-testid="live" title="Live updates from the event stream">{live ? 'live' : 'connecting…'}</span>
          <label>Filter <input type="search" value={filter} onInput={(e) => setFilter((e.target as HTMLInputElement).value)} /></label>
          {writer ? <button type="button" onClick={() => navigate({ view: 'create' })}>Create container</button> : null}
          {writer ? <button type="button" onClick={() => navigate({ view: 'create-vm' })}>Create VM</button> : null}
        </div>
        {error ? <p role="alert" class="error">{error}</p> : null}
        {!loaded ? <p>Loading…</p> : rows.length === 0 ? <p class="muted">No instances in {project.path}.</p> : (
          <VirtualTable rows={rows} writer={writer} selectedId={selected?.id} onError={setError}
            onSelect={(i) => navigate({ view: 'instances', selected: { kind: i.kind, id: i.id } })} />
        )}
      </section>
      {selected ? (
        <InstanceDetail key={selected.id} kind={selected.kind} id={selected.id} instance={current} writer={writer} onError={setError}
          onClose={() => navigate({ view: 'instances' })} />
      ) : null}
    </div>
  );
}

function VirtualTable({ rows, writer, selectedId, onSelect, onError }: {
  rows: Instance[]; writer: boolean; selectedId: string | undefined; onSelect: (i: Instance) => void; onError: (m: string) => void;
}) {
  const scroller = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(600);
  useEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const first = Math.max(0, Math.floor(scrollTop / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(rows.length, Math.ceil((scrollTop + height) / ROW_HEIGHT) + OVERSCAN);
  const visible = rows.slice(first, last);
  return (
    <div class="table" role="table" aria-label="Instances" aria-rowcount={rows.length + 1}>
      <div class="row head" role="row" aria-rowindex={1}>
        <span role="columnheader">Name</span><span role="columnheader">Kind</span><span role="columnheader">State</span>
        <span role="columnheader">Image</span><span role="columnheader">CPUs</span><span role="columnheader">Memory</span>
        <span role="columnheader">Host</span><span role="columnheader">{writer ? 'Actions' : ''}</span>
      </div>
      <div class="scroller" ref={scroller} onScroll={(e) => setScrollTop((e.target as HTMLDivElement).scrollTop)}>
        <div style={{ height: `${rows.length * ROW_HEIGHT}px`, position: 'relative' }}>
          {visible.map((i, k) => (
            <div key={i.id} role="row" aria-rowindex={first + k + 2} data-testid={`row-${i.name}`} data-state={i.status}
              class={`row${i.id === selectedId ? ' selected' : ''}`} style={{ top: `${(first + k) * ROW_HEIGHT}px` }}>
              <span role="cell"><a href={`/ui/instances/${i.kind}/${encodeURIComponent(i.id)}`} onClick={(e) => {
                e.preventDefault();
                onSelect(i);
              }}>{i.name}</a></span>
              <span role="cell">{i.kind === 'vm' ? 'VM' : 'container'}</span>
              <span role="cell"><span class={`state ${i.status}`} data-testid={`state-${i.name}`}>{i.status}</span></span>
              <span role="cell" class="ellipsis" title={i.image}>{i.image}</span>
              <span role="cell">{i.cpus ?? '—'}</span>
              <span role="cell">{mib(i.memoryMiB)}</span>
              <span role="cell" class="ellipsis">{i.host}</span>
              <span role="cell">{writer ? <ActionButtons i={i} onError={onError} /> : null}</span>
            </div>
          ))}
        </div>
      </div>
    </div>
  );
}

const MAX_LOG_LINES = 2000;

function InstanceDetail({ kind, id, instance, writer, onClose, onError }: {
  kind: 'container' | 'vm'; id: string; instance: Instance | undefined; writer: boolean; onClose: () => void; onError: (m: string) => void;
}) {
  const [lines, setLines] = useState<LogLine[]>([]);
  const [ended, setEnded] = useState(false);
  const [consoleOpen, setConsoleOpen] = useState(false);
  const pre = useRef<HTMLPreElement>(null);
  const status = instance?.status;
  useEffect(() => {
    // Follow the output; when it ends (the instance stopped) a later start opens a new follow.
    const ac = new AbortController();
    setEnded(false);
    setLines([]); // tail replays what was shown
    (async () => {
      const path = `/${kind === 'container' ? 'containers' : 'vms'}/${encodeURIComponent(id)}/logs?follow=true&tail=500`;
      const batch: LogLine[] = [];
      let scheduled = false;
      for await (const l of ndjson<LogLine>(path, ac.signal)) {
        batch.push(l);
        if (!scheduled) {
          scheduled = true;
          // one render per frame, however fast lines come
          requestAnimationFrame(() => {
            scheduled = false;
            const add = batch.splice(0);
            setLines((old) => [...old, ...add].slice(-MAX_LOG_LINES));
          });
        }
      }
      setEnded(true);
    })().catch((e: unknown) => {
      if (!ac.signal.aborted) setEnded(true);
      if (!ac.signal.aborted && !(e instanceof ApiError && e.status === 404)) onError(e instanceof Error ? e.message : String(e));
    });
    return () => ac.abort();
  }, [kind, id, status === 'running']);
  useEffect(() => {
    const el = pre.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [lines]);
  return (
    <aside class="detail" aria-labelledby="detail-title">
      <div class="toolbar">
        <h2 id="detail-title">{instance?.name ?? id}</h2>
        {instance ? <span class={`state ${instance.status}`}>{instance.status}</span> : <span class="muted">removed</span>}
        <button type="button" onClick={onClose} aria-label="Close details">Close</button>
      </div>
      {instance ? <p class="muted">{kind === 'vm' ? 'VM' : 'container'} · {instance.image} · host {instance.host} · id {instance.id.slice(0, 12)}</p> : null}
      {instance && writer ? <ActionButtons i={instance} onError={onError} /> : null}
      {/* a console needs the member role, as POST /vms/{id}/console and the exec do: a VM's serial line, a container's sh on a TTY */}
      {writer && instance?.status === 'running' ? (
        consoleOpen ? <><button type="button" onClick={() => setConsoleOpen(false)}>Close console</button>
          {kind === 'vm' ? <VmConsole id={id} name={instance.name} /> : <ContainerConsole id={id} name={instance.name} />}</>
          : <button type="button" onClick={() => setConsoleOpen(true)}>Open console</button>
      ) : null}
      <h3>Logs {ended ? <span class="muted">(not following: the output ended)</span> : <span class="muted">(following)</span>}</h3>
      <pre class="logs" role="log" aria-live="polite" tabIndex={0} ref={pre} data-testid="logs">
        {lines.map((l, n) => <span key={n} class={l.stream}>{l.line}{'\n'}</span>)}
      </pre>
    </aside>
  );
}
