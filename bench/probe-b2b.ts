/** Ad-hoc probe (not committed): b2b run --rm with the daemon's and the host's CPU per request. */
import { readFileSync } from 'node:fs';
import { nimbusRunRm } from './lib/daemon.js';
import { runStandalone } from './lib/env.js';
import { makeRecord } from './lib/result.js';

const TICK = 10; // ms per clock tick (USER_HZ 100)
const hostCpu = () => { const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number); return { busy: (f[0]! + f[1]! + f[2]! + f[5]! + f[6]!) * TICK, all: f.reduce((a, b) => a + b, 0) * TICK }; };
const procCpu = (pid: number) => { const s = readFileSync(`/proc/${pid}/stat`, 'utf8'); const f = s.slice(s.lastIndexOf(')') + 2).split(' '); return { user: Number(f[11]) * TICK, sys: Number(f[12]) * TICK }; };
const N = Number(process.env.PROBE_RUNS ?? 100);
const ROUNDS = Number(process.env.PROBE_ROUNDS ?? 2);

await runStandalone('probe-b2b', async (env) => {
  const d = await env.newDaemon();
  try {
    await d.pull(env.busybox);
    for (let i = 0; i < 20; i++) { await nimbusRunRm(d.client, env.busybox); await new Promise((r) => setTimeout(r, 150)); }
    for (let r = 0; r < ROUNDS; r++) {
      await new Promise((res) => setTimeout(res, 3000));
      const h0 = hostCpu(); const p0 = procCpu(d.pid); const t0 = Date.now();
      const lat: number[] = [];
      for (let i = 0; i < N; i++) { const s = performance.now(); await nimbusRunRm(d.client, env.busybox); lat.push(performance.now() - s); }
      const wall = Date.now() - t0; const h1 = hostCpu(); const p1 = procCpu(d.pid);
      lat.sort((a, b) => a - b);
      console.log(JSON.stringify({ round: r, p50: lat[Math.floor(N / 2)]!.toFixed(1), p95: lat[Math.floor(N * 0.95)]!.toFixed(1), wallPerReq: (wall / N).toFixed(1), hostCpuPerReq: ((h1.busy - h0.busy) / N).toFixed(1), daemonUser: ((p1.user - p0.user) / N).toFixed(1), daemonSys: ((p1.sys - p0.sys) / N).toFixed(1) }));
    }
  } finally { await d.stop(); }
  return { record: makeRecord('probe-b2b', { results: {} }), summary: [] };
});
