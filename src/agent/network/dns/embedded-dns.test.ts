import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { hasCode } from '../../../core/errors.js';
import { setLogLevel } from '../../../core/log.js';
import { DnsType, Rcode, buildQuery, buildResponse, parseMessage, parseQuery, type DnsMessage } from './dns-message.js';
import { EmbeddedDns, type DnsZone, type ListenOptions } from './embedded-dns.js';

const LOOPBACK = '127.0.0.1';
// Listening/closing is logged at info for every test; keep the output to what goes wrong.
setLogLevel('error');

const zoneOf = (names: Record<string, string[]>, reverse: Record<string, string> = {}): DnsZone => ({
  resolve: (name) => names[name],
  reverse: (ip) => reverse[ip],
});

/** A server on 127.0.0.1 with an ephemeral port, closed when the test ends however it ends. */
async function start(t: TestContext, opts: Partial<ListenOptions> & { zone: DnsZone }, dns = new EmbeddedDns()): Promise<{ dns: EmbeddedDns; port: number }> {
  t.after(() => dns.closeAll());
  const { port } = await dns.listen({ address: LOOPBACK, port: 0, ...opts });
  return { dns, port };
}

/** Sends raw bytes from a fresh loopback socket; resolves to the first reply, or undefined after `waitMs`. */
async function exchange(port: number, packet: Buffer, waitMs = 1000, address = LOOPBACK): Promise<Buffer | undefined> {
  const socket = dgram.createSocket('udp4');
  try {
    await new Promise<void>((resolve) => socket.bind(0, LOOPBACK, resolve));
    const reply = new Promise<Buffer | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), waitMs);
      socket.once('message', (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
    socket.send(packet, port, address);
    return await reply;
  } finally {
    socket.close();
  }
}

async function ask(port: number, name: string, type: number = DnsType.A, id = 0x2b2b, address = LOOPBACK): Promise<DnsMessage> {
  const reply = await exchange(port, buildQuery(id, name, type), 3000, address);
  assert.ok(reply, `no reply for ${name}`);
  const m = parseMessage(reply);
  assert.equal(m.id, id, 'reply carries the id of the query');
  assert.equal(m.response, true);
  return m;
}

/** A fake upstream resolver on loopback; `answer` decides per query (undefined = stay silent). */
async function fakeUpstream(t: TestContext, answer: (query: ReturnType<typeof parseQuery>, raw: Buffer) => Buffer | Buffer[] | undefined) {
  const socket = dgram.createSocket('udp4');
  t.after(() => new Promise<void>((resolve) => socket.close(() => resolve())));
  const seen: Buffer[] = [];
  socket.on('message', (msg, from) => {
    seen.push(msg);
    const out = answer(parseQuery(msg), msg);
    for (const b of out === undefined ? [] : Array.isArray(out) ? out : [out]) socket.send(b, from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, LOOPBACK, resolve));
  return { address: `${LOOPBACK}:${socket.address().port}`, seen };
}

test('A for a known name is answered authoritatively; AAAA and other types get NOERROR with no answers', async (t) => {
  const { port } = await start(t, { zone: zoneOf({ web: ['172.18.0.2', '172.18.0.3'] }) });
  const a = await ask(port, 'Web', DnsType.A, 0x0101);
  assert.equal(a.rcode, Rcode.NOERROR);
  assert.equal(a.authoritative, true);
  assert.equal(a.recursionDesired, true);
  assert.deepEqual(
    a.answers.map((r) => [r.name, r.type, r.ttl, r.data]),
    [
      ['web', DnsType.A, 10, '172.18.0.2'],
      ['web', DnsType.A, 10, '172.18.0.3'],
    ],
  );
  assert.equal(a.questions[0]?.askedName, 'Web', 'question echoed as asked');

  for (const type of [DnsType.AAAA, DnsType.MX, DnsType.TXT]) {
    const m = await ask(port, 'web', type);
    assert.equal(m.rcode, Rcode.NOERROR, `type ${type}`);
    assert.equal(m.answers.length, 0, `type ${type}`);
  }
});

test('unknown names are NXDOMAIN when the network has no upstreams', async (t) => {
  const { port } = await start(t, { zone: zoneOf({ web: ['172.18.0.2'] }) });
  const m = await ask(port, 'example.com');
  assert.equal(m.rcode, Rcode.NXDOMAIN);
  assert.equal(m.answers.length, 0);
  assert.equal(m.questions[0]?.name, 'example.com');
  assert.equal(m.recursionAvailable, false);
});

test('the search domain is stripped before resolve(); unknown names under it never go upstream', async (t) => {
  const upstream = await fakeUpstream(t, (q) => buildResponse(q, { rcode: 0, answers: [] }));
  const asked: string[] = [];
  const zone: DnsZone = {
    resolve: (name) => {
      asked.push(name);
      return name === 'web' ? ['172.18.0.2'] : undefined;
    },
  };
  const { port } = await start(t, { zone, domain: 'Nimbus.', upstreams: [upstream.address] });
  const m = await ask(port, 'WEB.nimbus.');
  assert.deepEqual(m.answers.map((r) => [r.name, r.data]), [['web.nimbus', '172.18.0.2']]);
  assert.deepEqual(asked, ['web.nimbus', 'web'], 'full name first, then the stripped form');

  assert.equal((await ask(port, 'ghost.nimbus')).rcode, Rcode.NXDOMAIN);
  const apex = await ask(port, 'nimbus');
  assert.equal(apex.rcode, Rcode.NOERROR, 'the domain itself exists (NODATA), or RFC 8020 caches would deny all of it');
  assert.equal(upstream.seen.length, 0, 'names in our domain are not forwarded');
});

test('PTR for an address the zone reverses; other reverse names are not ours', async (t) => {
  const { port } = await start(t, { zone: zoneOf({ web: ['172.18.0.2'] }, { '172.18.0.2': 'web.nimbus' }) });
  const m = await ask(port, '2.0.18.172.in-addr.arpa', DnsType.PTR);
  assert.equal(m.rcode, Rcode.NOERROR);
  assert.equal(m.authoritative, true);
  assert.deepEqual(m.answers.map((r) => [r.name, r.type, r.data]), [['2.0.18.172.in-addr.arpa', DnsType.PTR, 'web.nimbus']]);

  for (const name of ['9.0.18.172.in-addr.arpa', '18.172.in-addr.arpa', '02.0.18.172.in-addr.arpa']) {
    assert.equal((await ask(port, name, DnsType.PTR)).rcode, Rcode.NXDOMAIN, name);
  }
});

test('unknown names are forwarded with a fresh id and the reply is mapped back to the client id', async (t) => {
  const upstream = await fakeUpstream(t, (q) =>
    buildResponse(q, { rcode: 0, answers: [{ name: 'example.com', type: DnsType.A, ttl: 300, data: '93.184.216.34' }], recursionAvailable: true }),
  );
  const { port } = await start(t, { zone: zoneOf({}), upstreams: [upstream.address] });
  const m = await ask(port, 'example.com', DnsType.A, 0x5150);
  assert.equal(m.rcode, Rcode.NOERROR);
  assert.deepEqual(m.answers.map((r) => [r.name, r.ttl, r.data]), [['example.com', 300, '93.184.216.34']]);
  assert.equal(m.recursionAvailable, true);
  assert.equal(upstream.seen.length, 1);
  const forwarded = upstream.seen[0] as Buffer;
  assert.deepEqual(forwarded.subarray(2), buildQuery(0x5150, 'example.com', DnsType.A).subarray(2), 'the original bytes, id aside');
});

test('forwarding ignores replies that do not match and moves to the next upstream on silence or SERVFAIL', async (t) => {
  const silent = await fakeUpstream(t, () => undefined);
  const failing = await fakeUpstream(t, (q) => buildResponse(q, { rcode: Rcode.SERVFAIL, answers: [] }));
  const good = await fakeUpstream(t, (q, raw) => {
    const right = buildResponse(q, { rcode: 0, answers: [{ name: q.questions[0]?.name ?? '', type: DnsType.A, ttl: 5, data: '10.9.9.9' }] });
    const wrongId = Buffer.from(right);
    wrongId.writeUInt16BE((raw.readUInt16BE(0) + 1) & 0xffff, 0);
    const wrongQuestion = buildResponse({ ...q, questions: [{ name: 'evil.example', type: 1, class: 1 }] }, { rcode: 0, answers: [{ name: 'evil.example', type: 1, ttl: 5, data: '6.6.6.6' }] });
    return [wrongId, wrongQuestion, right];
  });
  const { port } = await start(t, { zone: zoneOf({}), upstreams: [silent.address, failing.address, good.address], forwardTimeoutMs: 150 });
  const started = Date.now();
  const m = await ask(port, 'example.org', DnsType.A, 0x0a0a);
  assert.deepEqual(m.answers.map((r) => r.data), ['10.9.9.9']);
  assert.ok(Date.now() - started >= 140, 'waited for the silent upstream');
  assert.deepEqual([silent.seen.length, failing.seen.length, good.seen.length], [1, 1, 1]);
});

test('SERVFAIL when no upstream answers', async (t) => {
  const silent = await fakeUpstream(t, () => undefined);
  const { port } = await start(t, { zone: zoneOf({}), upstreams: [silent.address, silent.address], forwardTimeoutMs: 100 });
  const m = await ask(port, 'example.net', DnsType.A, 0x7e57);
  assert.equal(m.rcode, Rcode.SERVFAIL);
  assert.equal(m.questions[0]?.name, 'example.net');
  assert.equal(silent.seen.length, 2, 'each upstream tried once');
});

test('forwarded queries beyond the in-flight limit are dropped, retransmissions are not forwarded twice', async (t) => {
  const silent = await fakeUpstream(t, () => undefined);
  const { port } = await start(t, { zone: zoneOf({}), upstreams: [silent.address], forwardTimeoutMs: 300 }, new EmbeddedDns({ maxInflightForwards: 2 }));
  // One client socket sending the same query twice, as a stub resolver retrying would.
  const client = dgram.createSocket('udp4');
  t.after(() => client.close());
  await new Promise<void>((resolve) => client.bind(0, LOOPBACK, resolve));
  const replies: Buffer[] = [];
  client.on('message', (msg) => replies.push(msg));
  const query = buildQuery(1, 'one.example', DnsType.A);
  client.send(query, port, LOOPBACK);
  await new Promise((r) => setTimeout(r, 30));
  client.send(query, port, LOOPBACK);
  await new Promise((r) => setTimeout(r, 30));
  const second = exchange(port, buildQuery(2, 'two.example', DnsType.A), 2000);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(await exchange(port, buildQuery(3, 'three.example', DnsType.A), 150), undefined, 'over the limit: dropped');

  const secondReply = await second;
  assert.ok(secondReply);
  assert.equal(parseMessage(secondReply).rcode, Rcode.SERVFAIL);
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(
    silent.seen.map((b) => parseQuery(b).questions[0]?.name),
    ['one.example', 'two.example'],
    'the retransmission and the query over the limit were not forwarded',
  );
  assert.equal(replies.length, 1, 'one answer for the query and its retransmission');
  assert.equal(parseMessage(replies[0] as Buffer).rcode, Rcode.SERVFAIL);
});

test('many addresses: the reply stays within 512 bytes and sets TC', async (t) => {
  const addresses = Array.from({ length: 60 }, (_, i) => `10.1.0.${i + 1}`);
  const { port } = await start(t, { zone: zoneOf({ busy: addresses }) });
  const reply = await exchange(port, buildQuery(9, 'busy', DnsType.A));
  assert.ok(reply);
  assert.ok(reply.length <= 512);
  const m = parseMessage(reply);
  assert.equal(m.truncated, true);
  assert.ok(m.answers.length > 0 && m.answers.length < addresses.length);
  assert.deepEqual(m.answers.map((r) => r.data), addresses.slice(0, m.answers.length));
});

test('malformed packets get FORMERR or no answer and the server keeps serving', async (t) => {
  const { port } = await start(t, { zone: zoneOf({ web: ['172.18.0.2'] }) });
  const header = (id: number, flags: number, qd: number) => {
    const h = Buffer.alloc(12);
    h.writeUInt16BE(id, 0);
    h.writeUInt16BE(flags, 2);
    h.writeUInt16BE(qd, 4);
    return h;
  };
  assert.equal(await exchange(port, Buffer.from([1, 2, 3]), 200), undefined, 'shorter than a header');
  assert.equal(await exchange(port, Buffer.concat([header(5, 0x8180, 1), buildQuery(0, 'web', 1).subarray(12)]), 200), undefined, 'responses are never answered');

  const cases: Array<[string, Buffer]> = [
    ['truncated', Buffer.concat([header(0x1111, 0x0100, 1), Buffer.from([3, 0x77, 0x65])])],
    ['pointer loop', Buffer.concat([header(0x2222, 0x0100, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])])],
    ['pointer out of range', Buffer.concat([header(0x3333, 0x0100, 1), Buffer.from([0xc3, 0xff, 0, 1, 0, 1])])],
    ['two questions', Buffer.concat([header(0x4444, 0x0100, 2), buildQuery(0, 'web', 1).subarray(12)])],
  ];
  for (const [what, packet] of cases) {
    const reply = await exchange(port, packet);
    assert.ok(reply, what);
    const m = parseMessage(reply);
    assert.equal(m.rcode, Rcode.FORMERR, what);
    assert.equal(m.id, packet.readUInt16BE(0), what);
  }
  const notify = buildQuery(0x5555, 'web', 1);
  notify.writeUInt16BE(0x2000 | 0x0100, 2); // opcode 4 (NOTIFY)
  const notimp = await exchange(port, notify);
  assert.ok(notimp);
  assert.equal(parseMessage(notimp).rcode, Rcode.NOTIMP);

  assert.deepEqual((await ask(port, 'web')).answers.map((r) => r.data), ['172.18.0.2'], 'still serving');
});

test('a zone that throws yields SERVFAIL, not a crash', async (t) => {
  const { port } = await start(t, {
    zone: {
      resolve: () => {
        throw new Error('store unavailable');
      },
      reverse: () => 'not a valid..name',
    },
  });
  assert.equal((await ask(port, 'web')).rcode, Rcode.SERVFAIL);
  assert.equal((await ask(port, '1.0.0.127.in-addr.arpa', DnsType.PTR)).rcode, Rcode.SERVFAIL);
});

test('listening again on the same address and port swaps the zone without rebinding', async (t) => {
  const dns = new EmbeddedDns();
  const { port } = await start(t, { zone: zoneOf({ web: ['172.18.0.2'] }) }, dns);
  assert.deepEqual((await ask(port, 'web')).answers.map((r) => r.data), ['172.18.0.2']);

  const again = await dns.listen({ address: LOOPBACK, port, zone: zoneOf({ web: ['172.18.0.9'], db: ['172.18.0.3'] }), ttl: 60 });
  assert.equal(again.port, port);
  assert.deepEqual(dns.listening(), [{ address: LOOPBACK, port }]);
  const m = await ask(port, 'web');
  assert.deepEqual(m.answers.map((r) => [r.data, r.ttl]), [['172.18.0.9', 60]]);
  assert.deepEqual((await ask(port, 'db')).answers.map((r) => r.data), ['172.18.0.3']);

  // Concurrent first listens on one endpoint bind once.
  const free = await freePort();
  const both = await Promise.all([
    dns.listen({ address: LOOPBACK, port: free, zone: zoneOf({}) }),
    dns.listen({ address: LOOPBACK, port: free, zone: zoneOf({ late: ['10.0.0.1'] }) }),
  ]);
  assert.deepEqual(both[0], both[1]);
  assert.deepEqual((await ask(free, 'late')).answers.map((r) => r.data), ['10.0.0.1']);
});

test('close() frees the port, is idempotent, and cancels forwards in flight', async (t) => {
  const upstream = await fakeUpstream(t, (q) =>
    q.questions[0]?.name === 'slow.example' ? undefined : buildResponse(q, { rcode: 0, answers: [{ name: 'fast.example', type: 1, ttl: 1, data: '10.2.2.2' }] }),
  );
  // With room for one forward, the cancelled one must have given its slot back.
  const dns = new EmbeddedDns({ maxInflightForwards: 1 });
  const { port } = await start(t, { zone: zoneOf({}), upstreams: [upstream.address], forwardTimeoutMs: 5000 }, dns);
  void exchange(port, buildQuery(1, 'slow.example', DnsType.A), 100);
  await new Promise((r) => setTimeout(r, 50));
  await dns.close(LOOPBACK, port);
  await dns.close(LOOPBACK, port);
  assert.deepEqual(dns.listening(), []);

  const probe = dgram.createSocket('udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject);
      probe.bind(port, LOOPBACK, resolve);
    });
  } finally {
    probe.close();
  }
  const back = await dns.listen({ address: LOOPBACK, port, zone: zoneOf({ web: ['172.18.0.2'] }), upstreams: [upstream.address] });
  assert.equal(back.port, port);
  assert.equal((await ask(port, 'web')).rcode, Rcode.NOERROR);
  assert.deepEqual((await ask(port, 'fast.example')).answers.map((r) => r.data), ['10.2.2.2']);
});

test('listen rejects clearly when the address cannot be bound or the options are invalid', async (t) => {
  const holder = dgram.createSocket('udp4');
  t.after(() => holder.close());
  await new Promise<void>((resolve) => holder.bind(0, LOOPBACK, resolve));
  const taken = holder.address().port;
  const dns = new EmbeddedDns();
  t.after(() => dns.closeAll());

  await assert.rejects(dns.listen({ address: LOOPBACK, port: taken, zone: zoneOf({}) }), (e: unknown) => {
    assert.ok(hasCode(e, 'Unavailable'));
    assert.match((e as Error).message, new RegExp(`cannot bind 127\\.0\\.0\\.1:${taken}`));
    return true;
  });
  assert.deepEqual(dns.listening(), []);
  await assert.rejects(dns.listen({ address: 'gateway', port: 0, zone: zoneOf({}) }), (e: unknown) => hasCode(e, 'InvalidArgument'));
  await assert.rejects(dns.listen({ address: LOOPBACK, port: 0, zone: zoneOf({}), upstreams: ['8.8.8.8:99999'] }), (e: unknown) => hasCode(e, 'InvalidArgument'));
  await assert.rejects(dns.listen({ address: LOOPBACK, port: 0, zone: zoneOf({}), ttl: -1 }), (e: unknown) => hasCode(e, 'InvalidArgument'));
});

test('two networks on two loopback addresses and one port answer from their own zones', async (t) => {
  const dns = new EmbeddedDns();
  t.after(() => dns.closeAll());
  const port = await freePort();
  await dns.listen({ address: LOOPBACK, port, zone: zoneOf({ web: ['172.18.0.2'] }) });
  try {
    await dns.listen({ address: '127.0.0.2', port, zone: zoneOf({ web: ['172.19.0.2'] }) });
  } catch (e) {
    t.skip(`127.0.0.2 is not bindable here: ${(e as Error).message}`);
    return;
  }
  assert.deepEqual((await ask(port, 'web', DnsType.A, 1, LOOPBACK)).answers.map((r) => r.data), ['172.18.0.2']);
  assert.deepEqual((await ask(port, 'web', DnsType.A, 2, '127.0.0.2')).answers.map((r) => r.data), ['172.19.0.2']);
  assert.equal(dns.listening().length, 2);
});

/** A UDP port that was free a moment ago on 127.0.0.1. */
async function freePort(): Promise<number> {
  const s = dgram.createSocket('udp4');
  s.bind(0, LOOPBACK);
  await once(s, 'listening');
  const { port } = s.address();
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}
