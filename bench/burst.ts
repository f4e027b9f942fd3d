/**
 * Burst start: N containers (env BENCH_BURST, default 200) created and started
 * concurrently through the API (what `nimbus run -d IMAGE sleep 3600` does),
 * timed until every one is running; then the daemon's memory with them idle
 * (VmRSS before vs with them → per-container delta), the conmon monitors'
 * memory (VmRSS and PSS per conmon, informative), then all force-removed and
 * the cleanup verified (no containers, conmons, runtime state or mounts left).
 * Goals (from the issue): all running within 1 s; ≤ 1 MiB daemon memory per idle container.
 * Run alone: node dist/bench/burst.js
 */
import { readFileSync } from 'node:fs';
import { run } from '../src/core/exec.js';
import { mountsUnder, pidsMatching, rssKiB } from './lib/cleanup.js';
import { nimbusRunRm, runtimeRoots, type BenchDaemon, type UnixClient } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { msSince, now, round, summarize } from './lib/stats.js';

const NAME = 'burst';
const COUNT = Math.max(1, Number(process.env.BENCH_BURST ?? 200));
const GOAL_ALL_RUNNING_MS = 1000;
const GOAL_RSS_PER_CONTAINER_KIB = 1024;

function pssKiB(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function runningCount(client: UnixClient): Promise<number> {
  const list = await client.json<{ status: string }[]>('GET', '/containers');
  return list.filter((c) => c.status === 'running').length;
}

/** What is left of containers after removal (should be nothing). */
interface AgentCounters { warmPool?: { ready: number }; removals?: { pending: number } }
const agentCounters = async (d: BenchDaemon) => (await d.client.json<{ agent: AgentCounters }>('GET', '/info')).agent;

/** What is left of containers after removal (should be nothing but the warm pool's, which are not containers). */
async function leftovers(d: BenchDaemon): Promise<{ containers: number; conmons: number; runtimeState: number; mounts: number }> {
  const containers = (await d.client.json<unknown[]>('GET', '/containers?all=true')).length;
  const warm = (await agentCounters(d)).warmPool?.ready ?? 0;
  const conmons = pidsMatching('conmon', d.home).length - warm;
  let runtimeState = -warm;
  for (const root of runtimeRoots(d.home)) {
    runtimeState += (await run(root.runtime, ['--root', root.dir, 'list', '-q'])).stdout.split('\n').filter(Boolean).length;
  }
  return { containers, conmons, runtimeState, mounts: mountsUnder(d.home).length - warm };
}

export async function burst(env: BenchEnv): Promise<BenchOutcome> {
  const d = await env.newDaemon();
  try {
    await d.pull(env.busybox);
    await nimbusRunRm(d.client, env.busybox); // warm: image unpacked, runtime binary cached
    await sleep(500);
    // With a warm pool sized for the burst (NIMBUS_WARM_POOL >= N), let it fill first: that
    // is the configuration for expected bursts (RunD's pre-created sandboxes).
    const wantWarm = Math.min(COUNT, Number(process.env.NIMBUS_WARM_POOL ?? 2));
    const tw = now();
    let ready = 0;
    while ((ready = (await agentCounters(d)).warmPool?.ready ?? 0) < wantWarm && msSince(tw) < 120_000) await sleep(200);
    note(NAME, `warm pool: ${ready} ready (${Math.round(msSince(tw))} ms to fill)`);
    await sleep(300);
    const rssBefore = d.rssKiB();
    note(NAME, `${COUNT} concurrent create+start (sleep 3600); daemon RSS before ${rssBefore} KiB`);

    const ids: string[] = [];
    const errors: string[] = [];
    const perContainer: number[] = [];
    const t0 = now();
    await Promise.all(Array.from({ length: COUNT }, async (_, i) => {
      const ti = now();
      try {
        const c = await d.client.json<{ id: string }>('POST', '/containers', { image: env.busybox, cmd: ['sleep', '3600'], name: `burst-${i}` });
        ids.push(c.id);
        await d.client.json('POST', `/containers/${encodeURIComponent(c.id)}/start`);
        perContainer.push(msSince(ti));
      } catch (e) {
        errors.push(e instanceof Error ? e.message : String(e));
      }
    }));
    const allStartedMs = msSince(t0);
    // "running" as the API reports it: poll until every started container is listed running (or 60 s).
    let running = await runningCount(d.client);
    while (running < COUNT - errors.length && msSince(t0) < 60_000) {
      await sleep(20);
      running = await runningCount(d.client);
    }
    const allRunningMs = msSince(t0);
    note(NAME, `${running}/${COUNT} running after ${Math.round(allRunningMs)} ms (${errors.length} errors)`);

    await sleep(1000);
    const rssWith = d.rssKiB();
    const conmons = pidsMatching('conmon', d.home);
    const conmonRss = conmons.map(rssKiB).filter((x) => !Number.isNaN(x));
    const conmonPss = conmons.map(pssKiB).filter((x) => !Number.isNaN(x));
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

    note(NAME, `removing ${ids.length} (force)`);
    const tr = now();
    const removeErrors: string[] = [];
    await Promise.all(ids.map((id) => d.client.json('DELETE', `/containers/${encodeURIComponent(id)}?force=true`).catch((e: unknown) => removeErrors.push(String(e)))));
    const removeAllMs = msSince(tr);
    // The API answers before the host state is gone (agent/reaper.ts): time that too.
    while (((await agentCounters(d)).removals?.pending ?? 0) > 0 && msSince(tr) < 120_000) await sleep(20);
    const removeHostMs = msSince(tr);
    let left = await leftovers(d);
    for (let i = 0; i < 50 && (left.conmons > 0 || left.runtimeState > 0); i++) {
      await sleep(100);
      left = await leftovers(d);
    }
    // Verdict after the daemon stopped (below): while it runs, a refilling warm pool makes counts racy.

    const rssAfterRemove = d.rssKiB();
    const daemonLeft = await d.stop();

    const perContainerKiB = running > 0 ? round((rssWith - rssBefore) / running) : null;
    const results = {
      containers: COUNT,
      started: perContainer.length,
      running,
      errors: errors.slice(0, 5),
      errorCount: errors.length,
      allStartedMs: Math.round(allStartedMs),
      allRunningMs: Math.round(allRunningMs),
      createStartPerContainerMs: summarize(perContainer),
      warmReadyAtStart: ready,
      removeAllMs: Math.round(removeAllMs),
      removeHostStateMs: Math.round(removeHostMs),
      removeErrors: removeErrors.slice(0, 5),
      daemonRssKiB: { before: rssBefore, withContainers: rssWith, afterRemove: rssAfterRemove, perContainer: perContainerKiB },
      conmon: {
        count: conmons.length,
        rssKiBPerContainer: conmonRss.length ? round(sum(conmonRss) / conmonRss.length) : null,
        pssKiBPerContainer: conmonPss.length ? round(sum(conmonPss) / conmonPss.length) : null,
      },
      cleanup: { ...left, daemonLeftovers: daemonLeft.length, clean: left.containers === 0 && daemonLeft.length === 0 },
      goals: {
        allRunningMs: GOAL_ALL_RUNNING_MS,
        daemonRssKiBPerContainer: GOAL_RSS_PER_CONTAINER_KIB,
        allRunningMet: running === COUNT && allRunningMs <= GOAL_ALL_RUNNING_MS,
        rssMet: perContainerKiB !== null && perContainerKiB <= GOAL_RSS_PER_CONTAINER_KIB,
      },
    };
    const record = makeRecord(NAME, { results, peers: {}, ratios: {} });
    return {
      record,
      summary: [
        { bench: NAME, figure: `${COUNT} concurrent starts → all running`, unit: 'ms', nimbus: Math.round(allRunningMs), peers: {}, ratio: null, goal: `≤ ${GOAL_ALL_RUNNING_MS} ms`, met: results.goals.allRunningMet, note: `${running}/${COUNT} running, ${errors.length} errors` },
        { bench: NAME, figure: 'daemon RSS per idle container', unit: 'KiB', nimbus: perContainerKiB, peers: {}, ratio: null, goal: `≤ ${GOAL_RSS_PER_CONTAINER_KIB} KiB`, met: results.goals.rssMet, note: `before ${rssBefore} KiB, with ${rssWith} KiB` },
        { bench: NAME, figure: 'conmon RSS (PSS) per container', unit: 'KiB', nimbus: results.conmon.rssKiBPerContainer, peers: {}, ratio: null, note: `PSS ${results.conmon.pssKiBPerContainer ?? '—'} KiB, informative` },
        { bench: NAME, figure: `force-remove all ${ids.length}`, unit: 'ms', nimbus: Math.round(removeAllMs), peers: {}, ratio: null, note: `${results.cleanup.clean ? 'cleanup verified' : `LEFT: ${JSON.stringify(left)} ${daemonLeft.join(', ')}`}; host state gone after ${Math.round(removeHostMs)} ms` },
      ],
    };
  } finally {
    await d.stop();
  }
}

if (isMain(import.meta.url)) await runStandalone(NAME, burst);
