/**
 * Cold pull + unpack from the loopback registry, Nimbus vs skopeo + umoci, for
 *   test    the shared multi-layer busybox test image (nimbus-test/busybox:single)
 *   large   a bench-only image: busybox + data layers of deterministic random
 *           bytes (env BENCH_PULL_LAYERS × BENCH_PULL_LAYER_MIB, default 4 × 4 MiB)
 *           + a layer of 2000 small files (20 MiB, 2,087 entries)
 *   huge    busybox + a few large layers of random bytes (env BENCH_PULL_HUGE_LAYERS ×
 *           BENCH_PULL_HUGE_LAYER_MIB, default 4 × 50 MiB: ~200 MiB); 0 layers skips it
 * Nimbus, two ways: POST /images/pull + wait for the operation (1) on a fresh daemon
 * home per run (daemon start not timed, but the daemon's first pull pays one-off costs
 * such as loading the HTTP client), and (2) on one running daemon, the image removed and
 * its blobs and snapshots collected after each run (checked: no blob left), which is
 * what a user of a running daemon sees. Both are cold for the content. Peer: `skopeo copy
 * docker://REF oci:DIR:tag --src-tls-verify=false` then `umoci unpack --image
 * DIR:tag BUNDLE`, a fresh DIR per run. Runs alternate between the two sides,
 * N each (env BENCH_PULL_RUNS, default 5) after one untimed warm-up each, each run after a
 * `sync` so that none writes back the dirty pages of the run before it (2,000 files created and
 * removed by the other side cost the next one ~0.3 s here).
 * Run alone: node dist/bench/pull-unpack.js
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runOk } from '../src/core/exec.js';
import { cleanup } from './lib/cleanup.js';
import type { BenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { pullBenchImage, pushBenchImage } from './lib/images.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { msSince, now, ratio, round, summarize, type Summary } from './lib/stats.js';

const NAME = 'pull-unpack';
const RUNS = Math.max(1, Number(process.env.BENCH_PULL_RUNS ?? 5));
const HUGE_LAYERS = Math.max(0, Number(process.env.BENCH_PULL_HUGE_LAYERS ?? 4));
const HUGE_LAYER_MIB = Math.max(1, Number(process.env.BENCH_PULL_HUGE_LAYER_MIB ?? 50));

type Side = Summary | { error: string };
const err = (e: unknown) => ({ error: e instanceof Error ? e.message.slice(0, 500) : String(e) });
const p50 = (s: Side) => ('p50' in s ? s.p50 : null);

async function nimbusPull(env: BenchEnv, ref: string): Promise<number> {
  const d = await env.newDaemon();
  try {
    const t0 = now();
    await d.pull(ref);
    return msSince(t0);
  } finally {
    const left = await d.stop();
    if (left.length) note(NAME, `nimbusd left behind: ${left.join(', ')}`);
  }
}

/** A pull on a running daemon: the image is removed (and its blobs and snapshots collected) after each run. */
async function nimbusPullLive(d: BenchDaemon, ref: string): Promise<number> {
  const t0 = now();
  await d.pull(ref);
  const t = msSince(t0);
  await d.client.json('DELETE', `/images/${encodeURIComponent(ref)}`);
  await d.client.json('POST', '/images/prune');
  const blobs = readdirSync(join(d.home, 'content/blobs/sha256'));
  if (blobs.length) throw new Error(`image removal left ${blobs.length} blob(s): the next pull would not be cold`);
  return t;
}

let spreadParentDir: Promise<string> | undefined;
function spreadParent(): Promise<string> {
  spreadParentDir ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'bench-umoci-spread-'));
    cleanup.add(`umoci parent dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    await runOk('chattr', ['+T', dir]);
    return dir;
  })();
  return spreadParentDir;
}

/**
 * The peer as users run it; with `spread`, each run's directory made by a random name in a parent
 * marked `chattr +T`, as nimbusd makes its snapshots (src/agent/spread-directories.ts), so that the
 * figure beside it shows what of nimbusd's lead is ext4's inode placement on this host (an ext4
 * without a journal scans the inodes freed in the last minute on every create) and what is the
 * pull itself.
 */
async function skopeoUmoci(ref: string, spread = false): Promise<{ total: number; copy: number; unpack: number }> {
  const dir = mkdtempSync(join(spread ? await spreadParent() : tmpdir(), 'bench-umoci-'));
  const remove = cleanup.add(`umoci dir ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  try {
    const layout = `${join(dir, 'layout')}:bench`;
    const t0 = now();
    await runOk('skopeo', ['--insecure-policy', 'copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${layout}`], { timeoutMs: 300_000 });
    const copy = msSince(t0);
    const t1 = now();
    await runOk('umoci', ['unpack', '--image', layout, join(dir, 'bundle')], { timeoutMs: 300_000 });
    const unpack = msSince(t1);
    return { total: msSince(t0), copy, unpack };
  } finally {
    await remove();
  }
}

/** Each side starts with no dirty pages of the side before it (its writes and its removal's) still to write back. */
async function settle(): Promise<void> {
  await runOk('sync', []);
}

async function compare(env: BenchEnv, label: string, ref: string) {
  const nimbus: number[] = [];
  const live: number[] = [];
  let liveErr: string | undefined;
  const liveDaemon = await env.newDaemon();
  const peer: number[] = [];
  const copy: number[] = [];
  const unpack: number[] = [];
  let nimbusErr: string | undefined;
  let peerErr: string | undefined;
  const spreadPeer: number[] = [];
  let spreadPeerErr: string | undefined;
  note(NAME, `${label} (${ref}): warm-up, then ${RUNS} runs per side, alternating`);
  for (let i = -1; i < RUNS; i++) {
    await settle();
    if (!nimbusErr) {
      try {
        const t = await nimbusPull(env, ref);
        if (i >= 0) nimbus.push(t);
      } catch (e) {
        nimbusErr = err(e).error;
      }
    }
    await settle();
    if (!liveErr) {
      try {
        const t = await nimbusPullLive(liveDaemon, ref);
        if (i >= 0) live.push(t);
      } catch (e) {
        liveErr = err(e).error;
      }
    }
    await settle();
    if (!peerErr) {
      try {
        const r = await skopeoUmoci(ref);
        if (i >= 0) (peer.push(r.total), copy.push(r.copy), unpack.push(r.unpack));
      } catch (e) {
        peerErr = err(e).error;
      }
    }
    await settle();
    if (!spreadPeerErr) {
      try {
        const r = await skopeoUmoci(ref, true);
        if (i >= 0) spreadPeer.push(r.total);
      } catch (e) {
        spreadPeerErr = err(e).error;
      }
    }
  }
  const left = await liveDaemon.stop();
  if (left.length) note(NAME, `nimbusd left behind: ${left.join(', ')}`);
  const n: Side = nimbusErr ? { error: nimbusErr } : summarize(nimbus);
  const l: Side = liveErr ? { error: liveErr } : summarize(live);
  const s: Side = peerErr ? { error: peerErr } : summarize(peer);
  const sp: Side = spreadPeerErr ? { error: spreadPeerErr } : summarize(spreadPeer);
  return {
    nimbus: n, nimbusRunningDaemon: l, peer: s, skopeoCopy: summarize(copy), umociUnpack: summarize(unpack), spreadPeer: sp,
    ratio_p50: ratio(p50(n), p50(s)), ratioRunningDaemon_p50: ratio(p50(l), p50(s)), ratioRunningDaemonSpreadPeer_p50: ratio(p50(l), p50(sp)),
  };
}

export async function pullUnpack(env: BenchEnv): Promise<BenchOutcome> {
  const describe = async (repo: string, img: Awaited<ReturnType<typeof pullBenchImage>>) => ({
    ref: await pushBenchImage(env.registry.host, repo, 'v1', img),
    layers: img.layers.length, compressedMiB: round(img.compressedBytes / 2 ** 20, 2), unpackedMiB: round(img.unpackedBytes / 2 ** 20, 2), entries: img.entries,
  });
  const large = await describe('nimbus-bench/large', await pullBenchImage());
  const hugeImage = HUGE_LAYERS > 0 ? await describe('nimbus-bench/huge', await pullBenchImage({ dataLayers: HUGE_LAYERS, layerMiB: HUGE_LAYER_MIB, smallFiles: 0 })) : undefined;
  const test = await compare(env, 'test image', env.busybox);
  const big = await compare(env, 'large image', large.ref);
  const huge = hugeImage ? await compare(env, 'huge image', hugeImage.ref) : undefined;
  const record = makeRecord(NAME, {
    results: {
      runs: RUNS,
      unit: 'ms',
      images: { test: { ref: env.busybox }, large, ...(hugeImage ? { huge: hugeImage } : {}) },
      nimbus: { test: test.nimbus, large: big.nimbus, ...(huge ? { huge: huge.nimbus } : {}) },
      nimbusRunningDaemon: { test: test.nimbusRunningDaemon, large: big.nimbusRunningDaemon, ...(huge ? { huge: huge.nimbusRunningDaemon } : {}) },
    },
    peers: {
      command: 'skopeo copy docker://REF oci:DIR:tag --src-tls-verify=false && umoci unpack --image DIR:tag BUNDLE',
      skopeoUmoci: { test: test.peer, large: big.peer, ...(huge ? { huge: huge.peer } : {}) },
      skopeoCopy: { test: test.skopeoCopy, large: big.skopeoCopy, ...(huge ? { huge: huge.skopeoCopy } : {}) },
      umociUnpack: { test: test.umociUnpack, large: big.umociUnpack, ...(huge ? { huge: huge.umociUnpack } : {}) },
      // the same, each run's directory made by a random name in a parent marked chattr +T (skopeoUmoci(ref, true))
      skopeoUmociSpreadDir: { test: test.spreadPeer, large: big.spreadPeer, ...(huge ? { huge: huge.spreadPeer } : {}) },
    },
    ratios: {
      test_nimbus_over_skopeoUmoci_p50: test.ratio_p50, large_nimbus_over_skopeoUmoci_p50: big.ratio_p50,
      test_runningDaemon_over_skopeoUmoci_p50: test.ratioRunningDaemon_p50, large_runningDaemon_over_skopeoUmoci_p50: big.ratioRunningDaemon_p50,
      large_runningDaemon_over_skopeoUmociSpreadDir_p50: big.ratioRunningDaemonSpreadPeer_p50,
      ...(huge ? { huge_nimbus_over_skopeoUmoci_p50: huge.ratio_p50, huge_runningDaemon_over_skopeoUmoci_p50: huge.ratioRunningDaemon_p50 } : {}),
      // the first pull of a fresh daemon against a later one on a running daemon (goal ≤ 1.1)
      test_fresh_over_running_p50: ratio(p50(test.nimbus), p50(test.nimbusRunningDaemon)),
      large_fresh_over_running_p50: ratio(p50(big.nimbus), p50(big.nimbusRunningDaemon)),
      ...(huge ? { huge_fresh_over_running_p50: ratio(p50(huge.nimbus), p50(huge.nimbusRunningDaemon)) } : {}),
    },
  });
  const row = (figure: string, c: typeof test, extra: string, running = false): SummaryRow => {
    const side = running ? c.nimbusRunningDaemon : c.nimbus;
    return {
      bench: NAME, figure, unit: 'ms', nimbus: p50(side), peers: { 'skopeo+umoci': p50(c.peer) }, ratio: running ? c.ratioRunningDaemon_p50 : c.ratio_p50,
      note: ['error' in side ? side.error.slice(0, 60) : '', 'error' in c.peer ? `peer: ${c.peer.error.slice(0, 60)}` : '', extra].filter(Boolean).join('; '),
    };
  };
  return {
    record,
    summary: [
      row('cold pull+unpack, test image (median)', test, `fresh daemon per pull; copy ${test.skopeoCopy.p50} + unpack ${test.umociUnpack.p50}`),
      row('cold pull+unpack, test image, running daemon', test, 'image removed and collected between pulls', true),
      row(`cold pull+unpack, ${large.compressedMiB} MiB image (median)`, big, `copy ${big.skopeoCopy.p50} + unpack ${big.umociUnpack.p50}; ${large.layers} layers, ${large.entries} entries`),
      row(`cold pull+unpack, ${large.compressedMiB} MiB image, running daemon`, big, `image removed and collected between pulls; peer in a chattr +T dir ${p50(big.spreadPeer)} (${big.ratioRunningDaemonSpreadPeer_p50}×)`, true),
      ...(huge && hugeImage
        ? [
            row(`cold pull+unpack, ${hugeImage.compressedMiB} MiB image (median)`, huge, `copy ${huge.skopeoCopy.p50} + unpack ${huge.umociUnpack.p50}; ${hugeImage.layers} layers`),
            row(`cold pull+unpack, ${hugeImage.compressedMiB} MiB image, running daemon`, huge, 'image removed and collected between pulls', true),
          ]
        : []),
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, pullUnpack);
