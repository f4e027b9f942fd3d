/**
 * A reproduction, without Nimbus' driver, of a guest's memory corrupted by a QEMU live migration
 * under TCG (docs/vms.md "Left"): bare QEMU processes with the driver's command line (qemu.ts,
 * without its jailer, user or chroot), the test guest booting, each VM moved QEMU to QEMU five
 * times over loopback, the first move within a second of its start, two VMs at once. A move that
 * leaves the guest dead (its kernel panics, `panic=-1` with `-no-reboot` ends QEMU) is printed with
 * the guest's oops lines. Stops at the second such move.
 *
 *   node dist/scripts/tcg-migration-repro.js [VMS per loop, default 10]
 *   BW=50331648   the migration's max-bandwidth in bytes/s (default 4 GiB/s): a slower stream, more passes
 *   TLS=1         the streams over TLS (the agents' way), with a throwaway CA
 *   SINGLE=1      -accel tcg,thread=single
 *   SETTLE_MS=N   the first move N ms after the start (default: a random 0–1000 ms, during the boot)
 *   QEMU=PATH     another QEMU binary (QEMU_DATA=DIR: its firmware directory, passed as -L), e.g. one
 *                 unpacked from bookworm-backports with `apt-get download` and `dpkg -x`
 *
 * 2026-12-06, QEMU 7.2.22 (Debian), TCG: over TLS 1 failure in 147 moves; plain at 48 MiB/s 2 in 37;
 * the same with thread=single 1 in 96; plain at the default bandwidth none in 150 (through the driver).
 * QEMU 10.0.2 (bookworm-backports, unpacked; QEMU= and QEMU_DATA=), plain at 48 MiB/s: none in 300;
 * 7.2.22 in the same hour and settings: 2 in 9.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { issueCertificate, makeCa } from '../src/core/pki.js';
import { addTlsCreds, useTlsForMigration, type MigrationTls } from '../src/agent/drivers/vm/migration-tls.js';
import { qemuArgv } from '../src/agent/drivers/vm/qemu.js';
import { QmpClient } from '../src/agent/drivers/vm/qmp.js';
import { buildTestGuest, GUEST_CACHE_DIR } from './fixtures/guest.js';

const VMS = Math.max(1, Number(process.argv[2] ?? 10));
const BANDWIDTH = Number(process.env.BW ?? 4 * 1024 ** 3);
const TLS = process.env.TLS === '1';
const SINGLE = process.env.SINGLE === '1';
const SETTLE_MS = process.env.SETTLE_MS === undefined ? undefined : Number(process.env.SETTLE_MS);
const QEMU = process.env.QEMU ?? 'qemu-system-x86_64';
const QEMU_DATA = process.env.QEMU_DATA;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Qemu {
  proc: ChildProcess;
  dir: string;
  qmp: QmpClient;
}

const guest = await buildTestGuest(GUEST_CACHE_DIR);
const base = await mkdtemp(path.join(tmpdir(), 'nimbus-tcg-repro-'));
const running = new Set<ChildProcess>();
let tls: [MigrationTls, MigrationTls] | undefined;
if (TLS) {
  const ca = await makeCa('repro CA');
  const one = async (name: string): Promise<MigrationTls> => ({ name, ca: ca.cert, ...(await issueCertificate(ca, { commonName: name, usage: 'server' })) });
  tls = [await one('host-a'), await one('host-b')];
}

let launched = 0;
async function launch(incoming: boolean): Promise<Qemu> {
  const dir = path.join(base, `q${launched++}`);
  await mkdir(dir);
  let argv = qemuArgv({
    name: 'repro', accel: 'tcg', cpus: 1, memoryMiB: 128, kernel: guest.kernel, initrd: guest.initrd,
    // the kernel's own words on a panic (the driver's guests boot with loglevel=0)
    append: guest.append.replace('loglevel=0', 'loglevel=8'), nics: [], debugExit: false, startPaused: false, balloon: true,
    paths: { qmpSocket: `${dir}/qmp.sock`, consoleSocket: `${dir}/console.sock`, consoleLog: `${dir}/console.log`, pidFile: `${dir}/qemu.pid` },
    ...(incoming ? { incoming: 'defer' } : {}),
  });
  if (SINGLE) argv = [...argv.map((a) => (a === 'pc,accel=tcg' ? 'pc' : a)), '-accel', 'tcg,thread=single'];
  if (QEMU_DATA) argv = ['-L', QEMU_DATA, ...argv];
  const proc = spawn(QEMU, argv, { stdio: 'ignore' });
  running.add(proc);
  for (let i = 0; i < 500; i++) {
    try {
      return { proc, dir, qmp: await QmpClient.connect(`${dir}/qmp.sock`, { timeoutMs: 2000 }) };
    } catch {
      await sleep(10);
    }
  }
  throw new Error('QEMU did not answer on QMP');
}

function end(q: Qemu): void {
  q.qmp.close();
  q.proc.kill('SIGKILL');
  running.delete(q.proc);
}

/** One move: a new QEMU waits, the stream goes, the source is killed once it completed. */
async function move(src: Qemu): Promise<Qemu> {
  const dst = await launch(true);
  if (tls) {
    await addTlsCreds(dst.qmp, tls[1], 'server');
    await useTlsForMigration(dst.qmp);
    await addTlsCreds(src.qmp, tls[0], 'client');
    await useTlsForMigration(src.qmp, tls[1].name);
  }
  const uri = `tcp:127.0.0.1:${20_000 + Math.floor(Math.random() * 20_000)}`;
  await dst.qmp.execute('migrate-incoming', { uri });
  await src.qmp.execute('migrate-set-parameters', { 'downtime-limit': 300, 'max-bandwidth': BANDWIDTH });
  await src.qmp.execute('migrate', { uri });
  for (;;) {
    const m = await src.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (m.status === 'completed') break;
    if (m.status === 'failed') throw new Error(`migration failed: ${m['error-desc']}`);
    await sleep(5);
  }
  end(src);
  return dst;
}

let failures = 0;
let moves = 0;
async function loop(tag: string): Promise<void> {
  for (let v = 0; v < VMS && failures < 2; v++) {
    let q = await launch(false);
    await sleep(SETTLE_MS ?? Math.random() * 1000);
    for (let i = 0; i < 5; i++) {
      let st: { status: string };
      try {
        q = await move(q);
        moves++;
        await sleep(300 + Math.random() * 300);
        st = await q.qmp.execute<{ status: string }>('query-status').catch(() => ({ status: 'gone' }));
      } catch (e) {
        // the guest died during the move (its source QEMU ended under the stream): a dead guest too
        await sleep(100);
        if (q.proc.exitCode === null && q.proc.signalCode === null) throw e;
        moves++;
        st = { status: `gone during the move: ${(e as Error).message}` };
      }
      if (q.proc.exitCode !== null || st.status !== 'running') {
        failures++;
        const oops = (await readFile(`${q.dir}/console.log`, 'utf8')).split('\n').filter((l) => /corrupt|BUG|panic|RIP|Oops|fault/.test(l));
        console.log(`${tag}: VM ${v} dead after move ${i + 1} (${st.status})\n${oops.slice(0, 8).join('\n')}`);
        break;
      }
    }
    end(q);
  }
}

try {
  await Promise.all([loop('A'), loop('B')]);
} finally {
  for (const p of running) p.kill('SIGKILL');
  await rm(base, { recursive: true, force: true });
}
console.log(`${failures} dead guests in ${moves} moves (max-bandwidth ${BANDWIDTH}, ${TLS ? 'TLS' : 'plain'}${SINGLE ? ', thread=single' : ''})`);
process.exitCode = failures ? 1 : 0;
