/**
 * What networking adds to a container start, side by side in one run:
 *   nimbus bridge   `run --rm IMAGE true` through the API on the project's default network
 *                   (a veth pair into the container's namespace, its address, /etc/hosts and
 *                   resolv.conf; removed with the container)
 *   nimbus none     the same with --network none (loopback only)
 *   nimbus -p       the same on the default network with one published port (an nftables
 *                   transaction on create and on removal)
 *   podman          `podman run --rm` on its default network, and with --network none
 * The nimbus variants alternate run by run on one daemon, so they meet the same host.
 * BENCH_NET_RUNS each (default 30), 200 ms apart, after one untimed warm-up.
 * Goal (issue 3): networking adds ≤ 5 ms at p50.
 * Run alone: node dist/bench/network-start.js
 */
import { run } from '../src/core/exec.js';
import { hostFootprint } from '../src/agent/network/network-test-env.js';
import { nimbusRunRm, type BenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { PODMAN_RUN_FLAGS, podmanStore } from './lib/peers.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { measure, ratio, round, summarize, type Summary } from './lib/stats.js';

const NAME = 'network-start';
const RUNS = Math.max(1, Number(process.env.BENCH_NET_RUNS ?? 30));

type Side = Summary | { error: string };
const err = (e: unknown): Side => ({ error: e instanceof Error ? e.message.slice(0, 300) : String(e) });
const p50 = (s: Side) => ('p50' in s ? s.p50 : null);

async function nimbusSides(env: BenchEnv): Promise<{ bridge: Side; none: Side; published: Side }> {
  let d: BenchDaemon | undefined;
  try {
    d = await env.newDaemon();
    await d.pull(env.busybox);
    const client = d.client;
    const times: Record<'bridge' | 'none' | 'published', number[]> = { bridge: [], none: [], published: [] };
    let port = 20000 + (process.pid % 20000);
    const one = async (kind: keyof typeof times) => {
      const t0 = performance.now();
      if (kind === 'published') {
        // a port of its own each run: the previous container's removal may still be in flight
        const c = await client.json<{ id: string }>('POST', '/containers', { image: env.busybox, cmd: ['true'], autoRemove: true, ports: [{ protocol: 'tcp', hostIp: '127.0.0.1', hostPort: port++, containerPort: 80 }] });
        const id = encodeURIComponent(c.id);
        const gone = client.json('POST', `/containers/${id}/wait?condition=removed`);
        await client.json('POST', `/containers/${id}/start`);
        await gone;
      } else await nimbusRunRm(client, env.busybox, undefined, kind === 'none' ? 'none' : undefined);
      return performance.now() - t0;
    };
    for (const k of ['bridge', 'none', 'published'] as const) await one(k); // warm-up
    note(NAME, `nimbus bridge / none / -p alternating: ${RUNS} runs each`);
    for (let i = 0; i < RUNS; i++) {
      for (const k of ['bridge', 'none', 'published'] as const) {
        await new Promise((r) => setTimeout(r, 200));
        times[k].push(await one(k));
      }
    }
    return { bridge: summarize(times.bridge), none: summarize(times.none), published: summarize(times.published) };
  } catch (e) {
    return { bridge: err(e), none: err(e), published: err(e) };
  } finally {
    await d?.stop().catch(() => undefined);
  }
}

async function podmanSides(image: string): Promise<{ podmanDefault: Side; podmanNone: Side }> {
  const store = podmanStore();
  // host-wide things podman's default network makes (its bridge, iptables-nft tables) that its private store does not hold
  const before = await hostFootprint();
  try {
    await store.podman(['pull', '-q', '--tls-verify=false', image]);
    const noneFlags = PODMAN_RUN_FLAGS;
    const defaultFlags = PODMAN_RUN_FLAGS.filter((f, i, a) => f !== '--network' && a[i - 1] !== '--network');
    const side = async (flags: string[], label: string): Promise<Side> => {
      try {
        note(NAME, `podman ${label}: ${RUNS} runs`);
        return summarize(await measure(RUNS, () => store.podman(['run', ...flags, image, 'true']), { warmup: 1, gapMs: 200 }));
      } catch (e) {
        return err(e);
      }
    };
    return { podmanDefault: await side(defaultFlags, 'default network'), podmanNone: await side(noneFlags, '--network none') };
  } catch (e) {
    return { podmanDefault: err(e), podmanNone: err(e) };
  } finally {
    await store.remove();
    // podman's CNI bridge (cni-podman0, 10.88.0.0/16: Nimbus's own default subnet) and its tables outlive its store
    const after = await hostFootprint();
    for (const l of after.links) if (!before.links.includes(l) && /^(cni-podman|podman|veth)/.test(l)) await run('ip', ['link', 'del', l]);
    for (const t of after.tables) if (!before.tables.includes(t) && /^table ip6? (nat|filter)$/.test(t)) await run('nft', ['delete', ...t.split(' ')]);
  }
}

export async function networkStart(env: BenchEnv): Promise<BenchOutcome> {
  const n = await nimbusSides(env);
  const pm = await podmanSides(env.busybox);
  const added = p50(n.bridge) !== null && p50(n.none) !== null ? round(p50(n.bridge)! - p50(n.none)!) : null;
  const addedPublished = p50(n.published) !== null && p50(n.none) !== null ? round(p50(n.published)! - p50(n.none)!) : null;
  const podmanAdded = p50(pm.podmanDefault) !== null && p50(pm.podmanNone) !== null ? round(p50(pm.podmanDefault)! - p50(pm.podmanNone)!) : null;
  const record = makeRecord(NAME, {
    results: { runs: RUNS, unit: 'ms', bridge: n.bridge, none: n.none, published: n.published, addedByBridgeP50: added, addedByPublishedPortP50: addedPublished },
    peers: { podmanDefault: pm.podmanDefault, podmanNone: pm.podmanNone, podmanAddedP50: podmanAdded },
    ratios: { bridge_over_podmanDefault_p50: ratio(p50(n.bridge), p50(pm.podmanDefault)) },
  });
  return {
    record,
    summary: [
      { bench: NAME, figure: 'run --rm true p50, default bridge (API)', unit: 'ms', nimbus: p50(n.bridge), peers: { 'nimbus --network none': p50(n.none), 'podman default network': p50(pm.podmanDefault) }, ratio: ratio(p50(n.bridge), p50(pm.podmanDefault)), note: `adds ${added ?? '?'} ms over none (goal ≤ 5); podman's network adds ${podmanAdded ?? '?'} ms` },
      { bench: NAME, figure: 'run --rm true p50, bridge + one published port', unit: 'ms', nimbus: p50(n.published), peers: { 'nimbus --network none': p50(n.none) }, ratio: null, note: `adds ${addedPublished ?? '?'} ms over none` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, networkStart);
