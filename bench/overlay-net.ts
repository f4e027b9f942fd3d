/**
 * The overlay's throughput and latency (issue 15): a real nimbusd (control plane and embedded agent
 * "local") and a second host (`nimbusd agent` in a network namespace of its own, joined by a veth
 * pair: test/helpers/second-host.ts); a user network spanning both (VXLAN, docs/overlay.md). An
 * iperf3 server runs in a container on the embedded host; its client runs
 *   overlay   in a container on the second host, across the overlay
 *   bridge    in a container on the embedded host, on the same bridge
 *   underlay  directly in the second host's namespace, against an iperf3 server on the embedded
 *             host's end of the veth pair (no overlay, no container): the baseline
 * Each side: TCP throughput (iperf3, one stream, BENCH_IPERF_SECONDS seconds, default 4, after a
 * 1 s warm-up it omits) and round trip (busybox ping -c 50 -i 0.01, the median of every reply);
 * sides take turns, BENCH_NET_ROUNDS rounds (default 3: this host is shared, its figures move), each
 * figure the median over them. Beside them: CPU seconds per Gbit (iperf3's own, ksoftirqd's, and the
 * host's softirq time from /proc/stat), the MTU each container got and the MSS iperf3 used, and the
 * offloads of the devices on the path (ethtool -k).
 * iperf3 reaches the containers in an image made from Debian's iperf3 (lib/tool-image.ts).
 * Goal: overlay ≥ 0.9× the underlay's throughput, and ≤ 0.1 ms added to a round trip.
 *   node dist/bench/run.js overlay-net
 */
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { startDaemonProcess, type DaemonProcess } from '../test/helpers/daemon-process.js';
import { agentInNamespace, secondHost, tearDownTwoHosts, type NamespaceAgent, type SecondHost } from '../test/helpers/second-host.js';
import { vxlanMissing } from '../src/agent/network/network-test-env.js';
import { vxlanDeviceName } from '../src/agent/network/overlay.js';
import { run } from '../src/core/exec.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { hostSoftirqTicks, ksoftirqdTicks, ticksToSec } from './lib/proc-cpu.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { median, ratio, round } from './lib/stats.js';
import { pushToolImage, toolFiles } from './lib/tool-image.js';

const NAME = 'overlay-net';
const SECONDS = Math.max(1, Number(process.env.BENCH_IPERF_SECONDS ?? 4));
const ROUNDS = Math.max(1, Number(process.env.BENCH_NET_ROUNDS ?? 3));
const PINGS = 50;
const GOAL_RATIO = 0.9;
const GOAL_ADDED_MS = 0.1;
const AGENT = 'bench-overlay-b';
const NETWORK = 'bench-overlay';
const IPERF = '/usr/bin/iperf3';
/** The underlay server's port on the host's end of the veth (in the host's namespace, where other work listens too). */
const UNDERLAY_PORT = 20_000 + (process.pid % 10_000);

const readLoad = (): number => round(loadavg()[0] ?? 0, 2);

const SIDES = ['underlay', 'bridge', 'overlay'] as const;
type Side = (typeof SIDES)[number];

/**
 * pathCpuSecPerGbit: what a Gbit costs the path, on any core: the iperf3 processes' own CPU (the
 * copies, and every hop's softirq that ran in their context: each veth hands its packet to the next
 * namespace in a softirq raised by the sender) and ksoftirqd's (what was deferred). Unlike the
 * host's busy time it hardly counts other work on a shared host. hostSoftirqSecPerGbit is
 * /proc/stat's softirq time (every core; ticks that land in a softirq, whoever's context).
 */
interface Throughput { gbps: number; mss: number | null; retransmits: number; iperfCpuSecPerGbit: number; ksoftirqdSecPerGbit: number; pathCpuSecPerGbit: number; hostSoftirqSecPerGbit: number }
interface IperfJson {
  start?: { tcp_mss_default?: number; tcp_mss?: number };
  end?: { sum_sent?: { retransmits?: number }; sum_received?: { bits_per_second: number; bytes: number }; cpu_utilization_percent?: { host_total: number; remote_total: number } };
  error?: string;
}

/** iperf3's JSON (a client's) → its figures, with ksoftirqd's and the host's softirq seconds over the run. */
function parseIperf(text: string, ksoftirqdSec: number, softirqSec: number): Throughput {
  const at = text.indexOf('{');
  if (at < 0) throw new Error(`no iperf3 JSON in: ${text.slice(0, 500)}`);
  const j = JSON.parse(text.slice(at, text.lastIndexOf('}') + 1)) as IperfJson;
  if (j.error || !j.end?.sum_received) throw new Error(`iperf3: ${j.error ?? text.slice(0, 500)}`);
  const gbps = j.end.sum_received.bits_per_second / 1e9;
  // the CPU figures span the whole test, its omitted warm-up second included
  const gbit = gbps * (SECONDS + 1);
  const cpu = j.end.cpu_utilization_percent;
  const iperfCpu = cpu ? ((cpu.host_total + cpu.remote_total) / 100) / gbps : NaN;
  return {
    gbps: round(gbps, 2), mss: j.start?.tcp_mss_default ?? j.start?.tcp_mss ?? null, retransmits: j.end.sum_sent?.retransmits ?? 0,
    iperfCpuSecPerGbit: round(iperfCpu, 4), ksoftirqdSecPerGbit: round(ksoftirqdSec / gbit, 4), pathCpuSecPerGbit: round(iperfCpu + ksoftirqdSec / gbit, 4),
    hostSoftirqSecPerGbit: round(softirqSec / gbit, 4),
  };
}

/** Every reply's round trip (ms) in busybox ping's output. */
function parsePing(text: string): number[] {
  const rtts = [...text.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  if (rtts.length < PINGS / 2) throw new Error(`ping: ${rtts.length} of ${PINGS} replies: ${text.slice(-400)}`);
  return rtts;
}

/** The offloads on the path that decide whether large segments cross the tunnel whole. */
const FEATURES = ['tcp-segmentation-offload', 'generic-segmentation-offload', 'generic-receive-offload', 'tx-checksumming', 'tx-udp_tnl-segmentation', 'tx-udp_tnl-csum-segmentation', 'rx-gro-list', 'rx-udp-gro-forwarding'];
async function offloads(device: string, netns?: string): Promise<Record<string, string>> {
  const r = await run(netns ? 'nsenter' : 'ethtool', netns ? [`--net=/run/netns/${netns}`, 'ethtool', '-k', device] : ['-k', device]);
  if (r.code !== 0) return { error: (r.stderr || r.stdout).trim().slice(0, 200) };
  const out: Record<string, string> = {};
  for (const l of r.stdout.split('\n')) {
    const m = /^\s*([\w-]+): (\S+( \[fixed\])?)/.exec(l);
    if (m && FEATURES.includes(m[1]!)) out[m[1]!] = m[2]!;
  }
  return out;
}

async function mtuOf(device: string, netns?: string): Promise<number | null> {
  const r = await run('ip', [...(netns ? ['-n', netns] : []), '-j', 'link', 'show', 'dev', device]);
  return r.code === 0 ? ((JSON.parse(r.stdout) as Array<{ mtu?: number }>)[0]?.mtu ?? null) : null;
}

export async function overlayNet(env: BenchEnv): Promise<BenchOutcome> {
  const noVxlan = await vxlanMissing(`o${process.pid}`);
  if (noVxlan) throw new Error(`this kernel cannot carry the overlay: ${noVxlan}`);
  const image = await pushToolImage(env.registry.host, { repo: 'nimbus-test/iperf3', files: await toolFiles(IPERF, 'iperf3'), cmd: ['iperf3', '--version'], createdBy: 'Debian iperf3 and its libraries' });
  let host2: SecondHost | undefined;
  let d: DaemonProcess | undefined;
  let b: NamespaceAgent | undefined;
  let server: ReturnType<typeof spawn> | undefined;
  const undo = cleanup.add('overlay-net hosts', async () => {
    if (server?.pid !== undefined && server.exitCode === null && server.signalCode === null) {
      const gone = new Promise((r) => server!.once('exit', r));
      server.kill('SIGTERM');
      await gone;
    }
    await tearDownTwoHosts(d, b, host2, [NETWORK]);
  });
  const cli = async (args: string[]) => {
    const r = await d!.cli(args);
    if (r.code !== 0) throw new Error(`nimbus ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const tput = new Map<Side, Throughput[]>(SIDES.map((s) => [s, []]));
  const rtts = new Map<Side, number[]>(SIDES.map((s) => [s, []]));
  const load: number[] = [];
  let mtu: Record<string, number | null> = {};
  let offload: Record<string, Record<string, string>> = {};
  try {
    host2 = await secondHost({ ns: 'bon', link: 'nbo' });
    d = await startDaemonProcess([], { NIMBUS_LOG_LEVEL: 'warn' });
    b = agentInNamespace(d.socket, host2, (await cli(['agent', 'join-token', '--ttl', '5m'])).trim(), { name: AGENT, homePrefix: 'nimbus-bench-overlay-agent' });
    await b.start();
    // the second host cannot reach the loopback registry: the control plane carries the image there
    await cli(['image', 'pull', image]);
    await cli(['network', 'create', NETWORK]);
    await cli(['run', '-d', '--name', 'bench-iperf-server', '--host', 'local', '--network', NETWORK, image, 'iperf3', '-s']);
    await cli(['run', '-d', '--name', 'bench-client-b', '--host', AGENT, '--network', NETWORK, image, 'sleep', '3600']);
    await cli(['run', '-d', '--name', 'bench-client-a', '--host', 'local', '--network', NETWORK, image, 'sleep', '3600']);
    const inspected = JSON.parse(await cli(['inspect', 'bench-iperf-server'])) as Array<{ network: { endpoints: Array<{ address: string }> } }>;
    const serverIp = inspected[0]!.network.endpoints[0]!.address.split('/')[0]!;
    const underlayIp = host2.hostAddress;
    const nsB = host2.ns;
    server = spawn(IPERF, ['-s', '-B', underlayIp, '-p', String(UNDERLAY_PORT)], { stdio: 'ignore' });
    let spawnError: Error | undefined;
    server.on('error', (e) => (spawnError = e));
    await new Promise((r) => setTimeout(r, 300));
    if (spawnError || server.exitCode !== null) throw new Error(`the underlay's iperf3 server: ${spawnError?.message ?? `exited with ${server.exitCode} (port ${UNDERLAY_PORT} taken?)`}`);

    const vx = vxlanDeviceName((JSON.parse(await cli(['network', 'inspect', NETWORK])) as Array<{ id: string }>)[0]!.id);
    const hostIf = (await run('ip', ['-o', 'addr', 'show', 'to', `${underlayIp}/32`])).stdout.split(/\s+/)[1] ?? '';
    const mtuIn = async (c: string) => Number((await cli(['exec', c, 'cat', '/sys/class/net/eth0/mtu'])).trim());
    mtu = {
      containerOnB: await mtuIn('bench-client-b'), containerOnA: await mtuIn('bench-client-a'), server: await mtuIn('bench-iperf-server'),
      vxlanA: await mtuOf(vx), vxlanB: await mtuOf(vx, nsB), underlayA: await mtuOf(hostIf), underlayB: await mtuOf('eth0', nsB),
    };
    offload = { [`${vx} (A)`]: await offloads(vx), [`${vx} (B)`]: await offloads(vx, nsB), [`${hostIf} (underlay veth, A)`]: await offloads(hostIf), ['eth0 (underlay veth, B)']: await offloads('eth0', nsB) };
    note(NAME, `MTU: containers ${mtu.containerOnB}/${mtu.containerOnA}/${mtu.server}, ${vx} ${mtu.vxlanA}/${mtu.vxlanB}, underlay ${mtu.underlayA}/${mtu.underlayB}`);

    const client: Record<Side, (args: string[]) => Promise<string>> = {
      overlay: (args) => cli(['exec', 'bench-client-b', ...args]),
      bridge: (args) => cli(['exec', 'bench-client-a', ...args]),
      underlay: async (args) => {
        const r = await run('nsenter', [`--net=/run/netns/${nsB}`, ...args], { timeoutMs: 120_000 });
        if (r.code !== 0) throw new Error(`${args.join(' ')} in ${nsB}: ${r.stderr || r.stdout}`);
        return r.stdout;
      },
    };
    const target: Record<Side, string[]> = { overlay: [serverIp], bridge: [serverIp], underlay: [underlayIp, '-p', String(UNDERLAY_PORT)] };
    const pingTarget: Record<Side, string> = { overlay: serverIp, bridge: serverIp, underlay: underlayIp };
    note(NAME, `iperf3 ${SECONDS} s (+1 s omitted) and ${PINGS} pings per side, ${ROUNDS} rounds; load ${readLoad()}`);
    for (let i = 0; i < ROUNDS; i++) {
      for (const s of SIDES) {
        const [k0, s0] = [ksoftirqdTicks(), hostSoftirqTicks()];
        const out = await client[s](['iperf3', '-c', ...target[s], '-t', String(SECONDS), '-O', '1', '-J']);
        tput.get(s)!.push(parseIperf(out, ticksToSec(ksoftirqdTicks() - k0), ticksToSec(hostSoftirqTicks() - s0)));
        rtts.get(s)!.push(...parsePing(await client[s](['/bin/busybox', 'ping', '-c', String(PINGS), '-i', '0.01', pingTarget[s]])));
      }
      load.push(readLoad());
      note(NAME, `round ${i + 1}: ${SIDES.map((s) => `${s} ${tput.get(s)!.at(-1)!.gbps} Gbit/s, ${round(median(rtts.get(s)!.slice(-PINGS)), 3)} ms, ${tput.get(s)!.at(-1)!.pathCpuSecPerGbit} CPU s/Gbit`).join('; ')}`);
    }
  } finally {
    await undo();
  }
  const gbps = (s: Side) => median(tput.get(s)!.map((t) => t.gbps));
  const rtt = (s: Side) => round(median(rtts.get(s)!), 3);
  const throughputRatio = ratio(gbps('overlay'), gbps('underlay'));
  const addedMs = round(rtt('overlay') - rtt('underlay'), 3);
  const addedOverBridgeMs = round(rtt('overlay') - rtt('bridge'), 3);
  const cpu = (s: Side) => median(tput.get(s)!.map((t) => t.pathCpuSecPerGbit));
  const record = makeRecord(NAME, {
    results: {
      seconds: SECONDS, rounds: ROUNDS, pings: PINGS, unit: 'Gbit/s, ms', loadDuringRounds: load, mtu, offloads: offload,
      overlay: { gbps: gbps('overlay'), rttMs: rtt('overlay'), runs: tput.get('overlay') },
      bridge: { gbps: gbps('bridge'), rttMs: rtt('bridge'), runs: tput.get('bridge') },
      addedRttMs: addedMs, addedRttOverBridgeMs: addedOverBridgeMs,
    },
    peers: { underlay: { gbps: gbps('underlay'), rttMs: rtt('underlay'), runs: tput.get('underlay') } },
    ratios: { overlay_over_underlay_gbps: throughputRatio, bridge_over_underlay_gbps: ratio(gbps('bridge'), gbps('underlay')), overlay_over_underlay_cpu_per_gbit: ratio(cpu('overlay'), cpu('underlay')), bridge_over_underlay_cpu_per_gbit: ratio(cpu('bridge'), cpu('underlay')) },
  });
  const mss = (s: Side) => tput.get(s)![0]?.mss ?? '?';
  return {
    record,
    summary: [
      { bench: NAME, figure: 'TCP throughput, one iperf3 stream, container → container across hosts (VXLAN)', unit: 'Gbit/s', nimbus: gbps('overlay'),
        peers: { underlay: gbps('underlay'), bridge: gbps('bridge') }, ratio: throughputRatio, goal: `≥ ${GOAL_RATIO}× the underlay`, met: throughputRatio === null ? null : throughputRatio >= GOAL_RATIO,
        note: `CPU s per Gbit (iperf3 + ksoftirqd) ${cpu('overlay')} / ${cpu('underlay')} / ${cpu('bridge')} (overlay/underlay/bridge); MSS ${mss('overlay')}/${mss('underlay')}/${mss('bridge')}; container MTU ${mtu.containerOnB}` },
      { bench: NAME, figure: `round trip p50 (${PINGS}-ping bursts every 10 ms), container → container across hosts`, unit: 'ms', nimbus: rtt('overlay'),
        peers: { underlay: rtt('underlay'), bridge: rtt('bridge') }, ratio: ratio(rtt('overlay'), rtt('underlay')), goal: `≤ underlay + ${GOAL_ADDED_MS} ms`, met: addedMs <= GOAL_ADDED_MS,
        note: `adds ${addedMs} ms over the underlay, ${addedOverBridgeMs} ms over the same bridge; load ${load.join(', ')}` },
      // every hop here is CPU on the same two cores: where the path costs more per Gbit, a host with CPU to spare still moves as much, a CPU-bound one 1/ratio as much
      { bench: NAME, figure: 'CPU seconds per Gbit (iperf3 processes + ksoftirqd), across hosts', unit: 's', nimbus: cpu('overlay'),
        peers: { underlay: cpu('underlay'), bridge: cpu('bridge') }, ratio: ratio(cpu('overlay'), cpu('underlay')),
        note: `a CPU-bound path moves 1/ratio of the underlay's: ${ratio(cpu('underlay'), cpu('overlay'))}×` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, overlayNet);
