/**
 * Nimbus's directories in the system's temporary directory (a certificate's files while openssl
 * reads them, an image archive's members, a runtime probe's bundle): named for the process that
 * made them, `nimbus-KIND-PID-XXXXXX`, so that a process starting later removes those of
 * processes that are gone (SIGKILLed inside the work: their `finally` never ran), and never one
 * another live process is using.
 */
import { mkdtempSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { processAlive } from './proc.js';

const NAMED = /^nimbus-[a-z][a-z-]*?-(\d+)-[A-Za-z0-9]{6}$/;

function prefix(kind: string, under: string): string {
  if (!/^[a-z][a-z-]*$/.test(kind)) throw new Error(`bad temporary directory kind ${JSON.stringify(kind)}`);
  return path.join(under, `nimbus-${kind}-${process.pid}-`);
}

/** A new private directory `nimbus-KIND-PID-XXXXXX` in `under` (default the system's temporary directory). */
export function processTempDir(kind: string, under = tmpdir()): Promise<string> {
  return mkdtemp(prefix(kind, under));
}

export function processTempDirSync(kind: string, under = tmpdir()): string {
  return mkdtempSync(prefix(kind, under));
}

/** Remove such directories (in `under`) whose process is gone; the names removed. */
export async function sweepDeadProcessTempDirs(under = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(under).catch(() => [] as string[])) {
    const m = NAMED.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    await rm(path.join(under, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}
