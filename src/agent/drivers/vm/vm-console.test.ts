// The console's output across a migration, read without a guest: the hosts before's output
// (console.history) then this host's console.log, as one byte stream.
import assert from 'node:assert/strict';
import { appendFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { LogRecord } from '../instance-driver.js';
import { DEFAULT_CONSOLE_LIMITS, forgetConsoleLog } from './console-log.js';
import { instancePaths } from './qemu-process.js';
import { consoleHistory, VmConsole } from './vm-console.js';
import type { VmRecord } from './vm-record.js';

let base: string;
before(async () => {
  base = await mkdtemp(path.join(tmpdir(), 'nimbus-vm-console-'));
});
after(async () => {
  await rm(base, { recursive: true, force: true });
});

async function moved(name: string, history: string | Buffer, live: string | Buffer, lifecycle: VmRecord['lifecycle'] = 'stopped') {
  const dir = path.join(base, name);
  const p = instancePaths(dir);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  await writeFile(consoleHistory(p), history);
  await writeFile(p.consoleLog, live);
  const state = { lifecycle };
  const console = new VmConsole({ paths: () => p, load: async () => state as VmRecord }, DEFAULT_CONSOLE_LIMITS);
  const read = async (opts: { follow?: boolean; tail?: number } = {}) => {
    const out: LogRecord[] = [];
    for await (const r of console.logs(name, opts)) out.push(r);
    return out;
  };
  return { p, state, console, read, done: () => forgetConsoleLog(p.consoleLog) };
}

const lines = (rs: LogRecord[]) => rs.map((r) => (r.partial ? `${r.line}…` : r.line));

test('a line the move cut in two (its start printed at the source, its end here) reads back whole', async () => {
  const m = await moved('cut', 'tick 18\ntick 19\nti', 'ck 20\ntick 21\n');
  try {
    assert.deepEqual(lines(await m.read()), ['tick 18', 'tick 19', 'tick 20', 'tick 21']);
    assert.deepEqual(lines(await m.read({ tail: 2 })), ['tick 20', 'tick 21'], 'tail counts the joined line once');
    assert.deepEqual(lines(await m.read({ tail: 3 })), ['tick 19', 'tick 20', 'tick 21']);
  } finally {
    m.done();
  }
});

test('a multi-byte character cut by the move, and a line not finished yet here', async () => {
  const euro = Buffer.from('€', 'utf8'); // 3 bytes
  const m = await moved('utf8', Buffer.concat([Buffer.from('price 5'), euro.subarray(0, 1)]), Buffer.concat([euro.subarray(1), Buffer.from('\nwaiting')]));
  try {
    assert.deepEqual(lines(await m.read()), ['price 5€', 'waiting…']);
  } finally {
    m.done();
  }
  const n = await moved('unfinished', 'a\nhalf a li', '');
  try {
    assert.deepEqual(lines(await n.read()), ['a', 'half a li…'], 'the unfinished line once, marked partial');
    await appendFile(n.p.consoleLog, 'ne\n');
    assert.deepEqual(lines(await n.read()), ['a', 'half a line']);
  } finally {
    n.done();
  }
});

test('following: the rest of the cut line arrives after the reader began', async () => {
  const m = await moved('follow', 'tick 1\ntick', '', 'running');
  try {
    const got: string[] = [];
    const ac = new AbortController();
    const reading = (async () => {
      for await (const r of m.console.logs('follow', { follow: true, signal: ac.signal })) {
        got.push(r.line);
        if (got.length === 3) ac.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 150));
    await appendFile(m.p.consoleLog, ' 2\n');
    await new Promise((r) => setTimeout(r, 150));
    await appendFile(m.p.consoleLog, 'tick 3\n');
    await reading;
    assert.deepEqual(got, ['tick 1', 'tick 2', 'tick 3']);
  } finally {
    m.done();
  }
});
