/**
 * A container moved live (CRIU: checkpoint, copy, restore) against the same container moved cold
 * (stop, copy, create, start), between two hosts: a real nimbusd (control plane and embedded agent
 * "local") and a second agent in a network namespace of its own (test/helpers/second-host.ts),
 * the container (runc) on a user network spanning both. It counts in memory and answers on a TCP
 * listener; BENCH_MOVE_ROUNDS (default 3) rounds of: live to the second host and back, then cold
 * there and back. Per move: the operation's total and downtime (its report: stop or checkpoint at
 * the source until start or restore at the destination). The live moves must keep the counter
 * going (never back to 1); after each move a client container on the first host must get the
 * listener's answer by name (across the overlay when the container is away). Figures are medians;
 * the ratio is live / cold.
 *   node dist/bench/run.js container-move
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startDaemonProcess, type DaemonProcess } from '../test/helpers/daemon-process.js';
import { agentInNamespace, secondHost, tearDownTwoHosts, type NamespaceAgent, type SecondHost } from '../test/helpers/second-host.js';
import { vxlanMissing } from '../src/agent/network/network-test-env.js';
import { buildTestImages, writeOciLayoutTar } from '../scripts/fixtures/images.js';
import { run } from '../src/core/exec.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { median, ratio, round } from './lib/stats.js';

const NAME = 'container-move';
const ROUNDS = Math.max(1, Number(process.env.BENCH_MOVE_ROUNDS ?? 3));
const AGENT = 'bench-move-b';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const B_CGROUPS = `/nimbus-bmv-${process.pid}`;

/** Counts in a shell variable (to /count), answers "listening" on 8080; ends on SIGTERM (a cold move's stop is not a 10 s wait). */
const STATEFUL = ['sh', '-c', [
  'echo listening > /reply',
  'nc -ll -p 8080 -e cat /reply &',
  'n=0; while true; do n=$((n+1)); echo $n > /count; sleep 0.2; done &',
  'trap "exit 0" TERM; wait',
].join('\n')];

interface Report { totalMs: number; downtimeMs: number; live?: { checkpointBytes: number; checkpointMs: number; restoreMs: number } }
interface Move { kind: 'live' | 'cold'; totalMs: number; downtimeMs: number; reachedAfterMs: number | null; checkpointBytes?: number; counterKept?: boolean }

export async function containerMove(): Promise<BenchOutcome> {
  const noVxlan = await vxlanMissing(`cm${process.pid}`);
  if (noVxlan) throw new Error(`this kernel cannot carry the overlay: ${noVxlan}`);
  const work = await mkdtemp(path.join(tmpdir(), 'nimbus-bench-move-'));
  let host2: SecondHost | undefined;
  let d: DaemonProcess | undefined;
  let b: NamespaceAgent | undefined;
  const undo = cleanup.add('container-move hosts', async () => {
    await tearDownTwoHosts(d, b, host2, ['bench-move']);
    for (const dir of (await run('find', ['/sys/fs/cgroup', '-maxdepth', '4', '-type', 'd', '-name', B_CGROUPS.slice(1)])).stdout.split('\n').filter(Boolean)) await run('rmdir', [dir]);
    await rm(work, { recursive: true, force: true });
  });
  const cli = async (args: string[]) => {
    const r = await d!.cli(args);
    if (r.code !== 0) throw new Error(`nimbus ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const counter = async () => Number((await cli(['exec', 'mover', 'cat', '/count'])).trim());
  const moves: Move[] = [];
  try {
    host2 = await secondHost({ ns: 'bmv', link: 'nbm' });
    d = await startDaemonProcess([], { NIMBUS_LOG_LEVEL: 'warn' });
    // its containers' cgroups apart from the embedded host's: both hosts share this kernel's cgroup tree
    b = agentInNamespace(d.socket, host2, (await cli(['agent', 'join-token', '--ttl', '5m'])).trim(), { name: AGENT, homePrefix: 'nimbus-bench-move-agent', env: { NIMBUS_CGROUP_PARENT: B_CGROUPS } });
    await b.start();
    const archive = path.join(work, 'image.tar');
    await writeOciLayoutTar(await buildTestImages(), archive, '');
    const image = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(await cli(['image', 'import', archive]))![1]!;
    await cli(['network', 'create', 'bench-move']);
    await cli(['run', '-d', '--name', 'mover', '--host', 'local', '--runtime', 'runc', '--network', 'bench-move', image, ...STATEFUL]);
    await cli(['run', '-d', '--name', 'client', '--host', 'local', '--network', 'bench-move', image, 'sleep', '3600']);
    for (let i = 0; i < 100 && (await d.cli(['exec', 'mover', 'test', '-s', '/count'])).code !== 0; i++) await sleep(100);
    /** How long after the move a client on the first host gets the listener's answer (by name, across the overlay when it is away). */
    const reached = async (): Promise<number | null> => {
      const t0 = Date.now();
      while (Date.now() - t0 < 20_000) {
        const r = await d!.cli(['exec', 'client', 'sh', '-c', 'nc -w 1 mover 8080 </dev/null']);
        if (r.code === 0 && r.stdout.includes('listening')) return Date.now() - t0;
        await sleep(100);
      }
      return null;
    };
    const move = async (kind: 'live' | 'cold', to?: string) => {
      const before = kind === 'live' ? await counter() : undefined;
      const args = ['move', 'mover', ...(to ? ['--to', to] : []), ...(kind === 'live' ? ['--live'] : []), '-o', 'json'];
      let value: string | undefined;
      for (let i = 0; value === undefined; i++) {
        try {
          value = await cli(args);
        } catch (e) {
          // the source of the last move still letting go of its copy (removed in the background)
          if (i >= 50 || !/has a container \S+ already/.test(String(e))) throw e;
          await sleep(200);
        }
      }
      const r = JSON.parse(value) as Report;
      const m: Move = { kind, totalMs: r.totalMs, downtimeMs: r.downtimeMs, reachedAfterMs: await reached(), ...(r.live ? { checkpointBytes: r.live.checkpointBytes } : {}) };
      if (before !== undefined) m.counterKept = (await counter()) >= before;
      moves.push(m);
      note(NAME, `${kind} ${to ? `→ ${to}` : '← back'}: total ${m.totalMs} ms, downtime ${m.downtimeMs} ms, a client's answer ${m.reachedAfterMs ?? 'never (20 s)'} ms after${m.checkpointBytes ? `, checkpoint ${m.checkpointBytes} B` : ''}${m.counterKept === false ? ', COUNTER RESET' : ''}`);
    };
    for (let round = 0; round < ROUNDS; round++) {
      await move('live', AGENT);
      await move('live');
      await move('cold', AGENT);
      await move('cold');
    }
  } finally {
    await undo();
  }
  const of = (kind: 'live' | 'cold', k: 'totalMs' | 'downtimeMs' | 'reachedAfterMs') => {
    const xs = moves.filter((m) => m.kind === kind).map((m) => m[k]).filter((x): x is number => typeof x === 'number');
    return xs.length ? round(median(xs), 0) : null;
  };
  const live = { totalMs: of('live', 'totalMs'), downtimeMs: of('live', 'downtimeMs'), reachedAfterMs: of('live', 'reachedAfterMs') };
  const cold = { totalMs: of('cold', 'totalMs'), downtimeMs: of('cold', 'downtimeMs'), reachedAfterMs: of('cold', 'reachedAfterMs') };
  const unreached = moves.filter((m) => m.reachedAfterMs === null).length;
  const kept = moves.filter((m) => m.kind === 'live').every((m) => m.counterKept === true);
  const checkpointBytes = median(moves.filter((m) => m.checkpointBytes).map((m) => m.checkpointBytes!));
  const record = makeRecord(NAME, {
    results: { rounds: ROUNDS, live, cold, checkpointBytes, liveKeptState: kept, moves, unit: 'ms' },
    peers: { cold },
    ratios: { total: ratio(live.totalMs, cold.totalMs), downtime: ratio(live.downtimeMs, cold.downtimeMs) },
  });
  return {
    record,
    summary: [
      { bench: NAME, figure: 'live move (CRIU) downtime: checkpoint → restored', unit: 'ms', nimbus: live.downtimeMs, peers: { cold: cold.downtimeMs }, ratio: ratio(live.downtimeMs, cold.downtimeMs),
        goal: 'processes continue (state kept)', met: kept, note: `medians of ${ROUNDS * 2} moves each; checkpoint ${checkpointBytes} B` },
      { bench: NAME, figure: 'live move total (checkpoint + copy + restore)', unit: 'ms', nimbus: live.totalMs, peers: { cold: cold.totalMs }, ratio: ratio(live.totalMs, cold.totalMs) },
      { bench: NAME, figure: 'after the move: a client on the first host has the listener\'s answer (by name; one nimbus exec, ~0.2 s, included)', unit: 'ms', nimbus: live.reachedAfterMs, peers: { cold: cold.reachedAfterMs }, ratio: ratio(live.reachedAfterMs, cold.reachedAfterMs),
        note: `${unreached} of ${moves.length} moves not reached within 20 s` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, containerMove);
