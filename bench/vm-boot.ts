/**
 * VM boot and restore, side by side in one run (TCG or KVM, whichever the
 * accelerator probe picked):
 *   nimbusBoot  VmDriver create + start (QEMU under its supervisor, -S, QMP
 *               connect, cont) until the guest's readiness marker is in the
 *               console log
 *   bareBoot    the same qemu-system-x86_64 command line without -S, spawned
 *               directly, until the same marker is in its console log
 *   template    createFromTemplate + restoreState of a VM saved at readiness,
 *               until it answers `echo` on its console
 *   coldEcho    create + start + readiness + the same `echo` answered
 *   nimbusCreateStartCall  just the driver's create + start calls (supervisor,
 *               QMP handshake, cont): Nimbus's own cost, free of TCG's noise
 * Runs alternate between the sides (BENCH_VM_RUNS each, default 5, plus one
 * untimed warm-up) so drift on the host hits both alike. Both sides poll the
 * console log every 5 ms. Goals (issue 5): Nimbus ≤ 1.05 × bare; template
 * restore ≤ 1/5 of a cold boot.
 * Run alone: node dist/bench/vm-boot.js
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buildTestGuest, READY_MARKER, GUEST_CACHE_DIR } from '../scripts/fixtures/guest.js';
import { chooseAccelerator } from '../src/agent/drivers/vm/accel.js';
import { QEMU_UID_BASE, QEMU_UID_COUNT } from '../src/agent/drivers/vm/qemu-user.js';
import { qemuTakesRunWith } from '../src/agent/drivers/vm/qemu-version.js';
import { qemuArgv, type QemuConfig } from '../src/agent/drivers/vm/qemu.js';
import { VmDriver } from '../src/agent/drivers/vm/vm-driver.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { ratio, summarize } from './lib/stats.js';

const NAME = 'vm-boot';
const RUNS = Math.max(1, Number(process.env.BENCH_VM_RUNS ?? 5));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitInFile(file: string, needle: string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '');
    if (text.includes(needle)) return;
    if (Date.now() > deadline) throw new Error(`no "${needle}" in ${file} within ${timeoutMs} ms`);
    await sleep(5);
  }
}

export async function vmBoot(): Promise<BenchOutcome> {
  const guest = await buildTestGuest(GUEST_CACHE_DIR);
  const accel = await chooseAccelerator({ guest: { ...guest, readyMarker: READY_MARKER }, cacheFile: path.join(GUEST_CACHE_DIR, 'accel.json') });
  note(NAME, `accelerator ${accel.accel}: ${accel.reason}`);
  const base = await mkdtemp(path.join(tmpdir(), 'nimbus-bench-vm-'));
  const undo = cleanup.add(`vm bench dir ${base}`, () => rm(base, { recursive: true, force: true }));
  const driver = new VmDriver({ stateDir: path.join(base, 'state'), accel: accel.accel });
  const ids: string[] = [];
  cleanup.add('vm bench VMs', async () => {
    for (const id of ids.reverse()) await driver.delete(id).catch(() => undefined);
  });
  const spec = (id: string) => ({
    id, name: id, rootfs: [], process: { args: [], env: [], cwd: '/', user: '0' },
    resources: { memoryBytes: 256 << 20 },
    vm: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append, debugExit: true },
  });
  let n = 0;
  const xs = { nimbus: [] as number[], bare: [] as number[], template: [] as number[], cold: [] as number[], startCall: [] as number[] };

  const nimbusBoot = async (): Promise<number> => {
    const id = `boot-${n++}`;
    ids.push(id);
    const t0 = performance.now();
    await driver.create(spec(id));
    await driver.start(id);
    xs.startCall.push(performance.now() - t0);
    const ins = await driver.inspect(id);
    driverArgv = ins.argv;
    await waitInFile(ins.consoleLog, READY_MARKER);
    const ms = performance.now() - t0;
    await driver.delete(id);
    return ms;
  };

  let bareArgv: string[] = [];
  let driverArgv: string[] = [];
  /**
   * An argv with its per-run paths and name made alike, and -S, the binary and the driver's jailer
   * (its argv up to "--": jailer.ts, part of the driver's cost) gone: what must be equal for the
   * comparison to be fair.
   */
  const machineOf = (argv: string[]) => argv.slice(argv.indexOf('--') + 1).filter((a, i) => a !== '-S' && !(i === 0 && a.includes('qemu-system'))).map((a, i, all) => (all[i - 1] === '-runas' ? 'UID:GID' : all[i - 1] === '-chroot' ? 'JAIL' : all[i - 1] === '-run-with' ? 'USER,JAIL' : a.replace(/\/[^,]*\/(qmp\.sock|qmp-fds\.sock|console\.sock|console\.log|qemu\.pid)/g, '/$1').replace(/^guest=.*/, 'guest=NAME')));
  const bareBoot = async (): Promise<number> => {
    const dir = path.join(base, `bare-${n++}`);
    await mkdir(dir);
    const cfg: QemuConfig = {
      name: 'bare', accel: accel.accel, cpus: 1, memoryMiB: 256, kernel: guest.kernel, initrd: guest.initrd, append: guest.append,
      // the driver's defaults for such a VM (a balloon, so that resize can shrink it): the same machine, checked below
      nics: [], debugExit: true, startPaused: false, balloon: true,
      // as the driver's QEMU, dropped to a user of its own once it has opened its files (qemu-user.ts)
      runAs: { uid: QEMU_UID_BASE + QEMU_UID_COUNT - 1, gid: QEMU_UID_BASE + QEMU_UID_COUNT - 1 },
      chroot: path.join(dir, 'jail'),
      runWith: qemuTakesRunWith('qemu-system-x86_64'),
      paths: { qmpSocket: `${dir}/qmp.sock`, consoleSocket: `${dir}/console.sock`, consoleLog: `${dir}/console.log`, pidFile: `${dir}/qemu.pid` },
    };
    await mkdir(cfg.chroot!, { mode: 0o711 });
    bareArgv = qemuArgv(cfg);
    if (driverArgv.length && JSON.stringify(machineOf(bareArgv)) !== JSON.stringify(machineOf(driverArgv))) {
      throw new Error(`bare QEMU would boot another machine than the driver's:\n  bare:   ${machineOf(bareArgv).join(' ')}\n  driver: ${machineOf(driverArgv).join(' ')}`);
    }
    const t0 = performance.now();
    const child = spawn('qemu-system-x86_64', bareArgv, { stdio: 'ignore' });
    const kill = cleanup.add('bare qemu', () => child.exitCode === null && child.kill('SIGKILL'));
    try {
      await waitInFile(cfg.paths.consoleLog, READY_MARKER);
      return performance.now() - t0;
    } finally {
      const gone = new Promise((r) => child.once('exit', r));
      await kill();
      if (child.exitCode === null) await gone;
      await rm(dir, { recursive: true, force: true });
    }
  };

  const answer = async (id: string): Promise<void> => {
    const con = await driver.openConsole(id);
    try {
      con.write('echo bench-answer\n');
      await waitInFile((await driver.inspect(id)).consoleLog, 'bench-answer\r\n');
    } finally {
      con.destroy();
    }
  };
  const coldEcho = async (): Promise<number> => {
    const id = `cold-${n++}`;
    ids.push(id);
    const t0 = performance.now();
    await driver.create(spec(id));
    await driver.start(id);
    await waitInFile((await driver.inspect(id)).consoleLog, READY_MARKER);
    await answer(id);
    const ms = performance.now() - t0;
    await driver.delete(id);
    return ms;
  };
  // the template: booted once to readiness, then saved
  const tpl = 'template';
  ids.push(tpl);
  await driver.create(spec(tpl));
  await driver.start(tpl);
  await waitInFile((await driver.inspect(tpl)).consoleLog, READY_MARKER);
  const saved = await driver.saveState(tpl);
  const fromTemplate = async (): Promise<number> => {
    const id = `clone-${n++}`;
    ids.push(id);
    const t0 = performance.now();
    await driver.createFromTemplate(tpl, id);
    await driver.restoreState(id);
    await answer(id);
    const ms = performance.now() - t0;
    await driver.delete(id);
    ids.splice(ids.indexOf(id), 1);
    return ms;
  };

  note(NAME, `warm-up, then ${RUNS} alternating runs of each side`);
  await bareBoot();
  await nimbusBoot();
  await fromTemplate();
  xs.startCall.length = 0;
  for (let i = 0; i < RUNS; i++) {
    xs.bare.push(await bareBoot());
    xs.nimbus.push(await nimbusBoot());
    xs.template.push(await fromTemplate());
    xs.cold.push(await coldEcho());
  }
  await driver.delete(tpl);
  ids.length = 0;
  await undo();

  const nimbus = summarize(xs.nimbus);
  const bare = summarize(xs.bare);
  const template = summarize(xs.template);
  const cold = summarize(xs.cold);
  const ratios = {
    nimbus_over_bare_p50: ratio(nimbus.p50, bare.p50),
    nimbus_over_bare_mean: ratio(nimbus.mean, bare.mean),
    template_over_cold_p50: ratio(template.p50, cold.p50),
  };
  const record = makeRecord(NAME, {
    results: { runs: RUNS, nimbusCreateStartCall: summarize(xs.startCall), unit: 'ms', accel: accel.accel, accelReason: accel.reason, nimbusBoot: nimbus, templateRestore: template, coldBootEcho: cold, savedStateBytes: saved.bytes, saveMs: saved.ms },
    peers: { bareBoot: bare, bareCommand: `qemu-system-x86_64 ${bareArgv.join(' ')}` },
    ratios,
  });
  return {
    record,
    summary: [
      {
        bench: NAME, figure: `boot to guest-ready p50 (${accel.accel})`, unit: 'ms', nimbus: nimbus.p50, peers: { bareQemu: bare.p50 },
        ratio: ratios.nimbus_over_bare_p50, goal: '≤ 1.05× bare', met: ratios.nimbus_over_bare_p50 === null ? null : ratios.nimbus_over_bare_p50 <= 1.05,
      },
      {
        bench: NAME, figure: 'template restore → answer p50', unit: 'ms', nimbus: template.p50, peers: { coldBoot: cold.p50 },
        ratio: ratios.template_over_cold_p50, goal: '≤ 0.2× cold boot', met: ratios.template_over_cold_p50 === null ? null : ratios.template_over_cold_p50 <= 0.2,
      },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, vmBoot);
