import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { callerAddress } from './caller-address.js';

const req = (peer: string | undefined, xff?: string) => ({ socket: { remoteAddress: peer }, headers: xff === undefined ? {} : { 'x-forwarded-for': xff } }) as unknown as IncomingMessage;

test('callerAddress: the peer, unless it is a trusted proxy: then the nearest untrusted X-Forwarded-For hop', () => {
  assert.equal(callerAddress(req(undefined), []), 'local', 'the unix socket');
  assert.equal(callerAddress(req('192.0.2.7', '198.51.100.1'), []), '192.0.2.7', 'no proxy trusted: the header is not believed');
  assert.equal(callerAddress(req('::ffff:192.0.2.7'), []), '192.0.2.7');
  const proxies = ['10.0.0.2', '10.0.0.3'];
  assert.equal(callerAddress(req('10.0.0.2', '198.51.100.1'), proxies), '198.51.100.1');
  // a client may write anything to the left; only what the trusted hops appended is believed
  assert.equal(callerAddress(req('10.0.0.2', '203.0.113.9, 198.51.100.1, 10.0.0.3'), proxies), '198.51.100.1');
  assert.equal(callerAddress(req('10.0.0.2', 'garbage, 198.51.100.1'), proxies), '198.51.100.1');
  assert.equal(callerAddress(req('10.0.0.2', '198.51.100.1, garbage'), proxies), '10.0.0.2', 'a hop that is no address: the proxy itself');
  assert.equal(callerAddress(req('10.0.0.2'), proxies), '10.0.0.2', 'no header: the proxy');
  assert.equal(callerAddress(req('192.0.2.7', '198.51.100.1'), proxies), '192.0.2.7', 'a peer that is no trusted proxy');
});
