/**
 * The quota's word on a create before it is submitted (POST /quota/{project}/explain: would it
 * be admitted, which ledger line decides, which loans it takes), refreshed as the size changes.
 */
import { useEffect, useState } from 'preact/hooks';
import { call, messageOf, type Explanation } from '../api.js';

export interface Demand { instances: number; cpus: number; memory: number; disk?: number }

export function useExplanation(projectPath: string, demand: Demand): Explanation | null {
  const [explanation, setExplanation] = useState<Explanation | null>(null);
  const { instances, cpus, memory, disk } = demand;
  useEffect(() => {
    const ac = new AbortController();
    // debounced: typing "1024" asks once, not four times
    const t = setTimeout(() => {
      call<Explanation>('POST', `/quota/${encodeURIComponent(projectPath)}/explain`, { instances, cpus, memory, ...(disk ? { disk } : {}) }, ac.signal).then(setExplanation, (e: unknown) => {
        if (!ac.signal.aborted) setExplanation({ admitted: false, reason: messageOf(e), decidedBy: { projectPath }, loans: [] });
      });
    }, 200);
    return () => {
      clearTimeout(t);
      ac.abort();
    };
  }, [projectPath, instances, cpus, memory, disk]);
  return explanation;
}

export function ExplanationBox({ explanation }: { explanation: Explanation | null }) {
  return (
    <div class={`explain ${explanation?.admitted ? 'ok' : 'refused'}`} role="status" aria-live="polite" data-testid="quota-explanation">
      {explanation ? (
        <>
          <strong>{explanation.admitted ? 'Quota: admitted' : 'Quota: would be refused'}</strong>
          <span> — {explanation.reason}</span>
          {explanation.loans.length ? <ul>{explanation.loans.map((l, i) => <li key={i}>borrows {l.amount} {l.resource} from {l.lenderPath}</li>)}</ul> : null}
        </>
      ) : 'Asking the quota ledger…'}
    </div>
  );
}
