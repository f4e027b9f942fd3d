/**
 * Cleanup stack for benchmarks: everything a benchmark creates (processes,
 * temp dirs, podman storage, runc containers, mounts) registers an undo step
 * here; steps run last-in first-out at the end, on failure, and on SIGINT/SIGTERM.
 */
import { existsSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../src/core/exec.js';

type Step = { what: string; fn: () => unknown };

export class Cleanup {
  private steps: Step[] = [];
  private ran = false;

  add(what: string, fn: () => unknown): () => Promise<void> {
    const step = { what, fn };
    this.steps.push(step);
    // Run one step early (and only once) when its owner is done with it.
    return async () => {
      const i = this.steps.indexOf(step);
      if (i < 0) return;
      this.steps.splice(i, 1);
      await step.fn();
    };
  }

  /** Run every step (LIFO); errors are collected and reported, never thrown. */
  async runAll(): Promise<string[]> {
    const errors: string[] = [];
    while (this.steps.length) {
      const step = this.steps.pop()!;
      try {
        await step.fn();
      } catch (e) {
        errors.push(`${step.what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    this.ran = true;
    for (const e of errors) process.stderr.write(`bench cleanup: ${e}\n`);
    return errors;
  }

  get done(): boolean {
    return this.ran && this.steps.length === 0;
  }
}

/** A process-wide cleanup stack that also runs on SIGINT/SIGTERM. */
export const cleanup = new Cleanup();
let hooked = false;
export function hookSignals(): void {
  if (hooked) return;
  hooked = true;
  // Every later signal is waited out, not obeyed: a second one (Ctrl-C twice, or `pkill -f` reaching
  // both `timeout` and node) used to kill the bench mid-cleanup, leaving a daemon's warm containers,
  // network namespaces and cgroups behind with their home already half removed.
  let cleaning = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (cleaning) return void process.stderr.write(`bench: ${sig} again, still cleaning up (SIGKILL to abandon it)\n`);
      cleaning = true;
      process.stderr.write(`bench: ${sig}, cleaning up\n`);
      void cleanup.runAll().finally(() => process.exit(130));
    });
  }
}

/** Mount points at or under `prefix`, deepest first. */
export function mountsUnder(prefix: string): string[] {
  const p = prefix.endsWith('/') ? prefix : prefix + '/';
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m): m is string => !!m && (m === prefix || m.startsWith(p)))
    .map((m) => m.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
}

/** Lazily unmount everything under prefix; returns what was mounted. */
export async function unmountUnder(prefix: string): Promise<string[]> {
  const ms = mountsUnder(prefix);
  for (const m of ms) await run('umount', ['-l', m]).catch(() => undefined);
  return ms;
}

/** Pids of processes named `comm` whose command line contains `needle`. */
export function pidsMatching(comm: string, needle: string): number[] {
  const out: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const c = readFileSync(`/proc/${e}/comm`, 'utf8').trim();
      if (c !== comm) continue;
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(needle)) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** VmRSS of a process in KiB (NaN when it is gone). */
export function rssKiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const CGROUP_ROOT = '/sys/fs/cgroup';

/**
 * Cgroups directly under each hierarchy's root (v1 controllers, named and unified hierarchies, or a
 * v2 root) whose names match: where peers and benches put theirs.
 */
export function cgroupsMatching(match: (name: string) => boolean): string[] {
  const roots = [CGROUP_ROOT, ...readdirSync(CGROUP_ROOT, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => join(CGROUP_ROOT, d.name))];
  return roots.flatMap((root) => {
    try {
      return readdirSync(root, { withFileTypes: true })
        .filter((e) => e.isDirectory() && match(e.name))
        .map((e) => join(root, e.name))
        .filter((d) => existsSync(join(d, 'cgroup.procs')));
    } catch {
      return [];
    }
  });
}

function removeCgroupTree(dir: string): void {
  for (const c of readdirSync(dir, { withFileTypes: true })) if (c.isDirectory()) removeCgroupTree(join(dir, c.name));
  rmdirSync(dir);
}

/**
 * A peer's parent cgroup (podman's `libpod_parent`, dockerd's `docker`, with cgroupfs): the ones
 * that did not exist when this was called are removed, empty, by the returned step (the peers
 * themselves leave them in every hierarchy). What was there before is someone else's and stays.
 */
export function peerCgroupParent(name: string): () => void {
  const before = new Set(cgroupsMatching((n) => n === name));
  return () => {
    const left: string[] = [];
    for (const dir of cgroupsMatching((n) => n === name)) {
      if (before.has(dir)) continue;
      try {
        removeCgroupTree(dir);
      } catch (e) {
        left.push(`${dir}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      }
    }
    if (left.length) throw new Error(`cgroups left: ${left.join(', ')}`);
  };
}
