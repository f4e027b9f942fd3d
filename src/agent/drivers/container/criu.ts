/**
 * Which CRIU this host checkpoints and restores containers with (live moves: docs/overlay.md,
 * "Moving containers"), and whether it works here. In order: NIMBUS_CRIU (taken as given, then
 * checked), the one scripts/build-criu builds (Debian's 4.1.1: Debian 12's 3.17 fails on 6.x
 * kernels' vdso), the system's. Each is asked `criu check`; the first that passes is used. The
 * answer is probed once per process (about 0.1 s) and says why none works, with criu's own words.
 */
import { access, constants } from 'node:fs/promises';
import { run } from '../../../core/exec.js';
import { findBinary } from './oci-runtime.js';

/** Where scripts/build-criu installs its build. */
export const NIMBUS_CRIU_PATH = '/usr/local/lib/nimbus/criu/criu';

export interface CriuProbe {
  /** The binary that passed `criu check`; absent when none did. */
  path?: string;
  version?: string;
  /** Why no live move can be made on this host (every candidate's failure); absent when one works. */
  reason?: string;
}

async function executable(p: string): Promise<boolean> {
  try {
    await access(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The last error line of criu's output, without its source location ("Error (criu/vdso.c:613): "). */
export function criuMessage(output: string): string {
  const lines = output.trim().split('\n').map((l) => l.trim()).filter(Boolean);
  const errors = lines.filter((l) => /^Error/.test(l));
  const pick = errors.length ? errors.slice(0, 2) : lines.slice(-1);
  return pick.map((l) => l.replace(/^Error \([^)]*\):\s*/, '')).join('; ') || 'no output';
}

/** The candidates in order (env first), without duplicates. */
export async function criuCandidates(env: NodeJS.ProcessEnv = process.env): Promise<string[]> {
  const out: string[] = [];
  if (env.NIMBUS_CRIU) out.push(env.NIMBUS_CRIU);
  out.push(NIMBUS_CRIU_PATH);
  const system = await findBinary('criu');
  if (system) out.push(system);
  return [...new Set(out)];
}

async function probeUncached(env: NodeJS.ProcessEnv, candidates?: string[]): Promise<CriuProbe> {
  const failures: string[] = [];
  for (const p of candidates ?? (await criuCandidates(env))) {
    if (!(await executable(p))) {
      if (p === env.NIMBUS_CRIU) failures.push(`NIMBUS_CRIU=${p} is not an executable`);
      continue;
    }
    const check = await run(p, ['check'], { timeoutMs: 30_000 }).catch((e: unknown) => ({ code: -1, stdout: '', stderr: String(e) }));
    const version = /Version:\s*(\S+)/.exec((await run(p, ['--version'], { timeoutMs: 5000 }).catch(() => ({ stdout: '' }))).stdout)?.[1];
    if (check.code === 0) return { path: p, ...(version ? { version } : {}) };
    failures.push(`${p}${version ? ` (${version})` : ''}: criu check failed: ${criuMessage(check.stderr || check.stdout)}`);
  }
  return { reason: failures.length ? failures.join('; ') : 'criu is not installed (scripts/bootstrap builds it)' };
}

let cached: Promise<CriuProbe> | undefined;

/** This host's CRIU, probed once (env, candidates: for tests). */
export function probeCriu(env?: NodeJS.ProcessEnv, candidates?: string[]): Promise<CriuProbe> {
  if (env) return probeUncached(env, candidates);
  return (cached ??= probeUncached(process.env));
}
