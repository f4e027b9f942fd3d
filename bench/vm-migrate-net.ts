/**
 * Live migration of a VM with a 1 GiB disk and a NIC, across two hosts, under a steady network
 * load (issue 15): a real nimbusd (embedded agent "local") and a `nimbusd agent` in a network
 * namespace of its own joined by a veth underlay (a second host as the tests make one); the VM
 * on a user network that spans both (VXLAN), its root disk a 1 GiB qcow2 image of which the
 * guest has written BENCH_DISK_MIB (default 32) MiB; a container on the embedded host streams
 * TCP to the guest (64 KiB every 50 ms) and pings it every 20 ms for the whole run. The VM moves
 * back and forth BENCH_NET_MIGRATIONS times (default 6). Reported: downtime, total time, disk
 * and RAM bytes per move, pings lost per move, TCP connections broken (the stream is one
 * connection for the whole run). Goal: downtime < 60 ms, zero TCP connections broken.
 * Run alone: node dist/bench/vm-migrate-net.js
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startDaemonProcess, type DaemonProcess } from '../test/helpers/daemon-process.js';
import { agentInNamespace, secondHost, tearDownTwoHosts, type NamespaceAgent, type SecondHost } from '../test/helpers/second-host.js';
import { vxlanMissing } from '../src/agent/network/network-test-env.js';
import { runOk } from '../src/core/exec.js';
import { buildTestImages, writeOciLayoutTar } from '../scripts/fixtures/images.js';
import { buildTestGuest, GUEST_CACHE_DIR, GUEST_HOST_DIRS_ENV, NET_MARKER, workloadAppend } from '../scripts/fixtures/guest.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { summarize } from './lib/stats.js';

const NAME = 'vm-migrate-net';
const MOVES = Math.max(1, Number(process.env.BENCH_NET_MIGRATIONS ?? 6));
const DISK_MIB = Math.max(1, Number(process.env.BENCH_DISK_MIB ?? 32));
const GOAL_DOWNTIME_MS = 60;
const AGENT = 'bench-host-b';

interface Report { from: string; to: string; totalMs: number; downtimeMs: number; qemuDowntimeMs: number; bytes: number; diskBytes?: number; iterations: number }

/** A process in a network namespace; resolves with its output when it ends. */
function inNamespace(netns: string, argv: string[]): { done: Promise<string>; stop(): void } {
  const c = spawn('nsenter', [`--net=${netns}`, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  c.stdout.on('data', (x: Buffer) => (out += x.toString()));
  c.stderr.on('data', (x: Buffer) => (out += x.toString()));
  return { done: new Promise((resolve) => c.on('exit', () => resolve(out))), stop: () => c.kill('SIGINT') };
}

/** One TCP connection for the whole run, 64 KiB every 50 ms; prints "broken" if it breaks, "sent N" when told to stop. */
const LOAD = (ip: string) => `
const s = require('net').connect(7000, '${ip}');
const chunk = Buffer.alloc(65536, 120);
let sent = 0, t;
s.on('connect', () => { t = setInterval(() => { s.write(chunk); sent += chunk.length; }, 50); });
s.on('error', (e) => { console.log('broken: ' + e.message); process.exit(1); });
process.on('SIGINT', () => { clearInterval(t); s.end(() => { console.log('sent ' + sent); process.exit(0); }); });`;

export async function vmMigrateNet(): Promise<BenchOutcome> {
  const noVxlan = await vxlanMissing(`b${process.pid}`);
  if (noVxlan) throw new Error(`this kernel cannot carry the overlay: ${noVxlan}`);
  const guest = await buildTestGuest(GUEST_CACHE_DIR);
  const work = await mkdtemp(path.join(tmpdir(), 'nimbus-bench-migrate-net-'));
  let host2: SecondHost | undefined;
  let d: DaemonProcess | undefined;
  let b: NamespaceAgent | undefined;
  const undo = cleanup.add('vm-migrate-net hosts', async () => {
    await tearDownTwoHosts(d, b, host2, ['bench-roam']);
    await rm(work, { recursive: true, force: true });
  });
  const cli = async (args: string[]) => {
    const r = await d!.cli(args);
    if (r.code !== 0) throw new Error(`nimbus ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const moves: Array<Report & { pingsSent: number; pingsLost: number }> = [];
  let broken = 0;
  let streamed = 0;
  try {
    host2 = await secondHost({ ns: 'bmn', link: 'nbm' });
    d = await startDaemonProcess([], { ...GUEST_HOST_DIRS_ENV, NIMBUS_MIGRATION_ADDRESS: host2.hostAddress, NIMBUS_LOG_LEVEL: 'warn' });
    b = agentInNamespace(d.socket, host2, (await cli(['agent', 'join-token', '--ttl', '5m'])).trim(), {
      name: AGENT, homePrefix: 'nimbus-bench-agent', env: GUEST_HOST_DIRS_ENV, args: ['--migration-address', host2.agentAddress],
    });
    await b.start();
    const archive = path.join(work, 'image.tar');
    await writeOciLayoutTar(await buildTestImages(), archive, '');
    const image = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(await cli(['image', 'import', archive]))![1]!;
    const base = path.join(work, 'base.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', base, '1G']);
    await cli(['image', 'import-disk', 'bench-1g', base]);
    await cli(['network', 'create', 'bench-roam']);
    await cli(['run', '-d', '--name', 'bench-watcher', '--host', 'local', '--network', 'bench-roam', image, 'sleep', '3600']);
    const watcherId = (JSON.parse(await cli(['inspect', 'bench-watcher'])) as Array<{ id: string }>)[0]!.id;
    const netns = `/run/netns/${(await readdir('/run/netns')).find((n) => n.endsWith(`-${watcherId}`))}`;
    // the guest fills part of its disk, then takes the load (busybox nc quits when its stdin ends: hence the sleep)
    const workload = `dd if=/dev/urandom of=/dev/vda bs=1M count=${DISK_MIB} conv=fsync 2>/dev/null; echo disk-filled; sleep 100000 | nc -l -p 7000 > /dev/null`;
    await cli(['vm', 'run', '--name', 'bench-roamer', '--memory', '256m', '--agent', AGENT, '--network', 'bench-roam', '--image', 'bench-1g',
      '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', workloadAppend(guest, workload)]);
    const deadline = Date.now() + 180_000;
    let ip: string | undefined;
    for (;;) {
      const logs = await cli(['vm', 'logs', 'bench-roamer']);
      ip ??= new RegExp(`${NET_MARKER} eth0 ([0-9.]+)/`).exec(logs)?.[1];
      if (ip && logs.includes('disk-filled')) break;
      if (Date.now() > deadline) throw new Error('the guest did not fill its disk in time');
      await new Promise((r) => setTimeout(r, 500));
    }
    await new Promise((r) => setTimeout(r, 1000));
    const load = inNamespace(netns, [process.execPath, '-e', LOAD(ip)]);
    const loadDone = load.done.then((out) => {
      if (/broken/.test(out)) broken++;
      streamed = Number(/sent (\d+)/.exec(out)?.[1] ?? 0);
      return out;
    });
    await new Promise((r) => setTimeout(r, 1000));
    let to = 'local';
    for (let i = 0; i < MOVES; i++) {
      const pings = inNamespace(netns, ['/bin/busybox', 'ping', '-i', '0.02', '-w', '4', ip]);
      await new Promise((r) => setTimeout(r, 1000));
      const report = JSON.parse(await cli(['vm', 'migrate', 'bench-roamer', '--to', to, '--max-downtime', '100', '-o', 'json'])) as Report;
      const out = await pings.done;
      const m = /(\d+) packets transmitted, (\d+) packets received/.exec(out);
      const sent = Number(m?.[1] ?? 0);
      moves.push({ ...report, pingsSent: sent, pingsLost: sent - Number(m?.[2] ?? 0) });
      to = to === 'local' ? AGENT : 'local';
    }
    load.stop();
    const out = await loadDone;
    if (!/sent \d+/.test(out) && !/broken/.test(out)) throw new Error(`the load generator said: ${out}`);
  } finally {
    await undo();
  }
  const downtime = summarize(moves.map((r) => r.downtimeMs));
  const total = summarize(moves.map((r) => r.totalMs));
  const diskMiB = summarize(moves.map((r) => (r.diskBytes ?? 0) / 2 ** 20));
  const ramMiB = summarize(moves.map((r) => r.bytes / 2 ** 20));
  const lost = summarize(moves.map((r) => r.pingsLost));
  note(NAME, moves.map((r) => `${r.from}→${r.to}: ${r.downtimeMs} ms down, ${r.totalMs} ms, disk ${((r.diskBytes ?? 0) / 2 ** 20).toFixed(1)} MiB, ${r.pingsLost}/${r.pingsSent} pings lost`).join('; '));
  const record = makeRecord(NAME, {
    results: { moves: MOVES, diskGiB: 1, diskWrittenMiB: DISK_MIB, guestMiB: 256, unit: 'ms', downtime, total, diskMiB, ramMiB, pingsLost: lost, tcpBroken: broken, streamedBytes: streamed, reports: moves },
    peers: {},
    ratios: {},
  });
  return {
    record,
    summary: [
      { bench: NAME, figure: 'live migration downtime p50, 1 GiB disk + NIC across hosts under load', unit: 'ms', nimbus: downtime.p50, peers: {}, ratio: null,
        goal: `< ${GOAL_DOWNTIME_MS} ms`, met: downtime.p50 < GOAL_DOWNTIME_MS, note: `p95 ${downtime.p95}; total p50 ${total.p50} ms; disk ${diskMiB.p50} MiB, RAM ${ramMiB.p50} MiB per move` },
      { bench: NAME, figure: 'TCP connections broken over all moves', unit: 'count', nimbus: broken, peers: {}, ratio: null, goal: '0', met: broken === 0,
        note: `pings (every 20 ms) lost per move p50 ${lost.p50}, max ${lost.max}; ${(streamed / 2 ** 20).toFixed(1)} MiB streamed over one connection` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, vmMigrateNet);
