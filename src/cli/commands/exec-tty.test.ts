import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { holdUntilRead } from './exec-tty.js';

/**
 * A server whose output is ready at the handshake (conmon's exec relay) sends it in the same
 * packets as the 101: ws emits those messages on the tick after 'open', before a caller awaiting
 * the open could listen. The held socket keeps them, and a close, for whoever reads it.
 */
test('messages and a close that come with the handshake are held until the reader takes over', async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  wss.on('connection', (peer) => {
    peer.send(Buffer.from('31 99\r\n'), { binary: true });
    peer.send(Buffer.from('ready\r\n'), { binary: true });
    peer.send(JSON.stringify({ exitCode: 5 }));
    peer.close(1000);
  });
  try {
    const { port } = wss.address() as { port: number };
    for (let i = 0; i < 20; i++) {
      const socket = await holdUntilRead(new WebSocket(`ws://127.0.0.1:${port}/`), 'test');
      // what a caller does after its await: a tick later, and more; on a loaded host the rest of
      // the server's frames may take longer than that to arrive (the test is that none is lost)
      await new Promise((resolve) => setTimeout(resolve, 20));
      for (let waited = 0; !socket.closed && waited < 5000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10));
      const seen = socket.early.map(([data, binary]) => `${binary ? 'b' : 't'}:${String(data)}`);
      assert.deepEqual(seen, ['b:31 99\r\n', 'b:ready\r\n', 't:{"exitCode":5}'], `round ${i}`);
      assert.equal(socket.closed, true, `round ${i}`);
      socket.release();
      assert.equal(socket.ws.listenerCount('message'), 0);
    }
  } finally {
    await new Promise((resolve) => wss.close(resolve));
  }
});

test('a refused handshake rejects with the server\'s message and holds nothing', async () => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, verifyClient: (_info, cb) => cb(false, 409, 'Conflict') });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  try {
    const { port } = wss.address() as { port: number };
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    await assert.rejects(holdUntilRead(ws, 'test'), (e: Error & { code?: string }) => e.code === 'Conflict');
    assert.equal(ws.listenerCount('message'), 0);
  } finally {
    await new Promise((resolve) => wss.close(resolve));
  }
});
