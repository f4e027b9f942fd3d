#!/usr/bin/env node
// Runs every compiled *.test.js under dist/ with Node's test runner.
// Files run in parallel processes; each test cleans up what it creates.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

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
const concurrency = process.env.NIMBUS_TEST_CONCURRENCY ?? '3';
const child = spawn(process.execPath, ['--enable-source-maps', '--test', `--test-concurrency=${concurrency}`, ...files], { stdio: ['inherit', 'pipe', 'inherit'] });

// The TAP stream passes through as it comes; each failing test's block ("not ok" and its YAML
// diagnostics) is kept and printed again at the end, so a run's tail says what failed and why
// even when only the tail of a long log is read.
const failures = [];
let open = null; // { indent, lines } while inside a failing test's block
const MAX_BLOCK_LINES = 120;
createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => {
  process.stdout.write(line + '\n');
  const failed = /^(\s*)not ok \d+ /.exec(line);
  if (failed) {
    open = { indent: failed[1], lines: [line] };
    failures.push(open);
    return;
  }
  if (!open) return;
  if (open.lines.length < MAX_BLOCK_LINES) open.lines.push(line);
  if (line === `${open.indent}  ...`) open = null;
});
child.on('close', (code) => {
  if (failures.length) {
    console.log(`\n# ${failures.length} failing test block(s), again (a suite's block follows its failing tests):`);
    for (const block of failures) console.log(block.lines.join('\n'));
  }
  process.exit(code ?? 1); // null: ended by a signal
});
