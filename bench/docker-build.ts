/**
 * `DOCKER_BUILDKIT=0 docker build` of a small two-stage Dockerfile with the same docker CLI
 * (Debian's 20.10, the legacy builder protocol) against nimbusd's Docker API (buildah on the agent,
 * docs/builds.md) and against a private dockerd's own builder (bench/lib/dockerd.ts), in one run
 * (issue 16):
 *   cold     nothing of the Dockerfile cached (the FROM image already pulled on both sides, so no
 *            pull is measured): after each round the built image is removed and dangling images
 *            pruned, which takes each side's layer cache with it (dockerd's intermediate images;
 *            Nimbus's cache store goes with the images it built); the bench checks the build's
 *            output has no "Using cache" line
 *   cached   the same build again, context unchanged: every step after FROM from the cache
 *            (checked: one "Using cache" per step)
 * The Dockerfile: a builder stage whose RUN step writes a file (and 256 KiB of data), a final
 * stage that COPYs them --from it, and a CMD; FROM the bench registry's busybox image.
 * Sides alternate round by round, BENCH_BUILD_RUNS rounds (default 5), one untimed warm-up round each.
 * Goal: no slower than dockerd, cold and cached (p50).
 * Run alone: node dist/bench/docker-build.js
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dockerCli, startDockerd, type DockerEndpoint } from './lib/dockerd.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { ratio, summarize, type Summary } from './lib/stats.js';

const NAME = 'docker-build';
const RUNS = Math.max(1, Number(process.env.BENCH_BUILD_RUNS ?? 5));
const TAG = 'bench-build:latest';
/** Steps after FROM a cached build takes from the cache: RUN; COPY and CMD of the final stage. */
const CACHED_STEPS = 3;

type SideName = 'nimbus' | 'dockerd';
interface Side {
  name: SideName;
  docker: DockerEndpoint['docker'];
}

function dockerfile(base: string): string {
  return [
    `FROM ${base} AS builder`,
    'RUN mkdir -p /out && echo "built in the builder stage" > /out/built.txt && dd if=/dev/zero of=/out/data bs=1024 count=256 2>/dev/null',
    `FROM ${base}`,
    'COPY --from=builder /out/ /out/',
    'CMD ["cat", "/out/built.txt"]',
    '',
  ].join('\n');
}

async function timedBuild(side: Side, dir: string, expectHits: number): Promise<number> {
  const t0 = performance.now();
  const out = await side.docker(['build', '-t', TAG, dir]);
  const ms = performance.now() - t0;
  const hits = out.match(/Using cache/g)?.length ?? 0;
  if (hits !== expectHits) throw new Error(`${side.name}: expected ${expectHits} steps from the cache, the build said ${hits}: ${out.slice(-1500)}`);
  return ms;
}

/** The built image and every dangling one (the legacy builder's cache) removed: the next build is cold. */
async function forget(side: Side): Promise<void> {
  await side.docker(['rmi', TAG]);
  await side.docker(['image', 'prune', '-f']);
}

export async function dockerBuild(env: BenchEnv): Promise<BenchOutcome> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-build-'));
  const removeDir = cleanup.add(`build context ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  const ctx = join(dir, 'ctx');
  mkdirSync(ctx);
  mkdirSync(join(dir, 'cfg'));
  writeFileSync(join(ctx, 'Dockerfile'), dockerfile(env.busybox));
  const sides: Side[] = [];
  const errors = new Map<SideName, string>();
  const removers: Array<() => Promise<unknown>> = [];
  try {
    try {
      const d = await env.newDaemon();
      removers.push(() => d.stop());
      const docker = dockerCli(`unix://${join(d.home, 'docker.sock')}`, join(dir, 'cfg'));
      await docker(['pull', '-q', env.busybox]);
      sides.push({ name: 'nimbus', docker });
    } catch (e) {
      errors.set('nimbus', String(e));
    }
    try {
      const dockerd = await startDockerd();
      removers.push(() => dockerd.remove());
      await dockerd.docker(['pull', '-q', env.busybox]);
      sides.push({ name: 'dockerd', docker: dockerd.docker });
    } catch (e) {
      errors.set('dockerd', String(e));
    }
    const times = new Map(sides.map((s) => [s.name, { cold: [] as number[], cached: [] as number[] }]));
    note(NAME, `DOCKER_BUILDKIT=0 docker build, two stages, cold then cached, on ${sides.map((s) => s.name).join(' and ')}, alternating: ${RUNS} rounds after a warm-up`);
    for (let i = -1; i < RUNS; i++) {
      for (const side of [...sides]) {
        try {
          const cold = await timedBuild(side, ctx, 0);
          const cached = await timedBuild(side, ctx, CACHED_STEPS);
          await forget(side);
          if (i >= 0) {
            times.get(side.name)!.cold.push(cold);
            times.get(side.name)!.cached.push(cached);
          }
        } catch (e) {
          errors.set(side.name, e instanceof Error ? e.message : String(e));
          sides.splice(sides.indexOf(side), 1);
        }
      }
    }
    for (const [n, e] of errors) note(NAME, `${n} failed: ${e.slice(0, 800)}`);
    const sum = (n: SideName, k: 'cold' | 'cached'): Summary | { error: string } => {
      const e = errors.get(n);
      return e ? { error: e.slice(0, 400) } : summarize(times.get(n)?.[k] ?? []);
    };
    const p50 = (s: Summary | { error: string }) => ('p50' in s ? s.p50 : null);
    const r = {
      nimbus: { cold: sum('nimbus', 'cold'), cached: sum('nimbus', 'cached') },
      dockerd: { cold: sum('dockerd', 'cold'), cached: sum('dockerd', 'cached') },
    };
    const record = makeRecord(NAME, {
      results: { runs: RUNS, unit: 'ms', nimbus: r.nimbus },
      peers: { dockerd: r.dockerd },
      ratios: {
        nimbus_over_dockerd_cold_p50: ratio(p50(r.nimbus.cold), p50(r.dockerd.cold)),
        nimbus_over_dockerd_cached_p50: ratio(p50(r.nimbus.cached), p50(r.dockerd.cached)),
        nimbus_cached_over_cold_p50: ratio(p50(r.nimbus.cached), p50(r.nimbus.cold)),
        dockerd_cached_over_cold_p50: ratio(p50(r.dockerd.cached), p50(r.dockerd.cold)),
      },
    });
    const summary: SummaryRow[] = (['cold', 'cached'] as const).map((k) => {
      const x = ratio(p50(r.nimbus[k]), p50(r.dockerd[k]));
      return {
        bench: NAME, figure: `docker build (2 stages) ${k} p50`, unit: 'ms', nimbus: p50(r.nimbus[k]),
        peers: { dockerd: p50(r.dockerd[k]) }, ratio: x,
        goal: 'no slower than dockerd', met: x === null ? null : x <= 1,
      };
    });
    return { record, summary };
  } finally {
    for (const remove of removers.reverse()) await remove().catch((e: unknown) => process.stderr.write(`${NAME} cleanup: ${String(e)}\n`));
    await removeDir();
  }
}

if (isMain(import.meta.url)) await runStandalone(NAME, dockerBuild);
