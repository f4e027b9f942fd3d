/**
 * Where `run --rm IMAGE true` spends its time, phase by phase, through the API:
 * create → start returned → exit seen (wait not-running) → removal done.
 * A diagnostic, not a benchmark with peers: node dist/bench/profile-run.js [runs]
 */
import { setupEnv } from './lib/env.js';
import { cleanup } from './lib/cleanup.js';
import { summarize } from './lib/stats.js';

const runs = Number(process.argv[2] ?? 20);
const env = await setupEnv();
try {
  const d = await env.newDaemon();
  await d.pull(env.busybox);
  const phases: Record<string, number[]> = { create: [], start: [], exit: [], remove: [], total: [] };
  for (let i = -2; i < runs; i++) {
    const t0 = performance.now();
    const c = await d.client.json<{ id: string }>('POST', '/containers', { image: env.busybox, cmd: ['true'] });
    const t1 = performance.now();
    const exited = d.client.json<{ exitCode: number }>('POST', `/containers/${c.id}/wait?condition=not-running`);
    await d.client.json('POST', `/containers/${c.id}/start`);
    const t2 = performance.now();
    await exited;
    const t3 = performance.now();
    await d.client.request('DELETE', `/containers/${c.id}`);
    const t4 = performance.now();
    if (process.env.GAP_MS) await new Promise((r) => setTimeout(r, Number(process.env.GAP_MS)));
    if (i < 0) continue;
    phases.create!.push(t1 - t0); phases.start!.push(t2 - t1); phases.exit!.push(t3 - t2); phases.remove!.push(t4 - t3); phases.total!.push(t4 - t0);
  }
  const info = await d.client.json<{ agent?: { warmPool?: unknown }; warmPool?: unknown }>('GET', '/info');
  console.log('warm pool', JSON.stringify(info.agent?.warmPool ?? info.warmPool ?? info));
  for (const [k, v] of Object.entries(phases)) { const s = summarize(v); console.log(k.padEnd(8), 'p50', s.p50, 'p95', s.p95); }
  await d.stop();
} finally {
  await cleanup.runAll();
}
