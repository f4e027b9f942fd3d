/**
 * Shared setup for the VM driver's tests: the test guest, the accelerator
 * (probed once per host boot, cached beside the guest), a private state
 * directory, and a sweep that finds any QEMU left behind under it.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { buildTestGuest, GUEST_CACHE_DIR, READY_MARKER, workloadAppend, type TestGuest } from '../../../../scripts/fixtures/guest.js';
import type { InstanceSpec } from '../instance-driver.js';
import { chooseAccelerator, type AcceleratorChoice } from './accel.js';
import { instancePaths, readPid, withQmp } from './qemu-process.js';
import { parseProcStat } from '../../../core/proc.js';
import { VmDriver } from './vm-driver.js';

export const GUEST_CACHE = GUEST_CACHE_DIR;

export interface VmEnv {
  base: string;
  stateDir: string;
  guest: TestGuest;
  accel: AcceleratorChoice;
  driver: VmDriver;
  newDriver(): VmDriver;
  /** A spec whose guest runs `sh -c <args joined>` as its workload. */
  makeSpec(id: string, args: string[], over?: Partial<InstanceSpec>): InstanceSpec;
  /** Pids of QEMU processes whose command line mentions this env's directory. */
  qemuPids(): Promise<number[]>;
  teardown(): Promise<void>;
}

export async function testAccelerator(guest: TestGuest): Promise<AcceleratorChoice> {
  const force = process.env.NIMBUS_VM_ACCEL === 'kvm' || process.env.NIMBUS_VM_ACCEL === 'tcg' ? process.env.NIMBUS_VM_ACCEL : undefined;
  return chooseAccelerator({
    guest: { ...guest, readyMarker: READY_MARKER },
    cacheFile: path.join(GUEST_CACHE, 'accel.json'),
    ...(force ? { force } : {}),
  });
}

/** sh -c quoting of an argv, as a container runtime would exec it. */
function shellJoin(args: string[]): string {
  if (args[0] === 'sh' && args[1] === '-c' && args.length === 3) return args[2]!;
  return args.map((a) => (/^[\w./=:-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export async function qemuPidsUnder(dir: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = (await readFile(`/proc/${p}/cmdline`, 'utf8')).split('\0');
      if ((argv[0] ?? '').includes('qemu-system') && argv.some((a) => a.includes(dir))) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** The tail of a file as text, or why there is none. */
async function tailOf(file: string, bytes: number): Promise<string> {
  try {
    const b = await readFile(file);
    return `${b.length} bytes${b.length ? `, ending ${JSON.stringify(b.subarray(Math.max(0, b.length - bytes)).toString('utf8'))}` : ''}`;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

/**
 * What a test that waited in vain for a guest's output can still tell: the console log and
 * QEMU's stderr, QEMU's run state, and each QEMU thread's state, CPU time and last CPU (a vCPU
 * that never ran differs from one that spun, and from a QEMU that is gone).
 */
export async function explainGuest(stateDir: string, id: string): Promise<string> {
  const p = instancePaths(path.join(stateDir, id));
  const parts = [`console.log: ${await tailOf(p.consoleLog, 400)}`, `qemu.log: ${await tailOf(p.qemuLog, 1000)}`, `load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`];
  const pid = await readPid(p.pidFile).catch(() => undefined);
  if (pid === undefined) return [...parts, 'no QEMU pid'].join('; ');
  const threads: string[] = [];
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    try {
      const st = parseProcStat(await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8'));
      const allowed = /Cpus_allowed_list:\s*(\S+)/.exec(await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1];
      threads.push(`${st.comm} ${st.state} ${st.cpuTicks * 10} ms cpu${st.processor} allowed ${allowed}`); // ticks of USER_HZ (100)
    } catch {
      /* the thread ended */
    }
  }
  // QEMU's own view: a VM left paused (prelaunch, no cont) prints nothing either
  const status = await withQmp(p, (c) => c.execute<{ status: string }>('query-status'), 2_000).then((s) => s.status, (e: unknown) => `no answer (${String(e)})`);
  return [...parts, `QEMU ${pid} (${status}): ${threads.length ? threads.join(', ') : 'gone'}`].join('; ');
}

export async function makeVmEnv(label: string): Promise<VmEnv> {
  const guest = await buildTestGuest(GUEST_CACHE);
  const accel = await testAccelerator(guest);
  const base = await mkdtemp(path.join(tmpdir(), `nimbus-vm-${label}-`));
  const stateDir = path.join(base, 'state');
  const newDriver = () => new VmDriver({ stateDir, accel: accel.accel });
  return {
    base,
    stateDir,
    guest,
    accel,
    driver: newDriver(),
    newDriver,
    makeSpec(id, args, over = {}) {
      return {
        id,
        name: id,
        rootfs: [],
        process: { args, env: [], cwd: '/', user: '0' },
        resources: { memoryBytes: 192 << 20 },
        ...over,
        vm: { kernel: guest.kernel, initrd: guest.initrd, append: workloadAppend(guest, shellJoin(args)), debugExit: true, ...over.vm },
      };
    },
    qemuPids: () => qemuPidsUnder(base),
    async teardown() {
      for (const pid of await qemuPidsUnder(base)) process.kill(pid, 'SIGKILL');
      await rm(base, { recursive: true, force: true });
    },
  };
}
