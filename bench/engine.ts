/**
 * Container engine benchmarks, each beside its peers in the same run:
 *   start   `run --rm IMAGE true` through the API vs podman run --rm vs raw runc run
 *   burst   200 concurrent detached starts: time to all running, daemon RSS per container
 *   pull    cold pull + unpack of the test image vs skopeo copy + umoci unpack
 * Prints one JSON line (bench/run.ts appends it to bench/results/engine.jsonl).
 * Usage: node dist/bench/engine.js [start] [burst] [pull]   (env BENCH_RUNS, BENCH_BURST)
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, runOk } from '../src/core/exec.js';
import { startDaemonProcess, type DaemonProcess } from '../test/helpers/daemon-process.js';
import { BUSYBOX_APPLETS, startTestRegistryWithImages, type TestRegistry } from '../test/helpers/registry-images.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 30);
const BURST = Number(process.env.BENCH_BURST ?? 200);
const which = new Set(process.argv.slice(2).length ? process.argv.slice(2) : ['start', 'burst', 'pull']);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN;
}
const r1 = (x: number) => Math.round(x * 10) / 10;
const summary = (xs: number[]) => ({ n: xs.length, p50: r1(pct(xs, 50)), p95: r1(pct(xs, 95)), min: r1(Math.min(...xs)), max: r1(Math.max(...xs)) });
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}
function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** One `run --rm IMAGE true` as the CLI does it: create, wait (removed) opened before start, start. */
async function nimbusRunRm(d: DaemonProcess, image: string): Promise<void> {
  const c = await d.api<{ id: string }>('POST', '/containers', { image, cmd: ['true'], autoRemove: true });
  if (c.status !== 201) throw new Error(`create: ${JSON.stringify(c.body)}`);
  const waited = d.api<{ exitCode: number }>('POST', `/containers/${c.body.id}/wait?condition=removed`);
  const s = await d.api('POST', `/containers/${c.body.id}/start`);
  if (s.status !== 200) throw new Error(`start: ${JSON.stringify(s.body)}`);
  const w = await waited;
  if (w.body.exitCode !== 0) throw new Error(`exit ${w.body.exitCode}`);
}

function busyboxBundle(dir: string): string {
  const rootfs = join(dir, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  cpSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of BUSYBOX_APPLETS) {
    try {
      cpSync('/bin/busybox', join(rootfs, 'bin', a));
    } catch {
      /* exists */
    }
  }
  return rootfs;
}

async function benchStart(d: DaemonProcess, reg: TestRegistry, image: string) {
  await nimbusRunRm(d, image); // warm: image unpacked, runc binary cached
  const nimbus: number[] = [];
  for (let i = 0; i < RUNS; i++) nimbus.push(await timed(() => nimbusRunRm(d, image)));

  const cli: number[] = [];
  for (let i = 0; i < Math.min(RUNS, 10); i++) {
    cli.push(await timed(async () => {
      const r = await d.cli(['run', '--rm', image, 'true']);
      if (r.code !== 0) throw new Error(r.stderr);
    }));
  }

  // raw runc run on a prepared bundle
  const rdir = mkdtempSync(join(tmpdir(), 'bench-runc-'));
  const runcRuns: number[] = [];
  try {
    busyboxBundle(rdir);
    await runOk('runc', ['spec', '--bundle', rdir]);
    const spec = JSON.parse(readFileSync(join(rdir, 'config.json'), 'utf8')) as { process: { terminal: boolean; args: string[]; rlimits?: unknown[] }; root: { readonly: boolean } };
    spec.process.terminal = false;
    spec.process.args = ['/bin/true'];
    spec.process.rlimits = [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }];
    writeFileSync(join(rdir, 'config.json'), JSON.stringify(spec));
    for (let i = 0; i < RUNS; i++) {
      runcRuns.push(await timed(() => runOk('runc', ['--root', join(rdir, 'state'), 'run', '--bundle', rdir, `bench-${process.pid}-${i}`])));
    }
  } finally {
    rmSync(rdir, { recursive: true, force: true });
  }

  // podman run --rm, private storage
  const pdir = mkdtempSync(join(tmpdir(), 'bench-podman-'));
  const podman = (args: string[]) => ['--root', join(pdir, 'root'), '--runroot', join(pdir, 'run'), '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', ...args];
  const podmanRuns: number[] = [];
  let podmanError: string | undefined;
  const pimage = `${reg.host}/nimbus-test/busybox:single`;
  try {
    await runOk('podman', podman(['pull', '-q', '--tls-verify=false', pimage]));
    const args = podman(['run', '--rm', '--network', 'none', '--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096', pimage, 'true']);
    await runOk('podman', args);
    for (let i = 0; i < RUNS; i++) podmanRuns.push(await timed(() => runOk('podman', args)));
  } catch (e) {
    podmanError = String(e);
  } finally {
    await run('podman', podman(['system', 'reset', '--force'])).catch(() => undefined);
    await run('umount', ['-R', join(pdir, 'root')]).catch(() => undefined);
    rmSync(pdir, { recursive: true, force: true });
  }
  const n = summary(nimbus);
  const p = podmanRuns.length ? summary(podmanRuns) : undefined;
  const rc = summary(runcRuns);
  return {
    nimbusApi: n,
    nimbusCli: summary(cli),
    runcRun: rc,
    podman: p ?? { error: podmanError },
    ratios: { nimbusApi_over_podman_p50: p ? r1((n.p50 / p.p50) * 100) / 100 : null, nimbusApi_over_runc_p50: r1((n.p50 / rc.p50) * 100) / 100 },
  };
}

async function benchBurst(d: DaemonProcess, image: string) {
  const pid = d.child.pid!;
  const rssBefore = rssKiB(pid);
  const ids: string[] = [];
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: BURST }, async () => {
    const c = await d.api<{ id: string }>('POST', '/containers', { image, cmd: ['sleep', '3600'] });
    if (c.status !== 201) throw new Error(JSON.stringify(c.body));
    ids.push(c.body.id);
    const s = await d.api('POST', `/containers/${c.body.id}/start`);
    if (s.status !== 200) throw new Error(JSON.stringify(s.body));
  }));
  const allRunningMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const running = (await d.api<{ status: string }[]>('GET', '/containers')).body.filter((c) => c.status === 'running').length;
  await new Promise((r) => setTimeout(r, 1000));
  const rssAfter = rssKiB(pid);
  const conmons = (await run('pgrep', ['-x', 'conmon'])).stdout.split('\n').filter(Boolean).map(Number);
  const conmonRss = conmons.map(rssKiB).filter((x) => !Number.isNaN(x));
  const tr = process.hrtime.bigint();
  await Promise.all(ids.map((id) => d.api('DELETE', `/containers/${id}?force=true`)));
  const removeAllMs = Number(process.hrtime.bigint() - tr) / 1e6;
  return {
    containers: BURST,
    running,
    allRunningMs: Math.round(allRunningMs),
    removeAllMs: Math.round(removeAllMs),
    daemonRssKiB: { before: rssBefore, with: rssAfter, perContainer: r1((rssAfter - rssBefore) / BURST) },
    conmonRssKiBPerContainer: conmonRss.length ? r1(conmonRss.reduce((a, b) => a + b, 0) / conmonRss.length) : null,
  };
}

async function benchPull(reg: TestRegistry) {
  const runs = Math.max(3, Math.min(RUNS, 5));
  const ref = `${reg.host}/nimbus-test/busybox:single`;
  const nimbus: number[] = [];
  for (let i = 0; i < runs; i++) {
    const d = await startDaemonProcess();
    try {
      nimbus.push(await timed(async () => {
        const op = await d.api<{ id: string }>('POST', '/images/pull', { reference: ref });
        const done = await d.api<{ status: string; error: unknown }>('GET', `/operations/${op.body.id}/wait?timeout=120`);
        if (done.body.status !== 'succeeded') throw new Error(JSON.stringify(done.body.error));
      }));
    } finally {
      await d.destroy();
    }
  }
  const peer: number[] = [];
  for (let i = 0; i < runs; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'bench-umoci-'));
    try {
      peer.push(await timed(async () => {
        await runOk('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(dir, 'layout')}:single`]);
        await runOk('umoci', ['unpack', '--image', `${join(dir, 'layout')}:single`, join(dir, 'bundle')]);
      }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const n = summary(nimbus);
  const p = summary(peer);
  return { image: ref, nimbus: n, skopeoUmoci: p, ratio_p50: r1((n.p50 / p.p50) * 100) / 100 };
}

async function main() {
  const reg = await startTestRegistryWithImages();
  const d = await startDaemonProcess();
  const results: Record<string, unknown> = {};
  try {
    const image = `${reg.host}/nimbus-test/busybox:latest`;
    const op = await d.api<{ id: string }>('POST', '/images/pull', { reference: image });
    await d.api('GET', `/operations/${op.body.id}/wait?timeout=120`);
    if (which.has('start')) results.start = await benchStart(d, reg, image);
    if (which.has('burst')) results.burst = await benchBurst(d, image);
  } finally {
    await d.destroy();
  }
  try {
    if (which.has('pull')) results.pull = await benchPull(reg);
  } finally {
    await reg.stop();
  }
  const line = { bench: 'engine', time: new Date().toISOString(), host: { cpus: cpus().length, kernel: release() }, results };
  console.log(JSON.stringify(results, null, 2));
  console.log(JSON.stringify(line));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
