import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ago, humanDuration, humanMemory, humanSize, short, statusText, table } from './output.js';
import { PullProgress } from './progress.js';
import { cpuPercent } from './commands/containers.js';

test('tables align like docker: three spaces between columns, no trailing blanks', () => {
  assert.equal(table(['A', 'LONGER'], [['xx', 'y'], ['z', 'w']]), 'A    LONGER\nxx   y\nz    w\n');
  assert.equal(table(['ID', 'NAME', 'X'], [['1', 'n', '']]), 'ID   NAME   X\n1    n\n');
  assert.equal(table(['ONLY'], []), 'ONLY\n');
});

test('human sizes (decimal, three digits) and memory (binary)', () => {
  assert.equal(humanSize(0), '0B');
  assert.equal(humanSize(512), '512B');
  assert.equal(humanSize(1053221), '1.05MB');
  assert.equal(humanSize(12_300_000), '12.3MB');
  assert.equal(humanSize(123_456_789), '123MB');
  assert.equal(humanSize(4_260_000_000), '4.26GB');
  assert.equal(humanSize(999_999), '1MB');
  assert.equal(humanMemory(1536 * 1024), '1.50MiB');
  assert.equal(humanMemory(64 * 1024 ** 2), '64.00MiB');
  assert.equal(humanMemory(100), '100B');
});

test('durations and relative times read like docker', () => {
  assert.equal(humanDuration(300), 'Less than a second');
  assert.equal(humanDuration(1000), '1 second');
  assert.equal(humanDuration(3000), '3 seconds');
  assert.equal(humanDuration(90_000), 'About a minute');
  assert.equal(humanDuration(120_000), '2 minutes');
  assert.equal(humanDuration(3_600_000), 'About an hour');
  assert.equal(humanDuration(5 * 3_600_000), '5 hours');
  assert.equal(humanDuration(3 * 86_400_000), '3 days');
  assert.equal(humanDuration(21 * 86_400_000), '3 weeks');
  const now = Date.parse('2026-01-01T00:10:00Z');
  assert.equal(ago('2026-01-01T00:09:57Z', now), '3 seconds ago');
  assert.equal(ago(null, now), '');
  assert.equal(ago('garbage', now), '');
});

test('container status text', () => {
  const now = Date.parse('2026-01-01T00:10:00Z');
  const base = { exitCode: null, startedAt: null, finishedAt: null, createdAt: '2026-01-01T00:00:00Z' };
  assert.equal(statusText({ ...base, status: 'running', startedAt: '2026-01-01T00:08:00Z' }, now), 'Up 2 minutes');
  assert.equal(statusText({ ...base, status: 'paused', startedAt: '2026-01-01T00:09:58Z' }, now), 'Up 2 seconds (Paused)');
  assert.equal(statusText({ ...base, status: 'exited', exitCode: 137, finishedAt: '2026-01-01T00:09:55Z' }, now), 'Exited (137) 5 seconds ago');
  assert.equal(statusText({ ...base, status: 'created' }, now), 'Created');
});

test('short ids are 12 characters without the algorithm', () => {
  assert.equal(short('sha256:0123456789abcdef0123'), '0123456789ab');
  assert.equal(short('fedcba9876543210fedcba'), 'fedcba987654');
});

test('CPU % from two samples: CPU time over wall time', () => {
  const a = { cpuUsageNs: 1e9, time: '2026-01-01T00:00:00.000Z' };
  assert.equal(cpuPercent(a, { cpuUsageNs: 1.5e9, time: '2026-01-01T00:00:01.000Z' }), 50);
  assert.equal(cpuPercent(a, { cpuUsageNs: 3e9, time: '2026-01-01T00:00:01.000Z' }), 200, 'two CPUs busy');
  assert.equal(cpuPercent(a, { cpuUsageNs: 2e9, time: '2026-01-01T00:00:00.000Z' }), 0, 'no elapsed time');
});

function sink(isTTY: boolean) {
  const out = { isTTY, columns: 100, text: '', write(s: string) { out.text += s; return true; } };
  return out;
}
const layer = (d: string, status: string, bytesDone: number, bytesTotal = 1000) => ({ digest: `sha256:${d.repeat(64).slice(0, 64)}`, status, bytesDone, bytesTotal });

test('pull progress without a terminal: plain lines, one per 10% step', () => {
  const out = sink(false);
  const p = new PullProgress(out);
  p.update({ phase: 'resolving', layers: [] });
  p.update({ phase: 'downloading', layers: [layer('a', 'waiting', 0), layer('b', 'exists', 1000)] });
  p.update({ phase: 'downloading', layers: [layer('a', 'downloading', 450), layer('b', 'exists', 1000)] });
  p.update({ phase: 'downloading', layers: [layer('a', 'downloading', 460), layer('b', 'exists', 1000)] });
  p.update({ phase: 'downloading', layers: [layer('a', 'done', 1000), layer('b', 'exists', 1000)] });
  p.update({ phase: 'unpacking', layers: [layer('a', 'done', 1000), layer('b', 'exists', 1000)] });
  assert.equal(out.text, [
    'resolving',
    'bbbbbbbbbbbb already exists',
    'aaaaaaaaaaaa downloading 45%',
    'aaaaaaaaaaaa done',
    'unpacking',
    '',
  ].join('\n'));
});

test('pull progress on a terminal: bars redrawn in place', () => {
  const out = sink(true);
  const p = new PullProgress(out);
  p.update({ phase: 'downloading', layers: [layer('a', 'downloading', 500), layer('b', 'waiting', 0)] });
  assert.doesNotMatch(out.text, /\x1b\[\d+A/, 'the first frame does not move up');
  assert.match(out.text, /aaaaaaaaaaaa: downloading\s+\[=+>\s*\] 500B\/1kB/);
  out.text = '';
  p.update({ phase: 'downloading', layers: [layer('a', 'done', 1000), layer('b', 'downloading', 100)] });
  assert.ok(out.text.startsWith('\x1b[2A'), 'the second frame redraws over the first two lines');
  assert.match(out.text, /aaaaaaaaaaaa: done/);
  assert.equal(out.text.split('\n').length - 1, 2, 'two lines drawn');
});
