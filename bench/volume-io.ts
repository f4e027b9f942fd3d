/**
 * Volume I/O with fio (Debian's 3.33; scripts/bootstrap --bench installs it), issue 16:
 *   host        the fio job on the host, in a directory on the filesystem that holds the volumes'
 *               backing files (the bench daemon's home): the baseline
 *   container   the same job in a container (docker CLI through nimbusd's Docker API) on a named
 *               volume (a sparse ext4 image, loop-mounted with direct I/O: docs/volumes.md)
 *   vm          the same job in a VM (QEMU; TCG on this machine, so expect it slow) on a block
 *               volume (a qcow2 attached as virtio-blk), on the raw device /dev/vda
 * The job, four phases one after the other (stonewall), each BENCH_FIO_RUNTIME seconds (default
 * 3) over a BENCH_FIO_SIZE_MIB file (default 128), O_DIRECT, libaio at queue depth 16:
 * sequential write and read with 1 MiB blocks (MB/s), random write and read with 4 KiB blocks
 * (IOPS). The sides take turns, BENCH_FIO_ROUNDS rounds (default 2; each figure is the median,
 * nearest rank, of its rounds). Reported: each figure beside the host's and their ratio.
 * The VM's block volume is opened with QEMU's default cache (writeback, cache.direct=off), so the
 * guest's O_DIRECT still goes through the host's page cache: its reads can beat the host's own
 * O_DIRECT job.
 *
 * fio reaches the container in an image the bench makes the way a tenant could (lib/tool-image.ts):
 * Debian's fio binary and the shared libraries it loads as one layer over the busybox test layer,
 * pushed to the bench registry and pulled through Nimbus (no host bind mount). The VM boots the
 * test guest (scripts/fixtures/guest.ts) with the same files in an uncompressed cpio placed before
 * its initramfs (the kernel unpacks both), fio as its workload, the output on its console.
 * Run alone: node dist/bench/volume-io.js
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { run, runOk } from '../src/core/exec.js';
import { makeCpio, type CpioEntry } from '../src/agent/drivers/vm/cpio.js';
import { buildTestGuest, GUEST_CACHE_DIR, workloadAppend } from '../scripts/fixtures/guest.js';
import { dockerCli } from './lib/dockerd.js';
import { cleanup } from './lib/cleanup.js';
import { parentDirs, pushToolImage, toolFiles, type ToolFile } from './lib/tool-image.js';
import type { BenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome, type SummaryRow } from './lib/result.js';
import { percentile, ratio, round } from './lib/stats.js';

const NAME = 'volume-io';
const SIZE_MIB = Math.max(16, Number(process.env.BENCH_FIO_SIZE_MIB ?? 128));
const RUNTIME_S = Math.max(1, Number(process.env.BENCH_FIO_RUNTIME ?? 3));
const ROUNDS = Math.max(1, Number(process.env.BENCH_FIO_ROUNDS ?? 2));
const FIO = '/usr/bin/fio';
const FIO_REPO = 'nimbus-test/fio';

const JOBS = [
  { name: 'seqwrite', rw: 'write', bs: '1m', dir: 'write', unit: 'MB/s' },
  { name: 'seqread', rw: 'read', bs: '1m', dir: 'read', unit: 'MB/s' },
  { name: 'randwrite', rw: 'randwrite', bs: '4k', dir: 'write', unit: 'IOPS' },
  { name: 'randread', rw: 'randread', bs: '4k', dir: 'read', unit: 'IOPS' },
] as const;
type JobName = (typeof JOBS)[number]['name'];
type Figures = Record<JobName, { mbps: number; iops: number }>;
type Side = Figures | { error: string };

/** The one fio command line every side runs (only the file differs). */
function fioArgs(filename: string): string[] {
  return [
    '--output-format=json', `--filename=${filename}`, `--size=${SIZE_MIB}m`, '--direct=1', '--ioengine=libaio', '--iodepth=16',
    `--runtime=${RUNTIME_S}`, '--time_based', '--randrepeat=0', '--norandommap',
    ...JOBS.flatMap((j) => [`--name=${j.name}`, `--rw=${j.rw}`, `--bs=${j.bs}`, '--stonewall']),
  ];
}

interface FioJob {
  jobname: string;
  read: { bw_bytes: number; iops: number };
  write: { bw_bytes: number; iops: number };
}

/** fio's JSON (whatever precedes its first `{`, e.g. a warning, skipped) → each phase's figure. */
function parseFio(text: string): Figures {
  const at = text.indexOf('{');
  if (at < 0) throw new Error(`no fio JSON in: ${text.slice(0, 500)}`);
  const doc = JSON.parse(text.slice(at, text.lastIndexOf('}') + 1)) as { jobs: FioJob[] };
  const out = {} as Figures;
  for (const j of JOBS) {
    const job = doc.jobs.find((x) => x.jobname === j.name);
    if (!job) throw new Error(`fio's output has no job ${j.name}`);
    const side = job[j.dir];
    out[j.name] = { mbps: round(side.bw_bytes / 1e6, 1), iops: round(side.iops, 0) };
  }
  return out;
}

/** The test guest's initramfs with fio and its libraries in an uncompressed cpio before it. */
async function fioInitrd(files: ToolFile[]): Promise<{ kernel: string; initrd: string; append: string }> {
  const guest = await buildTestGuest();
  const entries: CpioEntry[] = [
    ...parentDirs(files.map((f) => f.path)).map((d): CpioEntry => ({ name: d, mode: 0o040755 })),
    ...files.map((f): CpioEntry => ({ name: f.path, mode: 0o100755, data: f.data })),
  ];
  const cpio = makeCpio(entries);
  const initrd = join(GUEST_CACHE_DIR, `initrd-fio-${createHash('sha256').update(cpio).update(guest.initrd).digest('hex').slice(0, 16)}.img`);
  if (!existsSync(initrd)) {
    mkdirSync(GUEST_CACHE_DIR, { recursive: true });
    writeFileSync(`${initrd}.tmp`, Buffer.concat([cpio, readFileSync(guest.initrd)]));
    await runOk('mv', [`${initrd}.tmp`, initrd]);
  }
  cleanup.add(`fio initrd ${initrd}`, () => rmSync(initrd, { force: true }));
  return { kernel: guest.kernel, initrd, append: guest.append };
}

/** Each figure's median (nearest rank) over the rounds. */
function medianOf(list: Figures[]): Figures {
  const out = {} as Figures;
  for (const j of JOBS) out[j.name] = { mbps: percentile(list.map((f) => f[j.name].mbps), 50), iops: percentile(list.map((f) => f[j.name].iops), 50) };
  return out;
}

async function onHost(dir: string): Promise<Figures> {
  const r = await run(FIO, fioArgs(join(dir, 'fio.dat')), { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`fio on the host: ${r.stderr.slice(-500)}`);
  return parseFio(r.stdout);
}

async function inContainer(d: BenchDaemon, image: string, cfg: string): Promise<Figures> {
  const docker = dockerCli(`unix://${join(d.home, 'docker.sock')}`, cfg);
  await docker(['pull', '-q', image]);
  await docker(['volume', 'create', '--opt', `size=${SIZE_MIB * 2}m`, 'fio-data']);
  try {
    return parseFio(await docker(['run', '--rm', '-v', 'fio-data:/data', image, 'fio', ...fioArgs('/data/fio.dat')]));
  } finally {
    await docker(['volume', 'rm', 'fio-data']).catch(() => undefined);
  }
}

async function inVm(d: BenchDaemon, boot: { kernel: string; initrd: string; append: string }): Promise<Figures> {
  const c = d.client;
  await c.json('POST', '/volumes', { name: 'fio-blk', type: 'block', sizeBytes: SIZE_MIB * 2 * 1024 * 1024 });
  let vm: string | undefined;
  try {
    const cmd = `echo FIO-BEGIN; /usr/bin/fio ${fioArgs('/dev/vda').join(' ')}; echo "FIO-END $?"`;
    vm = (await c.json<{ id: string }>('POST', '/vms', {
      name: 'fio-vm', cpus: 1, memoryMiB: 512, kernel: boot.kernel, initrd: boot.initrd, append: workloadAppend(boot, cmd),
    })).id;
    await c.json('POST', `/vms/${vm}/volumes`, { volume: 'fio-blk' });
    const t0 = Date.now();
    await c.json('POST', `/vms/${vm}/start`);
    // the console until QEMU ends (the guest powers off after its workload)
    const logs = await Promise.race([
      c.json<{ line: string }[]>('GET', `/vms/${vm}/logs?follow=true`),
      new Promise<never>((_r, fail) => setTimeout(() => fail(new Error('the VM did not finish within 600 s')), 600_000).unref()),
    ]);
    const text = (Array.isArray(logs) ? logs : []).map((l) => l.line).join('\n');
    const body = /FIO-BEGIN\n([\s\S]*)\nFIO-END (\d+)/.exec(text);
    if (!body || body[2] !== '0') throw new Error(`fio in the guest failed: ${text.slice(-1500)}`);
    note(NAME, `the VM booted, ran fio and powered off in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return parseFio(body[1]!);
  } finally {
    if (vm) await c.request('DELETE', `/vms/${vm}?force=true`).catch(() => undefined);
    await c.request('DELETE', '/volumes/fio-blk?force=true').catch(() => undefined);
  }
}

export async function volumeIo(env: BenchEnv): Promise<BenchOutcome> {
  const files = await toolFiles(FIO, 'fio');
  const image = await pushToolImage(env.registry.host, { repo: FIO_REPO, files, cmd: ['fio', '--version'], createdBy: 'Debian fio and its libraries' });
  const d = await env.newDaemon();
  const work = mkdtempSync(join(dirname(d.home), 'bench-fio-'));
  const removeWork = cleanup.add(`fio host dir ${work}`, () => rmSync(work, { recursive: true, force: true }));
  const sameFs = statSync(work).dev === statSync(d.home).dev;
  const sides = new Map<'host' | 'container' | 'vm', Side>();
  const err = (e: unknown): Side => ({ error: (e instanceof Error ? e.message : String(e)).slice(0, 600) });
  try {
    note(NAME, `fio ${SIZE_MIB} MiB, ${RUNTIME_S} s per phase, ${ROUNDS} rounds, O_DIRECT, libaio qd16: host (${work}, same filesystem as the volumes: ${sameFs}), container on a named volume, VM on a block volume`);
    mkdirSync(join(work, 'host'));
    mkdirSync(join(work, 'cfg'));
    const boot = fioInitrd(files);
    boot.catch(() => undefined);
    const got = new Map<'host' | 'container' | 'vm', Figures[]>([['host', []], ['container', []], ['vm', []]]);
    const take = async (n: 'host' | 'container' | 'vm', f: () => Promise<Figures>) => {
      if (sides.has(n)) return; // failed in an earlier round
      try {
        got.get(n)!.push(await f());
      } catch (e) {
        sides.set(n, err(e));
      }
    };
    for (let i = 0; i < ROUNDS; i++) {
      await take('host', () => onHost(join(work, 'host')));
      rmSync(join(work, 'host', 'fio.dat'), { force: true });
      await take('container', () => inContainer(d, image, join(work, 'cfg')));
      await take('vm', async () => inVm(d, await boot));
    }
    for (const [n, list] of got) if (!sides.has(n)) sides.set(n, medianOf(list));
  } finally {
    await d.stop();
    await removeWork();
  }
  for (const [n, s] of sides) if ('error' in s) note(NAME, `${n} failed: ${s.error}`);
  const host = sides.get('host')!;
  const fig = (s: Side | undefined, j: (typeof JOBS)[number]) => (s && !('error' in s) ? (j.unit === 'MB/s' ? s[j.name].mbps : s[j.name].iops) : null);
  const ratios: Record<string, number | null> = {};
  for (const j of JOBS) for (const n of ['container', 'vm'] as const) ratios[`${n}_over_host_${j.name}`] = ratio(fig(sides.get(n), j), fig(host, j));
  const record = makeRecord(NAME, {
    results: { sizeMiB: SIZE_MIB, runtimeS: RUNTIME_S, rounds: ROUNDS, job: 'O_DIRECT, libaio, iodepth 16', sameFilesystem: sameFs, container: sides.get('container'), vm: sides.get('vm') },
    peers: { host },
    ratios,
  });
  const summary: SummaryRow[] = [];
  for (const n of ['container', 'vm'] as const) {
    for (const j of JOBS) {
      summary.push({
        bench: NAME, figure: `${n === 'container' ? 'container, named volume' : 'VM (TCG), block volume'}: ${j.name} ${j.bs}`, unit: j.unit,
        nimbus: fig(sides.get(n), j), peers: { host: fig(host, j) }, ratio: ratios[`${n}_over_host_${j.name}`] ?? null,
        ...(n === 'container' ? { goal: '≥ 0.9× the host', met: ratios[`${n}_over_host_${j.name}`] === null ? null : ratios[`${n}_over_host_${j.name}`]! >= 0.9 } : { note: 'TCG: reported' }),
      });
    }
  }
  return { record, summary };
}

if (isMain(import.meta.url)) await runStandalone(NAME, volumeIo);
