// The connections the agent makes and takes for a QEMU without a network, against a stand-in for
// QEMU's descriptor monitor (python3, which, unlike Node, receives descriptors): it answers every
// command, and on migrate-incoming reads what the connection it was handed carries, on migrate
// writes a stream into it. An incoming migration's port with a token hands QEMU only the
// connection that sends the token first, and no more of it than the token is read; strangers
// (silent, wrong, too many) are closed while it keeps listening.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { hasCode } from '../../../core/errors.js';
import { fdMonitorSocket } from './qemu.js';
import { acceptOneForQemu, connectForQemu, MAX_PENDING } from './qemu-peer-sockets.js';
import { python3 } from '../../../core/python3.js';
import { until } from '../../../../test/helpers/wait.js';

const FAKE_MONITOR = String.raw`
import json, socket, sys
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(sys.argv[1])
ls.listen(4)
print(json.dumps({'ready': True}), flush=True)
while True:
    c, _ = ls.accept()
    c.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
    buf, fds = b'', []
    while True:
        msg, got, _, _ = socket.recv_fds(c, 65536, 4)
        if not msg:
            break
        fds += got
        buf += msg
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            cmd = json.loads(line)
            if cmd['execute'] == 'qmp_capabilities':
                c.sendall(b'{"return": {}}\n')
                continue
            seen = {'execute': cmd['execute'], 'fds': len(fds)}
            if cmd['execute'] == 'migrate-incoming':
                conn = socket.socket(fileno=fds[-1])
                conn.setblocking(True)
                conn.settimeout(5)
                data = b''
                while not data.endswith(b'END'):
                    b = conn.recv(4096)
                    if not b:
                        break
                    data += b
                seen['read'] = data.decode('latin1')
                conn.close()
            if cmd['execute'] == 'migrate':
                conn = socket.socket(fileno=fds[-1])
                conn.setblocking(True)
                conn.sendall(b'QEVM-stream-END')
                conn.close()
            print(json.dumps(seen), flush=True)
            c.sendall(b'{"return": {}}\n')
    c.close()
`;

let dir: string;
let qmpSocket: string;
let monitor: ChildProcess;
const seen: Array<{ execute: string; fds: number; read?: string }> = [];

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'nimbus-peer-sockets-'));
  qmpSocket = path.join(dir, 'qmp.sock');
  monitor = spawn(python3(), ['-I', '-S', '-c', FAKE_MONITOR, fdMonitorSocket(qmpSocket)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let buf = '';
  await new Promise<void>((resolve, reject) => {
    monitor.once('error', reject);
    monitor.stdout!.on('data', (b: Buffer) => {
      buf += b.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const m = JSON.parse(buf.slice(0, nl)) as { ready?: boolean; execute?: string; fds: number; read?: string };
        buf = buf.slice(nl + 1);
        if (m.ready) resolve();
        else seen.push(m as { execute: string; fds: number; read?: string });
      }
    });
  });
});
after(() => {
  monitor?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const INCOMING = { execute: 'migrate-incoming', arguments: { uri: 'fd:migration-in' } };
const token = () => randomBytes(32).toString('hex');

/** A client connection to port on loopback, keeping what it receives; `ended` once the peer closed it. */
function client(port: number): Promise<{ socket: net.Socket; received: () => Buffer; ended: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1');
    const ended = new Promise<void>((done) => socket.once('close', () => done()));
    socket.on('data', (b: Buffer) => chunks.push(b));
    socket.on('error', () => undefined);
    socket.once('connect', () => resolve({ socket, received: () => Buffer.concat(chunks), ended }));
    socket.once('error', reject);
  });
}

const refusedConnection = (port: number) =>
  new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? String(e)));
  });


test('with a token, strangers who reach the port first (silent, a wrong token, a short one) are closed and the move\'s connection is handed over; no more than the token is read', async () => {
  const secret = token();
  const port = await acceptOneForQemu(qmpSocket, '127.0.0.1', 'migration-in', INCOMING, { context: { test: 1 }, token: secret });
  try {
    const silent = await client(port.port);
    const wrong = await client(port.port);
    wrong.socket.write(Buffer.alloc(32, 0x41));
    const short = await client(port.port);
    short.socket.end(Buffer.from(secret, 'hex').subarray(0, 5));
    await wrong.ended;
    await short.ended;
    assert.equal(wrong.received().length, 0, 'a wrong token gets no acceptance');
    assert.equal(short.received().length, 0);
    assert.equal(seen.length, 0, 'QEMU was handed nothing yet');

    // the source: the token and, in the same write, the stream's first bytes (QEMU's to read)
    const from = seen.length;
    const source = await client(port.port);
    source.socket.write(Buffer.concat([Buffer.from(secret, 'hex'), Buffer.from('QEVM-stream-END')]));
    await until(() => seen.length >= from + 2, 'the handover');
    assert.deepEqual(seen.slice(from).map((s) => s.execute), ['getfd', 'migrate-incoming']);
    assert.equal(seen[from]!.fds, 1, 'a descriptor came with getfd');
    assert.equal(seen[from + 1]!.read, 'QEVM-stream-END', 'QEMU read the stream from its first byte after the token');
    await until(() => source.received().length > 0, 'the acceptance');
    assert.deepEqual([...source.received()], [0x01], 'one byte of acceptance');
    await silent.ended;
    assert.equal(silent.received().length, 0, 'the silent stranger is closed once the move\'s connection came');
    assert.equal(await refusedConnection(port.port), 'ECONNREFUSED', 'the port is closed after the handover');
    source.socket.destroy();
  } finally {
    port.close();
  }
});

test('a connection silent past the wait is closed and the port goes on listening; a flood of waiting connections does not keep the move\'s own out', async () => {
  const secret = token();
  // what the agent logs of the closed connections: the first few one by one, then a count
  const logged: Array<{ msg: string; why?: string; refused?: number; test?: number }> = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    for (const line of String(chunk).split('\n').filter(Boolean)) {
      try {
        const l = JSON.parse(line) as { msg: string; test?: number };
        if (l.test === 2) logged.push(l);
      } catch {
        /* not a log line */
      }
    }
    return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
  }) as typeof process.stderr.write;
  // a port whose wait is short: the silent connection is closed on time and the port listens on
  const quick = await acceptOneForQemu(qmpSocket, '127.0.0.1', 'migration-in', INCOMING, { context: { test: 2, port: 'quick' }, token: token(), tokenWaitMs: 300 });
  // a port whose wait is long: only the flood's own size pushes its connections out (a loaded
  // host may take longer than a short wait to open 72 connections)
  const port = await acceptOneForQemu(qmpSocket, '127.0.0.1', 'migration-in', INCOMING, { context: { test: 2 }, token: secret, tokenWaitMs: 60_000 });
  try {
    const silent = await client(quick.port);
    const t0 = Date.now();
    await silent.ended;
    assert.ok(Date.now() - t0 >= 250, `closed after the wait (${Date.now() - t0} ms)`);
    const again = await client(quick.port);
    again.socket.destroy();
    await until(() => logged.filter((l) => l.why).length >= 2, 'both closed connections logged');
    assert.deepEqual(logged.map((l) => l.why), ['no token in time', 'closed before its token'], 'the port listened on after the first');
    logged.length = 0;

    const flood = await Promise.all(Array.from({ length: MAX_PENDING + 8 }, () => client(port.port)));
    const from = seen.length;
    const source = await client(port.port);
    source.socket.write(Buffer.concat([Buffer.from(secret, 'hex'), Buffer.from('END')]));
    await until(() => seen.length >= from + 2, 'the handover past the flood');
    assert.equal(seen[from + 1]!.read, 'END');
    assert.deepEqual([...source.received()], [0x01]);
    await Promise.all(flood.map((f) => f.ended));
    source.socket.destroy();
    // the 9 oldest of the flood pushed out by later arrivals (the source's among them): 5 lines, then the count
    await until(() => logged.some((l) => l.refused !== undefined), 'the count of closed connections');
    assert.deepEqual(logged.filter((l) => l.why).map((l) => l.why), Array(5).fill('too many connections waiting'));
    assert.equal(logged.find((l) => l.refused !== undefined)?.refused, 9);
  } finally {
    process.stderr.write = write;
    quick.close();
    port.close();
  }
});

test('a connection that comes long after the port opened still gets its whole wait (the wait starts at its arrival)', async () => {
  const secret = token();
  const port = await acceptOneForQemu(qmpSocket, '127.0.0.1', 'migration-in', INCOMING, { context: { test: 5 }, token: secret, tokenWaitMs: 400 });
  try {
    // the source comes after a disk mirror's time, and its token in a write of its own
    await new Promise((r) => setTimeout(r, 900));
    const from = seen.length;
    const source = await client(port.port);
    await new Promise((r) => setTimeout(r, 100));
    source.socket.write(Buffer.concat([Buffer.from(secret, 'hex'), Buffer.from('END')]));
    await until(() => seen.length >= from + 2, 'the handover');
    assert.deepEqual([...source.received()], [0x01]);
    source.socket.destroy();
  } finally {
    port.close();
  }
});

test('without a token the first connection is handed over as QEMU\'s own listener took it; close() ends the wait', async () => {
  const port = await acceptOneForQemu(qmpSocket, '127.0.0.1', 'migration-in', INCOMING, { context: { test: 3 } });
  const from = seen.length;
  const first = await client(port.port);
  first.socket.write('QEVM-END');
  await until(() => seen.length >= from + 2, 'the handover');
  assert.equal(seen[from + 1]!.read, 'QEVM-END', 'not a byte read before QEMU');
  assert.equal(first.received().length, 0, 'no acceptance byte without a token');
  assert.equal(await refusedConnection(port.port), 'ECONNREFUSED');
  first.socket.destroy();
  port.close();

  const waiting = await acceptOneForQemu(qmpSocket, '127.0.0.1', 'migration-in', INCOMING, { context: { test: 3 }, token: token() });
  waiting.close();
  await until(() => false, 'settle', 200).catch(() => undefined);
  assert.equal(await refusedConnection(waiting.port), 'ECONNREFUSED', 'closed: nobody waits any more');
});

test('the source sends the token first and hands QEMU the connection only once the destination accepted it', async () => {
  const secret = token();
  const answers: Array<Buffer | 'close'> = [Buffer.of(0x01), Buffer.of(0x00), 'close'];
  const received: Buffer[] = [];
  const server = net.createServer((s) => {
    const answer = answers.shift()!;
    const chunks: Buffer[] = [];
    let answered = false;
    s.on('data', (b: Buffer) => {
      chunks.push(b);
      if (!answered && Buffer.concat(chunks).length >= 32) {
        answered = true;
        if (answer === 'close') s.destroy();
        else s.write(answer);
      }
    });
    s.on('end', () => {
      received.push(Buffer.concat(chunks));
      s.end();
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  try {
    const from = seen.length;
    await connectForQemu(qmpSocket, '127.0.0.1', port, 'migration-out', { execute: 'migrate', arguments: { uri: 'fd:migration-out' } }, secret);
    await until(() => received.length >= 1, 'the stream at the destination');
    assert.equal(received[0]!.subarray(0, 32).toString('hex'), secret, 'the token first');
    assert.equal(received[0]!.subarray(32).toString(), 'QEVM-stream-END', 'then QEMU\'s stream, nothing else');
    assert.deepEqual(seen.slice(from).map((s) => s.execute), ['getfd', 'migrate']);
    for (const why of ['refused with another byte', 'closed without an answer']) {
      const before = seen.length;
      await assert.rejects(
        connectForQemu(qmpSocket, '127.0.0.1', port, 'migration-out', { execute: 'migrate', arguments: { uri: 'fd:migration-out' } }, secret),
        (e) => hasCode(e, 'Unavailable') && /did not accept this migration's token/.test(String(e)),
        why,
      );
      assert.equal(seen.length, before, `QEMU was handed nothing (${why})`);
    }
  } finally {
    server.close();
  }
});
