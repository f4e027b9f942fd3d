#!/usr/bin/env node
// Runs every compiled *.test.js under dist/ with Node's test runner.
// Files run in parallel processes; each test cleans up what it creates.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function walk(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

// --unit: the fast tier for the edit-compile-test loop: the layers above the host (core, store
// on SQLite, control, api, cli) and the static checks; no daemon, no QEMU, no PostgreSQL cluster.
const UNIT = ['dist/src/core/', 'dist/src/store/', 'dist/src/control/', 'dist/src/api/', 'dist/src/cli/', 'dist/test/layers.test.js', 'dist/test/promises.test.js'];
const args = process.argv.slice(2);
const unit = args.includes('--unit');
const filter = args.filter((a) => a !== '--unit');
let files = ['dist/src', 'dist/test'].flatMap((d) => { try { return walk(d); } catch { return []; } });
if (unit) files = files.filter((f) => UNIT.some((x) => f.startsWith(x)));
if (filter.length) files = files.filter((f) => filter.some((x) => f.includes(x)));
if (!files.length) {
  console.error('run-tests: no test files found (did the build run?)');
  process.exit(1);
}
// Longest first (each 42–91 s in the CI run of 2026-12-03, fifth session): in name order the e2e
// files came last and the longest of them (vm.e2e, 58 s) ran alone at the end; started first,
// they overlap the many short files instead. The rest keep their order.
const SLOW_FIRST = [
  'dashboard.e2e', 'fuzz.test', 'network.e2e', 'logs.e2e', 'migrate.e2e', 'move-across.e2e', 'vm.e2e', 'migrate-across.e2e',
  'engine.e2e', 'vm-driver.conformance', 'replicas.e2e', 'secure.e2e', 'metering.e2e', 'access.e2e', 'images-across-hosts.e2e', 'compose.e2e',
];
const rank = (f) => {
  const i = SLOW_FIRST.findIndex((s) => f.endsWith(`/${s}.test.js`) || f.endsWith(`/${s}.js`));
  return i < 0 ? SLOW_FIRST.length : i;
};
files.sort((a, b) => rank(a) - rank(b));
const concurrency = process.env.NIMBUS_TEST_CONCURRENCY ?? '3';
const r = spawnSync(process.execPath, ['--enable-source-maps', '--test', `--test-concurrency=${concurrency}`, ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
