/**
 * docker-compose 1.29 (Debian's) on a 10-service file, against nimbusd's Docker API and against a
 * private dockerd (bench/lib/dockerd.ts), side by side in one run (issue 16):
 *   up       `docker-compose up -d` until every service's container reports healthy (its
 *            health check: `true` every second), polled with `docker inspect` every 100 ms
 *   down     `docker-compose down -v` (containers, the project network, a named volume)
 * The services: one with a named volume, the others depending on it; each a shell that ends on
 * SIGTERM. The sides alternate round by round, BENCH_COMPOSE_ROUNDS each (default 3); the image
 * is pulled into each first. Goal (issue 16): faster than dockerd (up to healthy, and down).
 * Run alone: node dist/bench/compose-up.js
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { dockerCli, startDockerd, type DockerEndpoint } from './lib/dockerd.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { ratio, summarize, type Summary } from './lib/stats.js';

const NAME = 'compose-up';
const ROUNDS = Math.max(1, Number(process.env.BENCH_COMPOSE_ROUNDS ?? 3));
const SERVICES = 10;
const COMPOSE = '/usr/bin/docker-compose';

function composeFile(image: string): string {
  const svc = (i: number) => [
    `  s${i}:`,
    `    image: ${image}`,
    `    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]`,
    '    healthcheck:',
    '      test: ["CMD", "true"]',
    '      interval: 1s',
    '      timeout: 1s',
    '      retries: 3',
    ...(i === 0 ? ['    volumes:', '      - data:/data'] : ['    depends_on: [s0]']),
  ];
  return ['version: "2.4"', 'services:', ...Array.from({ length: SERVICES }, (_, i) => svc(i)).flat(), 'volumes:', '  data: {}', ''].join('\n');
}

interface Side {
  name: 'nimbus' | 'dockerd';
  host: string;
  docker: DockerEndpoint['docker'];
}

async function compose(side: Side, dir: string, args: string[]): Promise<void> {
  const r = await run(COMPOSE, ['-p', 'benchup', ...args], {
    cwd: dir, timeoutMs: 300_000,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: join(dir, 'cfg'), DOCKER_CONFIG: join(dir, 'cfg'), DOCKER_HOST: side.host, COMPOSE_INTERACTIVE_NO_CLI: '1' },
  });
  if (r.code !== 0) throw new Error(`docker-compose ${args.join(' ')} against ${side.name}: ${r.stderr.trim().slice(-800)}`);
}

/** ms from `up -d` until all SERVICES containers report healthy; then ms of `down -v`. */
async function round(side: Side, dir: string): Promise<{ up: number; down: number }> {
  const t0 = performance.now();
  await compose(side, dir, ['up', '-d']);
  for (;;) {
    const ids = (await side.docker(['ps', '-q', '--filter', 'label=com.docker.compose.project=benchup'])).split('\n').filter(Boolean);
    if (ids.length === SERVICES) {
      const states = (await side.docker(['inspect', '--format', '{{.State.Health.Status}}', ...ids])).split('\n').filter(Boolean);
      if (states.length === SERVICES && states.every((s) => s === 'healthy')) break;
    }
    if (performance.now() - t0 > 180_000) throw new Error(`${side.name}: not all ${SERVICES} services healthy after 180 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const up = performance.now() - t0;
  const t1 = performance.now();
  await compose(side, dir, ['down', '-v']);
  return { up, down: performance.now() - t1 };
}

export async function composeUp(env: BenchEnv): Promise<BenchOutcome> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-compose-'));
  const removeDir = cleanup.add(`compose project ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'cfg'), { recursive: true });
  writeFileSync(join(dir, 'docker-compose.yml'), composeFile(env.busybox));
  const sides: Side[] = [];
  const errors = new Map<string, string>();
  const removers: Array<() => Promise<unknown>> = [];
  try {
    try {
      const d = await env.newDaemon();
      removers.push(() => d.stop());
      const host = `unix://${join(d.home, 'docker.sock')}`;
      const docker = dockerCli(host, join(dir, 'cfg'));
      await docker(['pull', '-q', env.busybox]);
      sides.push({ name: 'nimbus', host, docker });
    } catch (e) {
      errors.set('nimbus', String(e));
    }
    try {
      const dockerd = await startDockerd();
      removers.push(() => dockerd.remove());
      await dockerd.docker(['pull', '-q', env.busybox]);
      sides.push({ name: 'dockerd', host: dockerd.host, docker: dockerd.docker });
    } catch (e) {
      errors.set('dockerd', String(e));
    }
    const times = new Map(sides.map((s) => [s.name, { up: [] as number[], down: [] as number[] }]));
    note(NAME, `docker-compose up -d to ${SERVICES} healthy, then down -v, on ${sides.map((s) => s.name).join(' and ')}, alternating: ${ROUNDS} rounds`);
    for (let i = 0; i < ROUNDS; i++) {
      for (const side of [...sides]) {
        try {
          const r = await round(side, dir);
          times.get(side.name)!.up.push(r.up);
          times.get(side.name)!.down.push(r.down);
        } catch (e) {
          errors.set(side.name, e instanceof Error ? e.message : String(e));
          await compose(side, dir, ['down', '-v']).catch(() => undefined);
          sides.splice(sides.indexOf(side), 1);
        }
      }
    }
    for (const [n, e] of errors) note(NAME, `${n} failed: ${e.slice(0, 800)}`);
    const sum = (n: 'nimbus' | 'dockerd', k: 'up' | 'down'): Summary | { error: string } => {
      const e = errors.get(n);
      return e ? { error: e.slice(0, 400) } : summarize(times.get(n)?.[k] ?? []);
    };
    const p50 = (s: Summary | { error: string }) => ('p50' in s ? s.p50 : null);
    const nimbus = { up: sum('nimbus', 'up'), down: sum('nimbus', 'down') };
    const dockerd = { up: sum('dockerd', 'up'), down: sum('dockerd', 'down') };
    const record = makeRecord(NAME, {
      results: { rounds: ROUNDS, services: SERVICES, unit: 'ms', nimbus },
      peers: { dockerd },
      ratios: { up_over_dockerd_p50: ratio(p50(nimbus.up), p50(dockerd.up)), down_over_dockerd_p50: ratio(p50(nimbus.down), p50(dockerd.down)) },
    });
    const row = (k: 'up' | 'down', figure: string) => {
      const r = ratio(p50(nimbus[k]), p50(dockerd[k]));
      return { bench: NAME, figure, unit: 'ms', nimbus: p50(nimbus[k]), peers: { dockerd: p50(dockerd[k]) }, ratio: r, goal: 'faster than dockerd', met: r === null ? null : r < 1 };
    };
    return { record, summary: [row('up', `compose up -d, ${SERVICES} services to healthy (median)`), row('down', 'compose down -v (median)')] };
  } finally {
    for (const remove of removers.reverse()) await remove().catch((e: unknown) => process.stderr.write(`compose-up cleanup: ${String(e)}\n`));
    await removeDir();
  }
}

if (isMain(import.meta.url)) await runStandalone(NAME, composeUp);
