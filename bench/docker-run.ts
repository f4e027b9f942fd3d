/**
 * `docker run --rm IMAGE true` with the same unmodified docker CLI (Debian's 20.10) against three
 * Docker Engine APIs, side by side in one run (issue 16):
 *   nimbus    nimbusd's Docker API socket (a fresh bench daemon, its default bridge network)
 *   dockerd   Debian's dockerd with its own containerd, socket, data root and bridge, and no
 *             firewall rules (bench/lib/dockerd.ts)
 *   podman    `podman system service` over a private store, its default network
 * The sides alternate run by run, BENCH_DOCKER_RUNS each (default 20), 200 ms apart, after two
 * untimed warm-ups each; the image is pulled into each first. Each run is the whole CLI
 * invocation (process start, create, attach, start, wait, remove), as a user sees it.
 * Goal (issue 16): nimbus faster than both, at p50 and at p95.
 * Run alone: node dist/bench/docker-run.js
 */
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { run } from '../src/core/exec.js';
import { dockerCli, startDockerd, startPodmanService, type DockerEndpoint } from './lib/dockerd.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { ratio, summarize, type Summary } from './lib/stats.js';
import { hostFootprint } from '../src/agent/network/network-test-env.js';

const NAME = 'docker-run';
const RUNS = Math.max(1, Number(process.env.BENCH_DOCKER_RUNS ?? 20));
const GAP_MS = 200;

type SideName = 'nimbus' | 'dockerd' | 'podman';
type Side = Summary | { error: string };
const err = (e: unknown): Side => ({ error: e instanceof Error ? e.message.slice(0, 400) : String(e) });
const pick = (s: Side | undefined, k: 'p50' | 'p95') => (s && k in s ? (s as Summary)[k] : null);

async function timedRun(docker: DockerEndpoint['docker'], image: string): Promise<number> {
  const t0 = performance.now();
  await docker(['run', '--rm', image, 'true']);
  return performance.now() - t0;
}

export async function dockerRun(env: BenchEnv): Promise<BenchOutcome> {
  const sides = new Map<SideName, DockerEndpoint['docker']>();
  const errors = new Map<SideName, Side>();
  const removers: Array<() => Promise<unknown>> = [];
  // podman's default network leaves its bridge and tables behind its store (as in network-start)
  const before = await hostFootprint();
  try {
    try {
      const d = await env.newDaemon();
      removers.push(() => d.stop());
      const cliDir = join(d.home, 'docker-cli');
      mkdirSync(cliDir, { recursive: true });
      const docker = dockerCli(`unix://${join(d.home, 'docker.sock')}`, cliDir);
      await docker(['pull', '-q', env.busybox]);
      sides.set('nimbus', docker);
    } catch (e) {
      errors.set('nimbus', err(e));
    }
    try {
      const dockerd = await startDockerd();
      removers.push(() => dockerd.remove());
      await dockerd.docker(['pull', '-q', env.busybox]);
      sides.set('dockerd', dockerd.docker);
    } catch (e) {
      errors.set('dockerd', err(e));
    }
    try {
      const podman = await startPodmanService();
      removers.push(() => podman.remove());
      // the loopback registry is plain HTTP: pulled through podman itself, which can be told so
      await run('podman', ['--url', podman.host, 'pull', '-q', '--tls-verify=false', env.busybox]).then((r) => {
        if (r.code !== 0) throw new Error(`podman pull: ${r.stderr.trim()}`);
      });
      sides.set('podman', async (args, timeoutMs) => {
        try {
          return await podman.docker(args, timeoutMs);
        } catch (e) {
          // what the service said about it: the CLI's message alone rarely says why
          throw new Error(`${e instanceof Error ? e.message : String(e)}; podman service: ${podman.log().split('\n').filter((l) => /attach|409|error/i.test(l)).slice(-4).join(' | ').slice(0, 800)}`);
        }
      });
    } catch (e) {
      errors.set('podman', err(e));
    }
    const times = new Map<SideName, number[]>([...sides.keys()].map((k) => [k, []]));
    for (const [name, docker] of sides) {
      try {
        for (let i = 0; i < 2; i++) await timedRun(docker, env.busybox);
      } catch (e) {
        errors.set(name, err(e));
        sides.delete(name);
      }
    }
    note(NAME, `docker run --rm true through ${[...sides.keys()].join(', ')}, alternating: ${RUNS} runs each`);
    for (let i = 0; i < RUNS; i++) {
      for (const [name, docker] of [...sides]) {
        await new Promise((r) => setTimeout(r, GAP_MS));
        try {
          times.get(name)!.push(await timedRun(docker, env.busybox));
        } catch (e) {
          errors.set(name, err(e));
          sides.delete(name);
        }
      }
    }
    const result = (n: SideName): Side => errors.get(n) ?? summarize(times.get(n) ?? []);
    const nimbus = result('nimbus');
    const dockerd = result('dockerd');
    const podman = result('podman');
    const record = makeRecord(NAME, {
      results: { runs: RUNS, unit: 'ms', nimbus },
      peers: { dockerd, podman },
      ratios: {
        nimbus_over_dockerd_p50: ratio(pick(nimbus, 'p50'), pick(dockerd, 'p50')),
        nimbus_over_dockerd_p95: ratio(pick(nimbus, 'p95'), pick(dockerd, 'p95')),
        nimbus_over_podman_p50: ratio(pick(nimbus, 'p50'), pick(podman, 'p50')),
        nimbus_over_podman_p95: ratio(pick(nimbus, 'p95'), pick(podman, 'p95')),
      },
    });
    const met = (k: 'p50' | 'p95') => {
      const r = [ratio(pick(nimbus, k), pick(dockerd, k)), ratio(pick(nimbus, k), pick(podman, k))];
      return r.some((x) => x === null) ? null : r.every((x) => x! < 1);
    };
    for (const [n, e] of errors) note(NAME, `${n} failed: ${'error' in e ? e.error : ''}`);
    return {
      record,
      summary: (['p50', 'p95'] as const).map((k) => ({
        bench: NAME, figure: `docker run --rm true ${k} (docker CLI 20.10)`, unit: 'ms', nimbus: pick(nimbus, k),
        peers: { dockerd: pick(dockerd, k), 'podman (Docker API)': pick(podman, k) },
        ratio: ratio(pick(nimbus, k), pick(dockerd, k)),
        goal: 'faster than dockerd and podman', met: met(k),
        note: `ratio vs dockerd; vs podman ${ratio(pick(nimbus, k), pick(podman, k)) ?? '?'}×`,
      })),
    };
  } finally {
    for (const remove of removers.reverse()) await remove().catch((e: unknown) => process.stderr.write(`docker-run cleanup: ${String(e)}\n`));
    const after = await hostFootprint();
    for (const l of after.links) if (!before.links.includes(l) && /^(cni-podman|podman|veth)/.test(l)) await run('ip', ['link', 'del', l]);
    for (const t of after.tables) if (!before.tables.includes(t) && /^table ip6? (nat|filter)$/.test(t)) await run('nft', ['delete', ...t.split(' ')]);
  }
}

if (isMain(import.meta.url)) await runStandalone(NAME, dockerRun);
