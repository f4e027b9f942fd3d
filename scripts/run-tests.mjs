#!/usr/bin/env node
// Runs every compiled *.test.js under dist/, one Node process per file, a few files at a time,
// the longest first (test/durations.json, from an earlier run), so the slow end-to-end files do
// not all start last and leave the other lanes idle. Each file's TAP is printed whole when the
// file ends (no interleaving), then one summary for the run. Each test cleans up what it creates.
//
//   node scripts/run-tests.mjs [--unit] [--record-times] [PATH-SUBSTRING...]
//     --unit          the fast tier: the layers above the host, no daemon, QEMU or PostgreSQL
//     --record-times  write each file's wall time to test/durations.json (after a full run)
//   NIMBUS_TEST_CONCURRENCY      files at a time (default 3)
//   NIMBUS_TEST_FILE_TIMEOUT_S   a file still running after this is killed and fails (default 420)
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';

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
const DURATIONS = 'test/durations.json';
const args = process.argv.slice(2);
const unit = args.includes('--unit');
const recordTimes = args.includes('--record-times');
const filter = args.filter((a) => !a.startsWith('--'));
let files = ['dist/src', 'dist/test'].flatMap((d) => { try { return walk(d); } catch { return []; } });
if (unit) files = files.filter((f) => UNIT.some((x) => f.startsWith(x)));
if (filter.length) files = files.filter((f) => filter.some((x) => f.includes(x)));
if (!files.length) {
  console.error('run-tests: no test files found (did the build run?)');
  process.exit(1);
}
const concurrency = Math.max(1, Number(process.env.NIMBUS_TEST_CONCURRENCY ?? '3'));
const fileTimeoutMs = Number(process.env.NIMBUS_TEST_FILE_TIMEOUT_S ?? '420') * 1000;

// Longest first; a file with no recorded time (a new one) goes before all but the longest.
let known = {};
try { known = JSON.parse(readFileSync(DURATIONS, 'utf8')); } catch { /* first run: path order */ }
const UNKNOWN_S = 30;
const expected = (f) => known[f] ?? UNKNOWN_S;
files.sort((a, b) => expected(b) - expected(a) || a.localeCompare(b));

const SUMMARY = /^# (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) (\d+(?:\.\d+)?)$/;
const totals = { tests: 0, suites: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0, todo: 0 };
const failures = []; // each failing test's block ("not ok" and its YAML diagnostics), printed again at the end
const failedFiles = [];
const wall = {};
const started = Date.now();
const MAX_BLOCK_LINES = 120;
const running = new Set(); // the files' process ids (each its group's leader)

function runFile(file) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    // Its own process group, so a file that hangs is killed with everything it started.
    const child = spawn(process.execPath, ['--enable-source-maps', '--test-reporter=tap', file], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    running.add(child.pid);
    const out = [];
    child.stdout.on('data', (b) => out.push(b));
    child.stderr.on('data', (b) => out.push(b));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try { process.kill(-child.pid, 'SIGTERM'); } catch { /* gone */ }
      setTimeout(() => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } }, 10_000).unref();
    }, fileTimeoutMs);
    child.on('close', (code, signal) => {
      running.delete(child.pid);
      clearTimeout(timer);
      const seconds = (Date.now() - t0) / 1000;
      wall[file] = Math.round(seconds * 10) / 10;
      const kept = [];
      let sawSummary = false;
      let failedTests = 0;
      let open = null; // { indent, lines } while inside a failing test's block
      for (const line of Buffer.concat(out).toString('utf8').split('\n')) {
        const s = SUMMARY.exec(line);
        if (s) {
          sawSummary = true;
          if (s[1] in totals) totals[s[1]] += Number(s[2]);
          continue;
        }
        if (line === 'TAP version 13' || /^1\.\.\d+$/.test(line)) continue;
        kept.push(line);
        const failed = /^(\s*)not ok \d+ /.exec(line);
        if (failed) {
          failedTests++;
          open = { indent: failed[1], lines: [`# in ${file}`, line] };
          failures.push(open);
          continue;
        }
        if (!open) continue;
        if (open.lines.length < MAX_BLOCK_LINES) open.lines.push(line);
        if (line === `${open.indent}  ...`) open = null;
      }
      while (kept.length && kept[kept.length - 1] === '') kept.pop();
      const ok = code === 0 && !timedOut;
      let why = '';
      if (timedOut) why = `killed after ${fileTimeoutMs / 1000} s (NIMBUS_TEST_FILE_TIMEOUT_S)`;
      else if (code !== 0) why = signal ? `ended by ${signal}` : `exited ${code}`;
      // A file that failed outside any test (it crashed, hung or timed out) counts as one failure.
      if (!ok && (timedOut || !sawSummary || failedTests === 0)) {
        totals.fail += 1;
        failures.push({ lines: [`# in ${file}`, `not ok - ${file}: ${why}`] });
      }
      if (!ok) failedFiles.push(`${file} (${why})`);
      process.stdout.write(`# file ${file}: ${ok ? 'ok' : 'FAILED, ' + why}, ${seconds.toFixed(1)} s\n${kept.join('\n')}\n`);
      resolve();
    });
  });
}

// Forwarded to every file's process group, so ^C ends the whole run and what it started.
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const pid of running) { try { process.kill(-pid, sig); } catch { /* gone */ } }
    process.exit(130);
  });
}

process.stdout.write(`TAP version 13\n# ${files.length} files, ${concurrency} at a time, longest first\n`);
const queue = [...files];
await Promise.all(Array.from({ length: Math.min(concurrency, queue.length) }, async () => {
  for (let f = queue.shift(); f !== undefined; f = queue.shift()) await runFile(f);
}));

if (failures.length) {
  console.log(`\n# ${failures.length} failing test block(s), again (a suite's block follows its failing tests):`);
  for (const block of failures) console.log(block.lines.join('\n'));
}
if (failedFiles.length) console.log(`\n# failed files:\n${failedFiles.map((f) => `#   ${f}`).join('\n')}`);
for (const [k, v] of Object.entries(totals)) console.log(`# ${k} ${v}`);
console.log(`# duration_ms ${Date.now() - started}`);
if (recordTimes) {
  writeFileSync(DURATIONS, JSON.stringify({ ...known, ...wall }, Object.keys({ ...known, ...wall }).sort(), 2) + '\n');
  console.log(`# wall times of ${Object.keys(wall).length} files written to ${DURATIONS}`);
}
process.exit(failedFiles.length ? 1 : 0);
