/**
 * Healing (issue 15): a host dies, and its HA containers (a restart policy) are rebuilt on another
 * host. A real nimbusd (control plane and embedded agent "local") and a second agent (`nimbusd
 * agent` in a network namespace of its own, joined by a veth pair: test/helpers/second-host.ts);
 * BENCH_HEAL_CONTAINERS (default 5) containers with `--restart always` on the second host, on a
 * user network spanning both. The host "dies": its link is cut (nothing answers any more, not even
 * a refusal: a dead or unplugged machine) and its agent SIGKILLed (its containers' conmons keep
 * them running, as on a host that is only cut off). Timed from the cut until every one of them
 * runs on the embedded host (the API's view), with the daemon's default grace
 * (NIMBUS_HEAL_GRACE_MS, 10 s; BENCH_HEAL_GRACE_MS to change it) and the directory's detection
 * (6 s without a ping). Then the link is back and the agent started again: timed until fencing has
 * destroyed every stale copy there (no conmon of those containers left in its home).
 * Goal (issue 15): ≤ 30 s to every HA instance running elsewhere.
 *   node dist/bench/run.js heal
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startDaemonProcess, type DaemonProcess } from '../test/helpers/daemon-process.js';
import { agentInNamespace, secondHost, tearDownTwoHosts, type NamespaceAgent, type SecondHost } from '../test/helpers/second-host.js';
import { vxlanMissing } from '../src/agent/network/network-test-env.js';
import { run } from '../src/core/exec.js';
import { buildTestImages, writeOciLayoutTar } from '../scripts/fixtures/images.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';

const NAME = 'heal';
const COUNT = Math.max(1, Number(process.env.BENCH_HEAL_CONTAINERS ?? 5));
const GOAL_MS = 30_000;
const AGENT = 'bench-heal-b';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Inspected { id: string; host: string; status: string; network: { endpoints: Array<{ address: string }> } }

export async function heal(): Promise<BenchOutcome> {
  const noVxlan = await vxlanMissing(`h${process.pid}`);
  if (noVxlan) throw new Error(`this kernel cannot carry the overlay: ${noVxlan}`);
  const work = await mkdtemp(path.join(tmpdir(), 'nimbus-bench-heal-'));
  let host2: SecondHost | undefined;
  let d: DaemonProcess | undefined;
  let b: NamespaceAgent | undefined;
  const hostIf = () => `nbh${process.pid.toString(36).slice(-6)}`;
  const undo = cleanup.add('heal hosts', async () => {
    await run('ip', ['link', 'set', hostIf(), 'up']);
    await tearDownTwoHosts(d, b, host2, ['bench-heal']);
    await rm(work, { recursive: true, force: true });
  });
  const cli = async (args: string[]) => {
    const r = await d!.cli(args);
    if (r.code !== 0) throw new Error(`nimbus ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const inspect = async (name: string) => (JSON.parse(await cli(['inspect', name])) as Inspected[])[0]!;
  /** Processes of the second host (its home in their command line) running container id: its conmon. */
  const onB = async (id: string) => (await run('pgrep', ['-f', id])).stdout.split('\n').filter(Boolean)
    .filter((pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(b!.home); } catch { return false; } });
  let healMs: number | null = null;
  let fenceMs: number | null = null;
  let downMs: number | null = null;
  let addressesKept = 0;
  const grace = process.env.BENCH_HEAL_GRACE_MS;
  try {
    host2 = await secondHost({ ns: 'bhl', link: 'nbh' });
    d = await startDaemonProcess([], { NIMBUS_LOG_LEVEL: 'warn', ...(grace ? { NIMBUS_HEAL_GRACE_MS: grace } : {}) });
    b = agentInNamespace(d.socket, host2, (await cli(['agent', 'join-token', '--ttl', '5m'])).trim(), { name: AGENT, homePrefix: 'nimbus-bench-heal-agent' });
    await b.start();
    const archive = path.join(work, 'image.tar');
    await writeOciLayoutTar(await buildTestImages(), archive, '');
    const image = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(await cli(['image', 'import', archive]))![1]!;
    await cli(['network', 'create', 'bench-heal']);
    const names = Array.from({ length: COUNT }, (_, i) => `bench-ha-${i}`);
    for (const n of names) await cli(['run', '-d', '--name', n, '--host', AGENT, '--restart', 'always', '--network', 'bench-heal', image, 'sh', '-c', 'trap "exit 0" TERM; sleep 3600 & wait']);
    const before = new Map<string, Inspected>();
    for (const n of names) before.set(n, await inspect(n));
    note(NAME, `${COUNT} containers with --restart always on ${AGENT}; cutting its link and killing its agent (grace ${grace ?? 'default 10000'} ms)`);
    const t0 = Date.now();
    await run('ip', ['link', 'set', hostIf(), 'down']);
    await b.kill('SIGKILL');
    for (;;) {
      const now = await Promise.all(names.map(inspect));
      if (downMs === null && now.some((c) => c.status === 'unknown')) downMs = Date.now() - t0;
      if (now.every((c) => c.host === 'local' && c.status === 'running')) {
        healMs = Date.now() - t0;
        addressesKept = now.filter((c) => c.network.endpoints[0]?.address === before.get(names[now.indexOf(c)]!)!.network.endpoints[0]?.address).length;
        break;
      }
      if (Date.now() - t0 > 120_000) throw new Error(`not all rebuilt after 120 s: ${now.map((c) => `${c.host}/${c.status}`).join(', ')}`);
      await sleep(100);
    }
    note(NAME, `seen down after ${downMs} ms, all ${COUNT} running on the embedded host after ${healMs} ms, ${addressesKept} with their address`);
    const ids = [...before.values()].map((c) => c.id);
    const stale = (await Promise.all(ids.map(onB))).flat().length;
    await run('ip', ['link', 'set', hostIf(), 'up']);
    const t1 = Date.now();
    await b.start();
    for (;;) {
      if ((await Promise.all(ids.map(onB))).every((p) => p.length === 0)) {
        fenceMs = Date.now() - t1;
        break;
      }
      if (Date.now() - t1 > 60_000) throw new Error('the stale copies were not fenced within 60 s');
      await sleep(100);
    }
    note(NAME, `${stale} stale conmons on ${AGENT} while it was cut off; all gone ${fenceMs} ms after its agent started again`);
  } finally {
    await undo();
  }
  const record = makeRecord(NAME, {
    results: { containers: COUNT, graceMs: grace ? Number(grace) : 10_000, detectedDownMs: downMs, healMs, fenceMs, addressesKept, unit: 'ms' },
    peers: {},
    ratios: {},
  });
  return {
    record,
    summary: [
      { bench: NAME, figure: `host cut off + agent killed → all ${COUNT} HA containers running elsewhere`, unit: 'ms', nimbus: healMs, peers: {}, ratio: null,
        goal: `≤ ${GOAL_MS} ms`, met: healMs !== null && healMs <= GOAL_MS, note: `down seen after ${downMs} ms (no ping for 6 s), grace ${grace ?? 10_000} ms; ${addressesKept}/${COUNT} kept their address` },
      { bench: NAME, figure: 'host back → its stale copies destroyed (fencing)', unit: 'ms', nimbus: fenceMs, peers: {}, ratio: null, note: 'from the agent\'s start (its registration included)' },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, heal);
