/**
 * The peers Nimbus is compared with, each in private state under a temp dir so
 * nothing of the user's own podman or runc state is touched:
 *   PodmanStore   podman with its own --root/--runroot/--tmpdir/--volumepath
 *   RuncBundle    an OCI bundle (busybox rootfs, `runc spec` edited) + its own runc --root
 * Both register their removal with the cleanup stack.
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, runOk } from '../../src/core/exec.js';
import { cleanup, peerCgroupParent, pidsMatching, unmountUnder } from './cleanup.js';

/** Hard limits this process holds, from /proc/self/limits, keyed by RLIMIT_* name (Infinity = unlimited). */
export function ownHardLimits(): Map<string, number> {
  const names: Record<string, string> = {
    'Max cpu time': 'RLIMIT_CPU', 'Max file size': 'RLIMIT_FSIZE', 'Max data size': 'RLIMIT_DATA', 'Max stack size': 'RLIMIT_STACK',
    'Max core file size': 'RLIMIT_CORE', 'Max resident set': 'RLIMIT_RSS', 'Max processes': 'RLIMIT_NPROC', 'Max open files': 'RLIMIT_NOFILE',
    'Max locked memory': 'RLIMIT_MEMLOCK', 'Max address space': 'RLIMIT_AS', 'Max file locks': 'RLIMIT_LOCKS', 'Max pending signals': 'RLIMIT_SIGPENDING',
    'Max msgqueue size': 'RLIMIT_MSGQUEUE', 'Max nice priority': 'RLIMIT_NICE', 'Max realtime priority': 'RLIMIT_RTPRIO', 'Max realtime timeout': 'RLIMIT_RTTIME',
  };
  const out = new Map<string, number>();
  for (const line of readFileSync('/proc/self/limits', 'utf8').split('\n').slice(1)) {
    const m = /^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)/.exec(line);
    const name = m?.[1] ? names[m[1]] : undefined;
    if (!m || !name) continue;
    out.set(name, m[3] === 'unlimited' ? Infinity : Number(m[3]));
  }
  return out;
}

interface Rlimit {
  type: string;
  hard: number;
  soft: number;
}

/** Clamp rlimits to what this process holds (no CAP_SYS_RESOURCE here: raising above the inherited hard limit fails). */
export function clampRlimits(rlimits: Rlimit[] | undefined): Rlimit[] {
  const hard = ownHardLimits();
  return (rlimits ?? []).map((r) => {
    const max = hard.get(r.type) ?? Infinity;
    return { type: r.type, hard: Math.min(r.hard, max), soft: Math.min(r.soft, r.hard, max) };
  });
}

// ---------------------------------------------------------------- runc

export interface RuncBundle {
  dir: string;
  root: string;
  /** `runc run` a fresh container id on the bundle; resolves on exit (throws on non-zero). */
  run(id: string): Promise<void>;
  remove(): Promise<void>;
}

export async function prepareRuncBundle(args: string[] = ['/bin/true'], runtime = 'runc'): Promise<RuncBundle> {
  const dir = mkdtempSync(join(tmpdir(), `bench-${runtime}-`));
  const root = join(dir, 'state');
  const remove = cleanup.add(`${runtime} bundle ${dir}`, async () => {
    const ids = (await run(runtime, ['--root', root, 'list', '-q']).catch(() => ({ stdout: '' }))).stdout.split('\n').filter(Boolean);
    for (const id of ids) await run(runtime, ['--root', root, 'delete', '-f', id]).catch(() => undefined);
    await unmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  });
  const rootfs = join(dir, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  for (const d of ['proc', 'dev', 'sys', 'tmp', 'etc']) mkdirSync(join(rootfs, d), { recursive: true });
  cpSync('/bin/busybox', join(rootfs, 'bin/busybox'));
  for (const a of ['sh', 'true', 'sleep']) symlinkSync('busybox', join(rootfs, 'bin', a));
  await runOk(runtime, ['spec', '--bundle', dir]);
  const cfgPath = join(dir, 'config.json');
  const spec = JSON.parse(readFileSync(cfgPath, 'utf8')) as { process: { terminal: boolean; args: string[]; rlimits?: Rlimit[] } };
  spec.process.terminal = false;
  spec.process.args = args;
  spec.process.rlimits = clampRlimits(spec.process.rlimits);
  writeFileSync(cfgPath, JSON.stringify(spec, null, 2));
  return {
    dir,
    root,
    run: async (id) => {
      await runOk(runtime, ['--root', root, 'run', '--bundle', dir, id]);
    },
    remove,
  };
}

// ---------------------------------------------------------------- podman

export const PODMAN_RUN_FLAGS = ['--rm', '--network', 'none', '--runtime', 'runc', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'];

export interface PodmanStore {
  dir: string;
  args(rest: string[]): string[];
  podman(rest: string[]): Promise<string>;
  remove(): Promise<void>;
}

export function podmanStore(): PodmanStore {
  const dir = mkdtempSync(join(tmpdir(), 'bench-podman-'));
  const global = [
    '--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--tmpdir', join(dir, 'tmp'), '--volumepath', join(dir, 'volumes'),
    '--cgroup-manager', 'cgroupfs', '--events-backend', 'file',
  ];
  const args = (rest: string[]) => [...global, ...rest];
  const podman = (rest: string[]) => runOk('podman', args(rest), { timeoutMs: 300_000 });
  const cgroups = peerCgroupParent('libpod_parent');
  const remove = cleanup.add(`podman store ${dir}`, async () => {
    // Not `podman system reset`: it would also drop network definitions shared with the user's podman.
    await run('podman', args(['rm', '--all', '--force', '--time', '0'])).catch(() => undefined);
    await run('podman', args(['rmi', '--all', '--force'])).catch(() => undefined);
    for (const pid of pidsMatching('conmon', dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await unmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
    cgroups();
  });
  return { dir, args, podman, remove };
}
