/**
 * Accelerator choice: KVM only when a probe boot of a real guest reaches its
 * readiness marker within a bound, else TCG. An openable /dev/kvm is not
 * enough: under PVM (kvm-pvm) QEMU either aborts setting MSRs or a stock
 * kernel hangs. The result is cached per host boot (keyed on
 * /proc/sys/kernel/random/boot_id) since a probe can cost the whole bound.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Accelerator } from './qemu.js';

export interface ProbeGuest {
  kernel: string;
  initrd: string;
  append: string;
  /** A line the guest prints on its serial console once it is up. */
  readyMarker: string;
}

export interface AcceleratorChoice {
  accel: Accelerator;
  /** Why: forced, no /dev/kvm, probe booted in N ms, probe failed with …; "(cached …)" when reused. */
  reason: string;
  bootId: string;
  decidedAt: string;
}

export interface AcceleratorOptions {
  guest: ProbeGuest;
  /** Where the choice is cached for this host boot. */
  cacheFile: string;
  /** Bound on the KVM probe boot. Default 20 s (a KVM boot takes well under 1 s; hanging PVM takes forever). */
  probeTimeoutMs?: number;
  qemuBinary?: string;
  /** "kvm" | "tcg" skips the probe (env NIMBUS_VM_ACCEL). */
  force?: Accelerator;
}

async function bootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
}

/** Boot the probe guest under KVM; resolves with null on success or the reason it failed. */
export function probeKvmBoot(guest: ProbeGuest, timeoutMs: number, qemuBinary = 'qemu-system-x86_64'): Promise<{ ok: boolean; detail: string }> {
  const t0 = Date.now();
  const child = spawn(
    qemuBinary,
    ['-machine', 'pc,accel=kvm', '-cpu', 'host', '-m', '256M', '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none',
      '-no-reboot', '-serial', 'stdio', '-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.append],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  return new Promise((resolve) => {
    let out = '';
    let err = '';
    let done = false;
    const finish = (ok: boolean, detail: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (child.exitCode === null) child.kill('SIGKILL');
      resolve({ ok, detail });
    };
    const timer = setTimeout(() => finish(false, `no readiness within ${timeoutMs} ms (the guest hangs under this KVM)`), timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(guest.readyMarker)) finish(true, `probe boot reached guest readiness in ${Date.now() - t0} ms`);
      if (out.length > 1 << 20) out = out.slice(-4096);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => finish(false, `cannot run ${qemuBinary}: ${e.message}`));
    child.on('exit', (code, sig) => {
      const first = err.trim().split('\n')[0] ?? '';
      finish(false, `QEMU exited (${sig ?? code}) before readiness${first ? `: ${first}` : ''}`);
    });
  });
}

export async function chooseAccelerator(o: AcceleratorOptions): Promise<AcceleratorChoice> {
  const id = await bootId();
  const decidedAt = new Date().toISOString();
  if (o.force) return { accel: o.force, reason: `forced (NIMBUS_VM_ACCEL=${o.force})`, bootId: id, decidedAt };
  try {
    const cached = JSON.parse(await readFile(o.cacheFile, 'utf8')) as AcceleratorChoice;
    if (cached.bootId === id && (cached.accel === 'kvm' || cached.accel === 'tcg')) {
      return { ...cached, reason: cached.reason.endsWith('(cached for this host boot)') ? cached.reason : `${cached.reason} (cached for this host boot)` };
    }
  } catch {
    /* no cache yet */
  }
  let choice: AcceleratorChoice;
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    const r = await probeKvmBoot(o.guest, o.probeTimeoutMs ?? 20_000, o.qemuBinary);
    choice = r.ok
      ? { accel: 'kvm', reason: `KVM ${r.detail}`, bootId: id, decidedAt }
      : { accel: 'tcg', reason: `KVM probe failed: ${r.detail}; using TCG`, bootId: id, decidedAt };
  } catch {
    choice = { accel: 'tcg', reason: '/dev/kvm absent or not accessible; using TCG', bootId: id, decidedAt };
  }
  await mkdir(path.dirname(o.cacheFile), { recursive: true });
  const tmp = `${o.cacheFile}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(choice));
  await rename(tmp, o.cacheFile);
  return choice;
}
