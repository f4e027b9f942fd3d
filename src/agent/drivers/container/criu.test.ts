/**
 * Which CRIU an agent uses (criu.ts): NIMBUS_CRIU first when it passes `criu check`, the next
 * candidate when it does not (its failure kept for the reason), and criu's error lines as the
 * reason reads them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { criuCandidates, criuMessage, NIMBUS_CRIU_PATH, probeCriu } from './criu.js';

/** A stand-in criu: `check` exits with `code` after printing `out` on stderr; `--version` prints a version. */
function fakeCriu(dir: string, name: string, code: number, out: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Version: 9.9.${code}"; exit 0; fi\necho '${out}' >&2\nexit ${code}\n`);
  chmodSync(p, 0o755);
  return p;
}

test('criu\'s error lines, without their source locations, as the reason', () => {
  const out = 'Warn (criu/kerndat.c:1): something\nError (criu/vdso.c:613): vdso: Failed to fill self vdso symtable\nError (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.\nError (criu/crtools.c:260): Could not initialize kernel features detection.';
  assert.equal(criuMessage(out), 'vdso: Failed to fill self vdso symtable; kerndat_vdso_fill_symtable failed when initializing kerndat.');
  assert.equal(criuMessage('Looks good.'), 'Looks good.');
});

test('NIMBUS_CRIU first, then Nimbus\' build, then the system\'s; the first that passes its check is used', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-criu-probe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const good = fakeCriu(dir, 'good', 0, 'Looks good.');
  const bad = fakeCriu(dir, 'bad', 1, 'Error (criu/vdso.c:613): vdso: Unexpected rt vDSO area bounds');
  const candidates = await criuCandidates({ NIMBUS_CRIU: good });
  assert.deepEqual(candidates.slice(0, 2), [good, NIMBUS_CRIU_PATH]);
  assert.deepEqual(await probeCriu({ NIMBUS_CRIU: good }), { path: good, version: '9.9.0' });
  const p = await probeCriu({ NIMBUS_CRIU: bad });
  // the next candidate (this host's build, if any) may pass: either way the bad one is not used
  assert.notEqual(p.path, bad);
  if (!p.path) assert.match(p.reason ?? '', new RegExp(`${bad} \\(9\\.9\\.1\\): criu check failed: vdso: Unexpected rt vDSO area bounds`));
  const missing = await probeCriu({ NIMBUS_CRIU: join(dir, 'nothing') });
  if (!missing.path) assert.match(missing.reason ?? '', /NIMBUS_CRIU=.*nothing is not an executable/);
});

test('no candidate passes: the reason names each one\'s failure in criu\'s words', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-criu-probe-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const bad = fakeCriu(dir, 'bad', 1, 'Error (criu/vdso.c:613): vdso: Unexpected rt vDSO area bounds');
  const nothing = join(dir, 'nothing');
  const p = await probeCriu({ NIMBUS_CRIU: nothing }, [nothing, bad]);
  assert.equal(p.path, undefined);
  assert.equal(p.reason, `NIMBUS_CRIU=${nothing} is not an executable; ${bad} (9.9.1): criu check failed: vdso: Unexpected rt vDSO area bounds`);
  assert.equal((await probeCriu({}, [])).reason, 'criu is not installed (scripts/bootstrap builds it)');
});
