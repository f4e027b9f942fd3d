/**
 * The microVM image for secure containers: the host's Debian kernel and an
 * initramfs of the host's static busybox plus the kernel modules for virtio-9p,
 * built here and cached by content hash under the agent's state directory.
 *
 * The guest's /init (nimbus-init):
 *   - mounts proc, sys, dev; loads the 9p/virtio modules and the ACPI power button;
 *   - mounts the container's rootfs, shared by the host over virtio-9p (tag
 *     "rootfs"), at /mnt, with proc, sys and dev inside it;
 *   - bind-mounts its own busybox over /.nimbus/busybox (the host left an empty
 *     file there) and runs /.nimbus/start/entry — the same script a warm
 *     container runs (drivers/container/warm-start.ts): cd, then exec the
 *     command with exactly its environment — chrooted into the rootfs, as root
 *     in the guest (the VM is the isolation boundary; busybox cannot switch
 *     users here yet), output on the serial console;
 *   - a power-button press (ACPI stop) sends TERM to the workload;
 *   - writes the exit status to /.nimbus/exit in the rootfs, syncs, powers off.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { Unavailable } from '../../../core/errors.js';
import { chooseAccelerator, type AcceleratorChoice } from '../vm/accel.js';
import { pvhKernel } from '../vm/pvh-kernel.js';
import { CPIO_DIR, CPIO_EXEC, CPIO_FILE, CPIO_LINK, makeCpio, type CpioEntry } from '../vm/cpio.js';

export interface SecureGuest {
  kernel: string;
  initrd: string;
  append: string;
}

/** The 9p mount tag of the container's rootfs. */
export const ROOTFS_TAG = 'rootfs';
/** Printed by nimbus-init on the console when it cannot start the workload. */
export const INIT_FAILURE = 'nimbus-init:';
/** Printed when booted with `nimbus.template`, before it waits for a line on the console (the moment it is saved). */
export const TEMPLATE_MARKER = 'NIMBUS-TEMPLATE-READY';
/** Printed when booted with `nimbus.probe`: the accelerator probe's readiness marker. */
export const PROBE_MARKER = 'NIMBUS-PROBE-OK';

const INIT = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m 2>/dev/null; done
fail() { echo "${INIT_FAILURE} $*"; poweroff -f; }
# accelerator probe: the kernel reached init
grep -q nimbus.probe /proc/cmdline && { echo ${PROBE_MARKER}; poweroff -f; }
# ACPI stop: the power button's presses are read from before the workload exists (and before a
# template is saved), so a stop that comes at once is not lost; the press sends TERM to the workload.
power_button() {
  for ev in /sys/class/input/event*; do
    [ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ] && { echo "/dev/input/\${ev##*/}"; return; }
  done
}
pb=
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do pb=$(power_button); [ -n "$pb" ] && break; sleep 0.05; done
[ -n "$pb" ] && ( head -c 24 "$pb" >/dev/null; while [ ! -s /tmp/workload.pid ]; do sleep 0.05; done; kill -TERM $(cat /tmp/workload.pid) ) &
# template: booted once and saved here; each container restores it, then says go on the console
if grep -q nimbus.template /proc/cmdline; then
  stty -echo 2>/dev/null
  echo ${TEMPLATE_MARKER}
  read -r go
fi
mkdir -p /mnt
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none ${ROOTFS_TAG} /mnt || fail "cannot mount the container's root filesystem"
for d in proc sys dev; do [ -d /mnt/$d ] || mkdir -p /mnt/$d; done
mount -t proc proc /mnt/proc
mount -t sysfs sys /mnt/sys
mount --bind /dev /mnt/dev
mount --bind /bin/busybox /mnt/.nimbus/busybox || fail "no /.nimbus/busybox mount point"
[ -f /mnt/.nimbus/start/entry ] || fail "no start script"
read -r hostname < /mnt/.nimbus/start/hostname
hostname "$hostname"
chroot /mnt /.nimbus/busybox sh /.nimbus/start/entry </dev/null &
wl=$!
echo $wl > /tmp/workload.pid
wait $wl
code=$?
echo $code > /mnt/.nimbus/exit
sync
umount /mnt/dev /mnt/sys /mnt/proc 2>/dev/null
umount /mnt/.nimbus/busybox 2>/dev/null
umount /mnt 2>/dev/null
poweroff -f
`;

/** Modules (paths under /lib/modules/<release>) in load order: dependencies first, from modules.dep. */
export function moduleLoadOrder(depText: string, wanted: string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of depText.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    deps.set(line.slice(0, i), line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
  }
  const out: string[] = [];
  const visit = (m: string, trail: string[]) => {
    if (out.includes(m)) return;
    if (trail.includes(m)) return;
    const d = deps.get(m);
    if (d === undefined) throw new Unavailable(`kernel module ${m} is not in modules.dep`);
    for (const x of [...d].reverse()) visit(x, [...trail, m]);
    out.push(m);
  };
  for (const w of wanted) visit(w, []);
  return out;
}

const WANTED = ['kernel/drivers/virtio/virtio_pci.ko', 'kernel/net/9p/9pnet_virtio.ko', 'kernel/fs/9p/9p.ko', 'kernel/drivers/input/evdev.ko', 'kernel/drivers/acpi/button.ko'];

/** Build (or reuse from cacheDir) the secure-container guest for the host's newest kernel. */
export async function buildSecureGuest(cacheDir: string): Promise<SecureGuest> {
  const k = (await import('node:fs')).readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-')).sort().pop();
  if (!k) throw new Unavailable('secure containers need a kernel in /boot (Debian linux-image-amd64)');
  const release = k.slice('vmlinuz-'.length);
  const modRoot = `/lib/modules/${release}`;
  if (!existsSync(`${modRoot}/modules.dep`)) throw new Unavailable(`no ${modRoot}/modules.dep for the guest kernel`);
  if (!existsSync('/bin/busybox')) throw new Unavailable('secure containers need /bin/busybox (Debian busybox-static)');
  const order = moduleLoadOrder(readFileSync(`${modRoot}/modules.dep`, 'utf8'), WANTED);
  const busybox = readFileSync('/bin/busybox');
  const modules = order.map((m) => ({ name: path.basename(m), data: readFileSync(path.join(modRoot, m)) }));
  const hash = createHash('sha256').update(INIT).update(busybox).update(release);
  for (const m of modules) hash.update(m.name).update(m.data);
  const initrd = path.join(cacheDir, `secure-initrd-${hash.digest('hex').slice(0, 16)}.cpio.gz`);
  // the uncompressed kernel inside the bzImage when one can be made: no decompression at each cold boot (pvh-kernel.ts)
  const guest = { kernel: await pvhKernel(`/boot/${k}`, cacheDir), initrd, append: 'console=ttyS0 loglevel=0 panic=-1 mitigations=off' };
  if (existsSync(initrd)) return guest;

  const entries: CpioEntry[] = [];
  for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys', 'tmp', 'mnt', 'lib', 'lib/modules', 'etc']) entries.push({ name: d, mode: CPIO_DIR });
  entries.push({ name: 'bin/busybox', mode: CPIO_EXEC, data: busybox });
  const applets = execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
  for (const a of applets) entries.push({ name: `bin/${a}`, mode: CPIO_LINK, data: Buffer.from('busybox') });
  for (const m of modules) entries.push({ name: `lib/modules/${m.name}`, mode: CPIO_FILE, data: m.data });
  entries.push({ name: 'lib/modules/order', mode: CPIO_FILE, data: Buffer.from(modules.map((m) => m.name).join('\n') + '\n') });
  entries.push({ name: 'init', mode: CPIO_EXEC, data: Buffer.from(INIT) });
  await mkdir(cacheDir, { recursive: true });
  const tmp = `${initrd}.${process.pid}.tmp`;
  await writeFile(tmp, gzipSync(makeCpio(entries), { level: 6 }));
  await rename(tmp, initrd); // atomic: concurrent builders agree on the content
  return guest;
}

/** Which accelerator microVMs use here: KVM only if this guest boots to init under it (cached per host boot). */
export async function secureAccelerator(guest: SecureGuest, cacheDir: string): Promise<AcceleratorChoice> {
  const force = process.env.NIMBUS_VM_ACCEL === 'kvm' || process.env.NIMBUS_VM_ACCEL === 'tcg' ? process.env.NIMBUS_VM_ACCEL : undefined;
  return chooseAccelerator({
    guest: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} nimbus.probe`, readyMarker: PROBE_MARKER },
    cacheFile: path.join(cacheDir, 'accel.json'),
    ...(force ? { force } : {}),
  });
}
