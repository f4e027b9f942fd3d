/**
 * A real VM, with a NIC on a user network that spans hosts (VXLAN) and a root disk from a disk
 * image, live-migrates between two hosts and back, end to end: a real nimbusd (control plane and
 * embedded agent "local") and a second agent (`nimbusd agent` in a network namespace of its own,
 * joined by a veth underlay). A container on the embedded host keeps a ping and a TCP stream
 * running to the VM through both moves. Checked: the TCP connection survives (every line arrives,
 * in order, in the guest), pings answer again after each move (the number lost is reported),
 * what the guest wrote to its disk before the first move reads back after it, the disk travels
 * (bytes reported), the NIC is re-created at the destination with the same MAC and gone from the
 * source, and nothing (QEMU, tap, VXLAN device) is left after removal. `nimbus host evacuate`
 * live-migrates host-b's running VM to the embedded host and leaves host-b disabled. Skipped where the kernel
 * has no VXLAN.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawn } from 'node:child_process';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { vxlanMissing } from '../src/agent/network/network-test-env.js';
import { run } from '../src/core/exec.js';
import { startAgentInNamespace, secondHost, type NamespaceAgent, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { qemuUnder } from './helpers/qemu.js';
import { buildTestImages, writeOciLayoutTar } from '../scripts/fixtures/images.js';
import { buildTestGuest, GUEST_CACHE_DIR, GUEST_HOST_DIRS_ENV, NET_MARKER, workloadAppend } from '../scripts/fixtures/guest.js';
import { vxlanDeviceName } from '../src/agent/network/overlay.js';

const AGENT = 'host-b';
const VM = 'roamer';
const MARKER = 'disk-written-before-the-move';
const LINES = 120; // one every 50 ms: 6 s of stream, both moves inside it

const skip = await vxlanMissing(`mga${process.pid}`);

interface Report { from: string; to: string; totalMs: number; downtimeMs: number; bytes: number; diskBytes?: number; iterations: number; tls?: boolean }

let d: DaemonProcess | undefined;
let host2: SecondHost | undefined;
let b: NamespaceAgent | undefined;
let work: string;

const cliOk = (args: string[]): Promise<string> => d!.cliOk(args);
const netnsOf = (id: string) => {
  const name = readdirSync('/run/netns').find((n) => n.endsWith(`-${id}`));
  assert.ok(name, `the network namespace of ${id.slice(0, 12)}`);
  return `/run/netns/${name}`;
};
const vmLogs = () => cliOk(['vm', 'logs', VM]);
/** This VM's taps (vif + 8 of its id): other test files' VMs have taps in the host's namespace too (CI runs files side by side). */
let vmId = '';
const taps = async (ns?: string) => (await run('ip', [...(ns ? ['-n', ns] : []), '-o', 'link', 'show'])).stdout.split('\n').filter((l) => vmId && l.includes(`: vif${vmId.slice(0, 8)}.0`));

/** A command in a container's network namespace, in the background; resolves with its output when it ends. */
/** Processes of the tests' own (a failed test leaves them to the file's teardown: a stream client whose peer died waits for ever). */
const spawned = new Set<ReturnType<typeof spawn>>();

function background(netns: string, argv: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn('nsenter', [`--net=${netns}`, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    spawned.add(c);
    c.on('exit', () => spawned.delete(c));
    let out = '';
    c.stdout.on('data', (x: Buffer) => (out += x.toString()));
    c.stderr.on('data', (x: Buffer) => (out += x.toString()));
    c.on('exit', (code) => resolve({ code, out }));
  });
}

/** A TCP client that connects (retrying while the guest's listener comes up) and sends `LINES` lines, one every 50 ms. */
const STREAM = (ip: string) => `
const net = require('net');
let tries = 0;
(function connect() {
  const s = net.connect(7000, '${ip}');
  let sent = 0, up = false;
  s.on('connect', () => {
    up = true;
    const t = setInterval(() => {
      s.write('line ' + sent + '\\n');
      if (++sent === ${LINES}) { clearInterval(t); s.end('end\\n', () => { console.log('sent ' + sent); }); }
    }, 50);
  });
  s.on('error', (e) => {
    if (!up && ++tries < 100) return setTimeout(connect, 100);
    console.log('stream error after ' + sent + ' lines: ' + e.message);
    process.exit(1);
  });
})();`;

/**
 * How a VM that should run ended, for an assertion's message: its inspect (exit code, record),
 * console tail, QEMU's stderr and exit status, the kernel's words on QEMU, and the logs naming it.
 */
async function endWords(name: string): Promise<string> {
  const words: string[] = [];
  const vm = (JSON.parse(await cliOk(['vm', 'inspect', name]).catch(() => '[]')) as Array<{ id?: string; host?: { argv?: string[]; qmpSocket?: string } }>)[0];
  if (vm?.host) delete vm.host.argv;
  words.push(`VM: ${JSON.stringify(vm)}; console tail: ${JSON.stringify((await cliOk(['vm', 'logs', name]).catch(() => '')).slice(-300))}`);
  const dir = vm?.host?.qmpSocket ? dirname(vm.host.qmpSocket) : undefined;
  const tail = (f: string) => { try { return JSON.stringify(readFileSync(join(dir!, f), 'utf8').slice(-400)); } catch { return '(none)'; } };
  if (dir) words.push(`QEMU's stderr: ${tail('qemu.log')}; its exit status: ${tail('exit-status')}`);
  // the VM's files as they are (a stale one tells a story), and any process still naming the VM
  if (dir) words.push(`files: ${(await run('ls', ['-la', '--time-style=+%T.%N', dir])).stdout.split('\n').slice(1).map((l) => l.replace(/\s+/g, ' ')).join(' | ')}`);
  if (vm?.id) words.push(`processes naming it: ${(await run('ps', ['-eo', 'pid,ppid,stat,lstart,args'])).stdout.split('\n').filter((l) => l.includes(vm.id!)).map((l) => l.slice(0, 200)).join(' | ') || 'none'}`);
  // a QEMU that crashed (segfault, trap) or was killed for memory says so in the kernel's log
  words.push(`kernel: ${(await run('dmesg', [])).stdout.split('\n').filter((l) => /qemu|segfault|trap|killed process/i.test(l)).slice(-5).join(' | ')}`);
  const mentions = [...(d?.output() ?? '').split('\n'), ...(b?.output() ?? '').split('\n')].filter((l) => vm?.id && l.includes(vm.id));
  words.push(`logs naming it: ${mentions.slice(-12).join('\n')}`);
  return words.join('\n');
}

/**
 * Where a ping toward the VM stops, for a failed wait's message: the VM's state and console tail,
 * its tap's packet counters a second apart on the host it moved to (from the watcher; to the
 * guest), and where that host's bridge and the watcher believe its MAC is.
 */
async function pathWords(ns: string | undefined): Promise<string> {
  const words = [await endWords(VM)];
  const counters = async () => (await run('ip', [...(ns ? ['-n', ns] : []), '-s', '-o', 'link', 'show'])).stdout.split('\n').filter((l) => vmId && l.includes(`: vif${vmId.slice(0, 8)}.0`)).map((l) => l.replace(/\s+/g, ' ').slice(-260));
  const first = await counters();
  await new Promise((r) => setTimeout(r, 1000));
  words.push(`tap counters, 1 s apart: ${JSON.stringify(first)} then ${JSON.stringify(await counters())}`);
  words.push(`bridge fdb: ${(await run('bridge', [...(ns ? ['-n', ns] : []), 'fdb', 'show'])).stdout.split('\n').filter((l) => !/permanent$|^33:33|^01:00/.test(l)).join(' | ')}`);
  return words.join('\n');
}

/** The last warnings and errors of the control plane and host-b, for an assertion's message. */
function sourceWords(): string {
  const lines = [...(d?.output() ?? '').split('\n'), ...(b?.output() ?? '').split('\n')].filter((l) => /"level":"(warn|error)"/.test(l));
  return lines.length ? `\n${lines.slice(-6).join('\n')}` : '';
}

describe('a VM with a NIC and a local disk live-migrates across hosts', { skip, concurrency: false }, () => {
  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'nimbus-migrate-across-'));
    host2 = await secondHost({ ns: 'mga', link: 'nma' });
    // healing after 1.5 s of host-b down (the last test), the default 10 s would only slow it; both
    // hosts on one accelerator without each probing it (a VM migrates between like hosts; a probe
    // that times out would cost the first VM made on each host 20 s here: docs/vms.md)
    const accel = { NIMBUS_VM_ACCEL: process.env.NIMBUS_VM_ACCEL ?? 'tcg' };
    d = await startDaemonProcess([], { ...GUEST_HOST_DIRS_ENV, ...accel, NIMBUS_MIGRATION_ADDRESS: host2.hostAddress, NIMBUS_HEAL_GRACE_MS: '1500' });
    b = await startAgentInNamespace(d, host2, {
      homePrefix: 'nimbus-migrate-across-agent', env: { ...GUEST_HOST_DIRS_ENV, ...accel }, args: ['--migration-address', host2.agentAddress],
    });
  });
  after(async () => {
    try {
      for (const path of ['/vms?all=true', '/containers?all=true']) {
        const list = await d?.api<{ id: string }[]>('GET', path).catch(() => ({ status: 0, body: [] }));
        for (const x of list?.body ?? []) await d!.api('DELETE', `${path.split('?')[0]}/${x.id}?force=true`).catch(() => undefined);
      }
      await d?.cli(['network', 'rm', 'roam']).catch(() => undefined);
    } finally {
      for (const c of spawned) c.kill('SIGKILL');
      const left = [...(d ? qemuUnder(d.home) : []), ...(b ? qemuUnder(b.home) : [])];
      for (const pid of left) process.kill(pid, 'SIGKILL');
      if (b) {
        await b.destroy();
        await run('ip', ['netns', 'exec', host2!.ns, 'nft', 'delete', 'table', 'inet', b.table]);
      }
      await d?.destroy();
      await host2?.remove();
      rmSync(work, { recursive: true, force: true });
      assert.deepEqual(left, [], 'no QEMU left behind');
    }
  });

  test('ping and a TCP stream from another host go on through two moves; the disk moves with the VM', async (t) => {
    const guest = await buildTestGuest(GUEST_CACHE_DIR);
    const archive = join(work, 'image.tar');
    await writeOciLayoutTar(await buildTestImages(), archive, '');
    const image = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(await cliOk(['image', 'import', archive]))![1]!;
    // the root disk: an image imported on the control plane, carried to host-b for the first placement
    const base = join(work, 'base.raw');
    writeFileSync(base, Buffer.alloc(8 << 20));
    await cliOk(['image', 'import-disk', 'roam-disk', base]);
    const netId = (await cliOk(['network', 'create', 'roam'])).trim();

    await cliOk(['run', '-d', '--name', 'watcher', '--host', 'local', '--network', 'roam', image, 'sleep', '600']);
    const watcher = (JSON.parse(await cliOk(['inspect', 'watcher'])) as Array<{ id: string }>)[0]!;
    const watcherNs = netnsOf(watcher.id);
    // the guest writes a marker to its disk, takes one TCP stream (busybox nc quits at once when its
    // stdin is at its end: hence the sleep), prints it once it has ended, then reads the disk back
    const workload = `echo ${MARKER} | dd of=/dev/vda bs=4096 conv=fsync 2>/dev/null; (sleep 1000 | nc -l -p 7000 > /tmp/stream) & `
      + `until grep -q '^end$' /tmp/stream 2>/dev/null; do sleep 0.2; done; cat /tmp/stream; `
      + `echo "read back: $(dd if=/dev/vda bs=4096 count=1 2>/dev/null | head -c ${MARKER.length})"; sleep 1000`;
    await cliOk(['vm', 'run', '--name', VM, '--memory', '192m', '--agent', AGENT, '--network', 'roam', '--image', 'roam-disk',
      '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', workloadAppend(guest, workload)]);
    vmId = (JSON.parse(await cliOk(['vm', 'inspect', VM])) as Array<{ id: string }>)[0]!.id;
    const net = await waitFor('the guest\'s NIC', async () => new RegExp(`${NET_MARKER} eth0 ([0-9.]+)/`).exec(await vmLogs())?.[1], 90_000);
    assert.equal((await taps(host2!.ns)).length, 1, `its tap on host-b: ${(await run('ip', ['-n', host2!.ns, '-o', 'link', 'show'])).stdout}`);
    assert.equal((await taps()).length, 0, 'none on the embedded host');
    await waitFor('the watcher to reach the VM across hosts', async () => ((await run('nsenter', [`--net=${watcherNs}`, '/bin/busybox', 'ping', '-c', '1', '-W', '1', net])).code === 0 ? true : undefined), 30_000);

    const stream = background(watcherNs, [process.execPath, '-e', STREAM(net)]);
    // Pings every 50 ms from before the move until they answer again after it (a fixed window would
    // fail a slower host whose move simply takes longer); the number lost is reported.
    const migrateWithPings = async (to: string): Promise<{ report: Report; sent: number; lost: number; resumedMs: number }> => {
      const pings = spawn('nsenter', [`--net=${watcherNs}`, '/bin/busybox', 'ping', '-i', '0.05', net], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      pings.stdout.on('data', (x: Buffer) => (out += x.toString()));
      pings.stderr.on('data', (x: Buffer) => (out += x.toString()));
      const ended = new Promise<void>((resolve) => pings.on('exit', () => resolve()));
      const lastSeq = () => [...out.matchAll(/seq=(\d+)/g)].map((x) => Number(x[1])).at(-1) ?? -1;
      try {
        await new Promise((r) => setTimeout(r, 1000));
        const report = JSON.parse(await cliOk(['vm', 'migrate', VM, '--to', to, '--max-downtime', '100', '-o', 'json'])) as Report;
        const done = Date.now();
        const before = lastSeq();
        await waitFor(`pings to answer again after the move (last answered seq ${before})`, async () => (lastSeq() > before + 2 ? true : undefined), 20_000)
          .catch(async (e: Error) => { throw new Error(`${e.message}\n${await pathWords(to === 'local' ? undefined : host2!.ns)}${sourceWords()}`); });
        const resumedMs = Date.now() - done;
        pings.kill('SIGINT');
        await ended;
        const m = /(\d+) packets transmitted, (\d+) packets received/.exec(out);
        assert.ok(m, `ping's summary: ${out.slice(-300)}`);
        const sent = Number(m[1]), received = Number(m[2]);
        return { report, sent, lost: sent - received, resumedMs };
      } finally {
        if (pings.exitCode === null) { pings.kill('SIGKILL'); await ended; }
      }
    };

    const there = await migrateWithPings('local');
    t.diagnostic(`to local: ${JSON.stringify(there.report)}; pings lost ${there.lost} of ${there.sent} (every 50 ms), answering again ${there.resumedMs} ms after the command returned`);
    assert.equal(there.report.to, 'local');
    assert.ok((there.report.diskBytes ?? 0) > 0, 'the disk travelled');
    assert.equal(there.report.tls, true, 'RAM and disk crossed the link over TLS');
    assert.equal((await taps()).length, 1, 'its tap is re-created on the embedded host');
    // (a source that cannot let go is logged by the control plane, not failed: its words, if any)
    assert.equal((await taps(host2!.ns)).length, 0, `and gone from host-b${sourceWords()}`);
    assert.equal(qemuUnder(b!.home).length, 0, `no QEMU left on host-b${sourceWords()}`);

    const back = await migrateWithPings(AGENT);
    t.diagnostic(`back to ${AGENT}: ${JSON.stringify(back.report)}; pings lost ${back.lost} of ${back.sent} (every 50 ms), answering again ${back.resumedMs} ms after the command returned`);
    assert.equal(back.report.tls, true);
    assert.equal((await taps(host2!.ns)).length, 1, 'its tap is on host-b again');
    assert.equal((await taps()).length, 0, `and gone from the embedded host${sourceWords()}`);

    const streamed = await stream;
    assert.equal(streamed.code, 0, `the TCP stream went on through both moves: ${streamed.out}`);
    const logs = await waitFor('the guest to read its disk back', async () => ((await vmLogs()).includes('read back:') ? vmLogs() : undefined), 30_000);
    // the serial console ends its lines with \r\n
    const got = [...logs.matchAll(/^line (\d+)\r?$/gm)].map((x) => Number(x[1]));
    assert.deepEqual(got, [...Array(LINES).keys()], `every line arrived, in order, once: ${JSON.stringify(logs.slice(-400))}`);
    assert.match(logs, new RegExp(`read back: ${MARKER}`), 'what the guest wrote before the first move is on its disk after both');

    await cliOk(['vm', 'rm', '-f', VM]);
    await cliOk(['rm', '-f', 'watcher']);
    await cliOk(['network', 'rm', 'roam']);
    const dev = vxlanDeviceName(netId);
    await waitFor('the overlay to go', async () => {
      const links = [(await run('ip', ['-o', 'link', 'show'])).stdout, (await run('ip', ['-n', host2!.ns, '-o', 'link', 'show'])).stdout];
      return links.every((l) => !l.includes(dev)) ? true : undefined;
    }, 15_000);
    assert.equal((await taps()).length + (await taps(host2!.ns)).length, 0, 'no tap left on either host');
    assert.deepEqual([...qemuUnder(d!.home), ...qemuUnder(b!.home)], [], 'no QEMU left');
  });
  test('a VM with a block volume live-migrates with it: the data the volume held and every write the guest makes go on at the destination; the source\'s file is gone', async (t) => {
    const guest = await buildTestGuest(GUEST_CACHE_DIR);
    await cliOk(['volume', 'create', 'roam-vol', '--size', '32m', '--type', 'block', '--host', 'local']);
    const volume = async () => (await d!.api<{ id: string; mountpoint: string; host?: string }>('GET', '/volumes/roam-vol')).body;
    const before = await volume();
    // data only the source's file has: written on the host before anything holds it
    await run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x4e 0 4096', before.mountpoint]);
    // the guest (booted from kernel and initrd: the volume is its only disk, vda) writes a tick to
    // sector 16 every 0.2 s, through the move
    const workload = 'i=0; while :; do echo "tick-$i" | dd of=/dev/vda bs=512 seek=16 conv=fsync,notrunc 2>/dev/null; i=$((i+1)); sleep 0.2; done';
    await cliOk(['vm', 'create', '--name', 'volvm', '--memory', '128m', '--agent', 'local', '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', workloadAppend(guest, workload)]);
    try {
      await cliOk(['vm', 'attach-volume', 'volvm', 'roam-vol']);
      await cliOk(['vm', 'start', 'volvm']);
      const tickIn = async (file: string, force: boolean) => {
        const r = await run('qemu-io', [...(force ? ['-U'] : []), '-r', '-f', 'qcow2', '-c', 'read -v 8192 16', file]);
        const hex = [...r.stdout.matchAll(/^[0-9a-f]+:\s+((?:[0-9a-f]{2}\s)+)/gm)].map((m) => m[1]!.trim().split(/\s+/).map((b) => String.fromCharCode(parseInt(b, 16))).join('')).join('');
        return Number(/tick-(\d+)/.exec(hex)?.[1] ?? -1);
      };
      const ticked = await waitFor('the guest to write to its volume', async () => ((await tickIn(before.mountpoint, true)) >= 3 ? true : undefined), 90_000);
      assert.ok(ticked);
      const atMove = await tickIn(before.mountpoint, true);
      const report = JSON.parse(await cliOk(['vm', 'migrate', 'volvm', '--to', AGENT, '-o', 'json'])) as Report & { volumeBytes?: Record<string, number> };
      const volvmId = (JSON.parse(await cliOk(['vm', 'inspect', 'volvm'])) as Array<{ id: string }>)[0]!.id;
      assert.equal(report.to, AGENT);
      assert.ok((report.volumeBytes?.[before.id] ?? 0) >= 4096, `the volume's data crossed: ${JSON.stringify(report)}`);
      const after = await volume();
      assert.notEqual(after.mountpoint, before.mountpoint);
      assert.ok(!existsSync(before.mountpoint), 'the source\'s file is gone');
      // this VM's QEMU (an earlier test's VM may still be on this host if that test failed)
      const atSource = qemuUnder(d!.home).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(volvmId));
      assert.equal(atSource.length, 0, `no QEMU left at the source${sourceWords()}`);
      await new Promise((r) => setTimeout(r, 1500)); // a few more ticks, at the destination
      await cliOk(['vm', 'kill', 'volvm']);
      await waitFor('the VM to stop', async () => ((JSON.parse(await cliOk(['vm', 'inspect', 'volvm'])) as Array<{ status: string }>)[0]!.status !== 'running' ? true : undefined), 30_000);
      const atEnd = await tickIn(after.mountpoint, false);
      t.diagnostic(`to ${AGENT}: ${JSON.stringify(report)}; the guest's ticks: ${atMove} at the move, ${atEnd} at the end`);
      assert.ok(atEnd > atMove + 2, `the guest wrote on at the destination: tick ${atMove} at the move, ${atEnd} at the end`);
      assert.equal((await run('qemu-io', ['-r', '-f', 'qcow2', '-c', 'read -P 0x4e 0 4096', after.mountpoint])).code, 0, 'what the source\'s file held is in the destination\'s');
    } finally {
      await d!.cli(['vm', 'rm', '-f', 'volvm']);
      await d!.cli(['volume', 'rm', 'roam-vol']);
    }
  });
  test('host evacuate: host-b\'s running VM live-migrates to the embedded host and is reported; host-b is left disabled', async () => {
    const guest = await buildTestGuest(GUEST_CACHE_DIR);
    // small, without NIC or disk, and booted before it moves: under TCG, QEMU 7.2 can leave a guest
    // migrated during its boot panicking at the destination (a raw QEMU loop saw 1 in 30 under
    // load: a double fault in the kernel's crypto self-tests; docs/vms.md), which CI met here as
    // this VM "stopped" after a good move
    await cliOk(['vm', 'run', '--name', 'evacvm', '--memory', '128m', '--agent', AGENT, '--kernel', guest.kernel, '--initrd', guest.initrd, '--append', workloadAppend(guest, 'echo booted; sleep 1000')]);
    await waitFor('evacvm booted', async () => ((await cliOk(['vm', 'logs', 'evacvm']).catch(() => '')).includes('booted') ? true : undefined), 120_000);
    const inspectVm = async () => (JSON.parse(await cliOk(['vm', 'inspect', 'evacvm'])) as Array<{ id: string; agent: string; status: string }>)[0]!;
    const id = (await inspectVm()).id;
    const qemuOf = (home: string) => qemuUnder(home).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(id));
    const hostB = async () => (await d!.api<{ disabled: boolean; disabledReason?: string }>('GET', `/hosts/${AGENT}`)).body;
    try {
      assert.equal(qemuOf(b!.home).length, 1, 'its QEMU on host-b');
      // the dry run: the plan, nothing changed
      const plan = await d!.cli(['host', 'evacuate', AGENT, '--dry-run']);
      assert.equal(plan.code, 0, plan.stderr);
      assert.match(plan.stdout, /vm evacvm: would move live → local/);
      assert.equal((await hostB()).disabled, false, 'a dry run disables nothing');
      assert.equal(qemuOf(b!.home).length, 1, 'and moves nothing');
      const r = await d!.cli(['host', 'evacuate', AGENT]);
      assert.equal(r.code, 0, `the evacuation succeeds: ${r.stderr}`);
      assert.match(r.stderr, /vm evacvm: moved → local/, 'the VM is reported moved');
      assert.match(r.stdout, /host-b: evacuated \(1 instance/);
      const v = await inspectVm();
      // CI saw it stopped here twice after a successful move (and the first test's VM once, under
      // load): its exit code, QEMU's stderr and the kernel's words say how it ended
      const why = v.status === 'running' ? '' : `\n${await endWords('evacvm')}`;
      assert.deepEqual([v.id, v.agent, v.status], [id, 'local', 'running'], `running on the embedded host${why}`);
      assert.equal(qemuOf(d!.home).length, 1, 'its QEMU on the embedded host');
      assert.equal(qemuOf(b!.home).length, 0, 'none left on host-b');
      assert.deepEqual([(await hostB()).disabled, (await hostB()).disabledReason], [true, 'evacuating'], 'host-b stays disabled');
    } finally {
      await d!.cli(['host', 'enable', AGENT]);
      await d!.cli(['vm', 'rm', '-f', 'evacvm']);
    }
    assert.equal((await hostB()).disabled, false, 'enabled again');
  });
  test('an --ha VM of a dead host is rebuilt on the embedded host from its images; its stale QEMU on host-b is fenced when the host returns', async (t) => {
    const guest = await buildTestGuest(GUEST_CACHE_DIR);
    const refused = await d!.cli(['vm', 'create', '--name', 'ha-files', '--ha', '--memory', '128m', '--kernel', guest.kernel]);
    assert.notEqual(refused.code, 0, '--ha with a host file is refused');
    assert.match(refused.stderr, /--ha: its kernel is a host file/);
    await cliOk(['image', 'import-disk', 'ha-kernel', guest.kernel, '--type', 'kernel']);
    await cliOk(['image', 'import-disk', 'ha-initrd', guest.initrd, '--type', 'initrd']);
    await cliOk(['vm', 'run', '--name', 'havm', '--ha', '--memory', '128m', '--agent', AGENT, '--kernel', 'ha-kernel', '--initrd', 'ha-initrd', '--append', workloadAppend(guest, 'sleep 1000')]);
    const inspectVm = async () => (JSON.parse(await cliOk(['vm', 'inspect', 'havm'])) as Array<{ id: string; agent: string; status: string }>)[0]!;
    const id = (await inspectVm()).id;
    const onB = () => qemuUnder(b!.home).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(id));
    assert.equal(onB().length, 1, 'its QEMU on host-b');
    try {
      await b!.kill('SIGKILL'); // QEMU outlives its agent
      const t0 = Date.now();
      await waitFor('havm rebuilt on the embedded host', async () => {
        const v = await inspectVm();
        return v.agent === 'local' && v.status === 'running' ? true : undefined;
      }, 60_000);
      t.diagnostic(`rebuilt ${Date.now() - t0} ms after host-b's agent was killed (grace 1.5 s)`);
      if (process.env.DEBUG_HEAL) writeFileSync(process.env.DEBUG_HEAL, d!.output());
      assert.equal(qemuUnder(d!.home).filter((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(id)).length, 1, 'its QEMU on the embedded host');
      assert.equal(onB().length, 1, 'the stale QEMU still runs on host-b while its agent is dead');
      await b!.start();
      await waitFor('host-b to kill its stale QEMU', async () => (onB().length === 0 ? true : undefined), 30_000);
      const v = await inspectVm();
      assert.deepEqual([v.agent, v.status], ['local', 'running'], 'the rebuilt one runs on');
    } finally {
      if (!b!.pid()) await b!.start().catch(() => undefined);
      await d!.cli(['vm', 'rm', '-f', 'havm']);
    }
  });
});
