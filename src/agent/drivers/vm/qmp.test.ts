// Protocol tests for the QMP client against a scripted unix-socket server
// (the real QEMU is exercised in qmp-qemu.test.ts and the VM driver tests).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { hasCode } from '../../../core/errors.js';
import { QmpClient, QmpClosedError, QmpCommandError } from './qmp.js';

const dir = mkdtempSync(path.join(tmpdir(), 'nimbus-qmp-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'scripted' }, capabilities: ['oob'] } };

/** A server that greets and hands each parsed command to `onCommand`, which may write raw lines back. */
async function scripted(onCommand: (cmd: Record<string, unknown>, send: (o: unknown) => void, sock: net.Socket) => void, greet = true) {
  const sockPath = path.join(dir, `s${n++}.sock`);
  const seen: Record<string, unknown>[] = [];
  const server = net.createServer((sock) => {
    const send = (o: unknown) => sock.write(`${typeof o === 'string' ? o : JSON.stringify(o)}\n`);
    if (greet) send(GREETING);
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, i)) as Record<string, unknown>;
        buf = buf.slice(i + 1);
        seen.push(cmd);
        if (cmd.execute === 'qmp_capabilities') send({ return: {}, id: cmd.id });
        else onCommand(cmd, send, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
  return { sockPath, seen, close: () => new Promise<void>((r) => server.close(() => r())) };
}

test('greeting, capabilities negotiation, then commands matched by id even out of order', async () => {
  const held: Array<[Record<string, unknown>, (o: unknown) => void]> = [];
  const s = await scripted((cmd, send) => {
    held.push([cmd, send]);
    if (held.length === 2) {
      // answer the second first, with an event in between
      const [c2, s2] = held[1]!;
      const [c1, s1] = held[0]!;
      s2({ return: { status: 'running' }, id: c2.id });
      s1({ event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } });
      s1({ return: {}, id: c1.id });
    }
  });
  const c = await QmpClient.connect(s.sockPath);
  try {
    assert.equal(c.greeting?.version.qemu.major, 7);
    assert.equal(s.seen[0]?.execute, 'qmp_capabilities');
    const events: string[] = [];
    c.onEvent((e) => events.push(e.event));
    const [a, b] = await Promise.all([c.execute('stop'), c.execute<{ status: string }>('query-status')]);
    assert.deepEqual(a, {});
    assert.equal(b.status, 'running');
    assert.deepEqual(events, ['STOP']);
    assert.notEqual(s.seen[1]?.id, s.seen[2]?.id);
  } finally {
    c.close();
    await s.close();
  }
});

test('QMP error classes become typed errors', async () => {
  const s = await scripted((cmd, send) => {
    const cls = cmd.execute === 'nope' ? 'CommandNotFound' : cmd.execute === 'device_del' ? 'DeviceNotFound' : 'GenericError';
    send({ error: { class: cls, desc: `failed ${String(cmd.execute)}` }, id: cmd.id });
  });
  const c = await QmpClient.connect(s.sockPath);
  try {
    await assert.rejects(c.execute('nope'), (e) => e instanceof QmpCommandError && e.qmpClass === 'CommandNotFound' && hasCode(e, 'InvalidArgument'));
    await assert.rejects(c.execute('device_del', { id: 'x' }), (e) => hasCode(e, 'NotFound') && /failed device_del/.test((e as Error).message));
    await assert.rejects(c.execute('migrate'), (e) => e instanceof QmpCommandError && hasCode(e, 'Internal'));
    // the connection stays usable after errors
    await assert.rejects(c.execute('nope'), QmpCommandError);
  } finally {
    c.close();
    await s.close();
  }
});

test('events arrive through the async iterator and waitForEvent; close ends them', async () => {
  const s = await scripted((cmd, send, sock) => {
    send({ return: {}, id: cmd.id });
    send({ event: 'POWERDOWN', timestamp: { seconds: 1, microseconds: 0 } });
    send({ event: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' }, timestamp: { seconds: 2, microseconds: 0 } });
    setTimeout(() => sock.end(), 20);
  });
  const c = await QmpClient.connect(s.sockPath);
  try {
    const it = c.events();
    const shutdown = c.waitForEvent('SHUTDOWN', 5000);
    await c.execute('system_powerdown');
    const got: string[] = [];
    for await (const e of it) got.push(e.event);
    assert.deepEqual(got, ['POWERDOWN', 'SHUTDOWN']);
    assert.equal((await shutdown).data?.reason, 'guest-shutdown');
    await c.closed;
    assert.ok(c.isClosed);
    await assert.rejects(c.execute('query-status'), QmpClosedError);
  } finally {
    c.close();
    await s.close();
  }
});

test('pending commands fail with QmpClosedError when the socket closes', async () => {
  const s = await scripted((_cmd, _send, sock) => sock.destroy());
  const c = await QmpClient.connect(s.sockPath);
  try {
    await assert.rejects(c.execute('quit'), (e) => e instanceof QmpClosedError && hasCode(e, 'Unavailable'));
  } finally {
    c.close();
    await s.close();
  }
});

test('no socket, no greeting, garbage, or a command timeout are Unavailable', async () => {
  await assert.rejects(QmpClient.connect(path.join(dir, 'absent.sock')), (e) => hasCode(e, 'Unavailable'));
  const silent = await scripted(() => undefined, false);
  await assert.rejects(QmpClient.connect(silent.sockPath, { timeoutMs: 200 }), (e) => e instanceof QmpClosedError && /greeting/.test((e as Error).message));
  await silent.close();
  const garbage = await scripted((_c, send) => send('this is not json'));
  const c = await QmpClient.connect(garbage.sockPath);
  await assert.rejects(c.execute('query-status'), (e) => e instanceof QmpClosedError && /unparsable/.test((e as Error).message));
  await garbage.close();
  const mute = await scripted(() => undefined);
  const c2 = await QmpClient.connect(mute.sockPath);
  await assert.rejects(c2.execute('query-status', undefined, { timeoutMs: 100 }), /no reply within 100 ms/);
  c2.close();
  await mute.close();
});
