/**
 * Cold pull + unpack from the loopback registry, Nimbus vs skopeo + umoci, for
 *   test    the shared multi-layer busybox test image (nimbus-test/busybox:single)
 *   large   a bench-only image: busybox + data layers of deterministic random
 *           bytes (env BENCH_PULL_LAYERS × BENCH_PULL_LAYER_MIB, default 4 × 4 MiB)
 *           + a layer of 2000 small files
 * Nimbus: POST /images/pull + wait for the operation, on a fresh daemon home per
 * run (so every run is cold; daemon start is not timed). Peer: `skopeo copy
 * docker://REF oci:DIR:tag --src-tls-verify=false` then `umoci unpack --image
 * DIR:tag BUNDLE`, a fresh DIR per run. Runs alternate between the two sides,
 * N each (env BENCH_PULL_RUNS, default 5) after one untimed warm-up each.
 * Run alone: node dist/bench/pull-unpack.js
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runOk } from '../src/core/exec.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { pullBenchImage, pushBenchImage } from './lib/images.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { msSince, now, ratio, round, summarize, type Summary } from './lib/stats.js';

const NAME = 'pull-unpack';
const RUNS = Math.max(1, Number(process.env.BENCH_PULL_RUNS ?? 5));

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

async function skopeoUmoci(ref: string): Promise<{ total: number; copy: number; unpack: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-umoci-'));
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

async function compare(env: BenchEnv, label: string, ref: string) {
  const nimbus: number[] = [];
  const peer: number[] = [];
  const copy: number[] = [];
  const unpack: number[] = [];
  let nimbusErr: string | undefined;
  let peerErr: string | undefined;
  note(NAME, `${label} (${ref}): warm-up, then ${RUNS} runs per side, alternating`);
  for (let i = -1; i < RUNS; i++) {
    if (!nimbusErr) {
      try {
        const t = await nimbusPull(env, ref);
        if (i >= 0) nimbus.push(t);
      } catch (e) {
        nimbusErr = err(e).error;
      }
    }
    if (!peerErr) {
      try {
        const r = await skopeoUmoci(ref);
        if (i >= 0) (peer.push(r.total), copy.push(r.copy), unpack.push(r.unpack));
      } catch (e) {
        peerErr = err(e).error;
      }
    }
  }
  const n: Side = nimbusErr ? { error: nimbusErr } : summarize(nimbus);
  const s: Side = peerErr ? { error: peerErr } : summarize(peer);
  return { nimbus: n, peer: s, skopeoCopy: summarize(copy), umociUnpack: summarize(unpack), ratio_p50: ratio(p50(n), p50(s)) };
}

export async function pullUnpack(env: BenchEnv): Promise<BenchOutcome> {
  const img = await pullBenchImage();
  const largeRef = await pushBenchImage(env.registry.host, 'nimbus-bench/large', 'v1', img);
  const large = { ref: largeRef, layers: img.layers.length, compressedMiB: round(img.compressedBytes / 2 ** 20, 2), unpackedMiB: round(img.unpackedBytes / 2 ** 20, 2), entries: img.entries };
  const test = await compare(env, 'test image', env.busybox);
  const big = await compare(env, 'large image', largeRef);
  const record = makeRecord(NAME, {
    results: {
      runs: RUNS,
      unit: 'ms',
      images: { test: { ref: env.busybox }, large },
      nimbus: { test: test.nimbus, large: big.nimbus },
    },
    peers: {
      command: 'skopeo copy docker://REF oci:DIR:tag --src-tls-verify=false && umoci unpack --image DIR:tag BUNDLE',
      skopeoUmoci: { test: test.peer, large: big.peer },
      skopeoCopy: { test: test.skopeoCopy, large: big.skopeoCopy },
      umociUnpack: { test: test.umociUnpack, large: big.umociUnpack },
    },
    ratios: { test_nimbus_over_skopeoUmoci_p50: test.ratio_p50, large_nimbus_over_skopeoUmoci_p50: big.ratio_p50 },
  });
  const row = (figure: string, c: typeof test, extra: string): SummaryRow => ({
    bench: NAME, figure, unit: 'ms', nimbus: p50(c.nimbus), peers: { 'skopeo+umoci': p50(c.peer) }, ratio: c.ratio_p50,
    note: ['error' in c.nimbus ? c.nimbus.error.slice(0, 60) : '', 'error' in c.peer ? `peer: ${c.peer.error.slice(0, 60)}` : '', extra].filter(Boolean).join('; '),
  });
  return {
    record,
    summary: [
      row('cold pull+unpack, test image (median)', test, `copy ${test.skopeoCopy.p50} + unpack ${test.umociUnpack.p50}`),
      row(`cold pull+unpack, ${large.compressedMiB} MiB image (median)`, big, `copy ${big.skopeoCopy.p50} + unpack ${big.umociUnpack.p50}; ${large.layers} layers, ${large.entries} entries`),
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, pullUnpack);
