import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  DnsClass,
  DnsFormatError,
  DnsType,
  MAX_UDP_PAYLOAD,
  Rcode,
  buildError,
  buildQuery,
  buildResponse,
  formatIPv6,
  ipToBytes,
  nameToLabels,
  parseMessage,
  parseQuery,
  type DnsAnswer,
  type DnsFormatReason,
} from './dns-message.js';

/** A raw message from a header and hand-written body bytes. */
function raw(header: { id?: number; flags?: number; qd?: number; an?: number }, body: number[]): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(header.id ?? 0xabcd, 0);
  h.writeUInt16BE(header.flags ?? 0x0100, 2);
  h.writeUInt16BE(header.qd ?? 1, 4);
  h.writeUInt16BE(header.an ?? 0, 6);
  return Buffer.concat([h, Buffer.from(body)]);
}
const label = (s: string) => [s.length, ...Buffer.from(s, 'latin1')];

function formatError(fn: () => unknown, reason: DnsFormatReason, id?: number, note?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof DnsFormatError, `expected DnsFormatError, got ${String(e)}`);
    assert.equal(e.reason, reason, note);
    assert.equal(e.rcode, Rcode.FORMERR);
    if (id !== undefined) assert.equal(e.id, id);
    return true;
  });
}

test('parseQuery reads id, RD and one question, lowercased without the trailing dot', () => {
  const q = parseQuery(raw({ id: 0x1234, flags: 0x0100 }, [...label('WeB'), ...label('Nimbus'), 0, 0, 1, 0, 1]));
  assert.equal(q.id, 0x1234);
  assert.equal(q.recursionDesired, true);
  assert.equal(q.opcode, 0);
  assert.deepEqual(q.questions, [{ name: 'web.nimbus', askedName: 'WeB.Nimbus', type: DnsType.A, class: DnsClass.IN }]);

  const noRd = parseQuery(raw({ flags: 0 }, [0, 0, 2, 0, 1]));
  assert.equal(noRd.recursionDesired, false);
  assert.equal(noRd.questions[0]?.name, '', 'the root is the empty name');
  assert.equal(noRd.questions[0]?.type, DnsType.NS);
});

test('buildQuery and parseQuery round-trip, escapes included', () => {
  for (const name of ['web', 'a.b.c', 'x\\.y.z', 'back\\\\slash', 'nul\\000byte.sp\\032ace', 'a'.repeat(63) + '.b']) {
    const q = parseQuery(buildQuery(7, name, DnsType.AAAA));
    assert.equal(q.questions[0]?.name, name);
    assert.equal(q.questions[0]?.type, DnsType.AAAA);
  }
  assert.equal(parseQuery(buildQuery(1, 'web.', DnsType.A)).questions[0]?.name, 'web', 'trailing dot accepted');
  assert.deepEqual(nameToLabels('a\\.'), [Buffer.from('a.')], 'an escaped dot is not the trailing dot');
  assert.deepEqual(nameToLabels('a\\\\.'), [Buffer.from('a\\')], 'an escaped backslash before the trailing dot');
  for (const bad of ['a..b', '.a', 'a'.repeat(64), 'caf\u00e9', 'a b', (('a'.repeat(63) + '.').repeat(4) + 'a')]) {
    assert.throws(() => nameToLabels(bad), RangeError, bad);
  }
});

test('buildResponse → parseMessage round-trips A, AAAA and PTR answers and the header flags', () => {
  const query = parseQuery(raw({ id: 0x0f0f, flags: 0x0100 }, [...label('Web'), 0, 0, 255, 0, 1]));
  const answers: DnsAnswer[] = [
    { name: 'web', type: DnsType.A, ttl: 10, data: '172.17.0.5' },
    { name: 'web', type: DnsType.AAAA, ttl: 20, data: '2001:db8::5' },
    { name: 'web', type: DnsType.PTR, ttl: 30, data: 'web.nimbus' },
  ];
  const buf = buildResponse(query, { rcode: Rcode.NOERROR, answers, authoritative: true, recursionAvailable: false });
  const m = parseMessage(buf);
  assert.equal(m.id, 0x0f0f);
  assert.equal(m.response, true);
  assert.equal(m.authoritative, true);
  assert.equal(m.recursionDesired, true, 'RD copied');
  assert.equal(m.recursionAvailable, false);
  assert.equal(m.truncated, false);
  assert.equal(m.rcode, Rcode.NOERROR);
  assert.deepEqual(m.questions, [{ name: 'web', askedName: 'Web', type: 255, class: 1 }], 'question echoed with its case');
  assert.deepEqual(
    m.answers.map((a) => [a.name, a.type, a.class, a.ttl, a.data]),
    [
      ['web', 1, 1, 10, '172.17.0.5'],
      ['web', 28, 1, 20, '2001:db8::5'],
      ['web', 12, 1, 30, 'web.nimbus'],
    ],
  );
  // Owner names compress to a pointer at the question (2 bytes + 10 fixed per record), then the rdata.
  assert.equal(buf.readUInt16BE(21), 0xc00c, 'first owner name is a pointer to the question');
  assert.equal(buf.length, 12 + 9 + (12 + 4) + (12 + 16) + (12 + 12));

  const plain = parseMessage(buildResponse(parseQuery(buildQuery(1, 'x', 1, { recursionDesired: false })), { rcode: 0, answers: [] }));
  assert.equal(plain.recursionDesired, false);
  assert.equal(plain.authoritative, false);
});

test('compression pointers in answers and record data are followed', () => {
  // Question "web.nimbus" at 12; answer owner → 12; PTR data "db" + pointer to "nimbus" at 16.
  const body = [...label('web'), ...label('nimbus'), 0, 0, 12, 0, 1];
  body.push(0xc0, 12, 0, 12, 0, 1, 0, 0, 0, 5, 0, 5, ...label('db'), 0xc0, 16);
  const m = parseMessage(raw({ flags: 0x8580, an: 1 }, body));
  assert.equal(m.answers[0]?.name, 'web.nimbus');
  assert.equal(m.answers[0]?.data, 'db.nimbus');
  assert.equal(m.answers[0]?.ttl, 5);
});

test('malformed messages are refused with a typed error and never read out of bounds', () => {
  formatError(() => parseQuery(Buffer.alloc(11)), 'short');
  formatError(() => parseQuery(raw({}, [...label('web')])), 'truncated', 0xabcd);
  formatError(() => parseQuery(raw({}, [5, 0x61, 0x62])), 'truncated');
  formatError(() => parseQuery(raw({}, [...label('web'), 0, 0, 1, 0])), 'truncated', undefined, 'class cut off');
  formatError(() => parseQuery(raw({}, [0xc0])), 'truncated', undefined, 'half a pointer');
  formatError(() => parseQuery(raw({}, [0xc0, 12, 0, 1, 0, 1])), 'pointer-loop', undefined, 'self pointer');
  formatError(() => parseQuery(raw({}, [...label('a'), 0xc0, 14, 0, 1, 0, 1])), 'pointer-loop', undefined, 'pointer forward into its own name');
  formatError(() => parseQuery(raw({}, [0xc0, 0xff, 0, 1, 0, 1])), 'pointer-range');
  formatError(() => parseQuery(raw({}, [0xff, 0xff, 0, 1, 0, 1])), 'pointer-range');
  formatError(() => parseQuery(raw({}, [0xc0, 2, 0, 1, 0, 1])), 'pointer-range', undefined, 'pointer into the header');
  formatError(() => parseQuery(raw({}, [0x40, 0, 0, 1, 0, 1])), 'label');
  formatError(() => parseQuery(raw({}, [...Array(5).fill(label('a'.repeat(63))).flat(), 0, 0, 1, 0, 1])), 'name-too-long');
  formatError(() => parseQuery(raw({ flags: 0x8180 }, [...label('web'), 0, 0, 1, 0, 1])), 'response', 0xabcd);
  formatError(() => parseQuery(raw({ qd: 0 }, [])), 'qdcount');
  formatError(() => parseQuery(raw({ qd: 2 }, [...label('a'), 0, 0, 1, 0, 1, ...label('b'), 0, 0, 1, 0, 1])), 'qdcount');

  // A loop through two names: the question points forward at the answer's owner (offset 20), which points back at 12.
  const loop = raw({ flags: 0x8000, an: 1 }, [1, 0x61, 0xc0, 20, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]);
  formatError(() => parseMessage(loop), 'pointer-loop');
  formatError(() => parseMessage(raw({ flags: 0x8000, an: 1 }, [0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 9, 1])), 'truncated', undefined, 'rdata past the end');

  assert.equal(new DnsFormatError('short', 'x').answerable, false);
  assert.equal(new DnsFormatError('response', 'x').answerable, false);
  assert.equal(new DnsFormatError('pointer-loop', 'x').answerable, true);
});

test('random bytes and every truncation of a valid query only ever throw DnsFormatError', () => {
  const onlyFormatErrors = (buf: Buffer) => {
    for (const parse of [() => parseQuery(buf), () => parseMessage(buf), () => buildError(buf, Rcode.FORMERR)]) {
      try {
        parse();
      } catch (e) {
        assert.ok(e instanceof DnsFormatError, `unexpected ${String(e)}`);
      }
    }
  };
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 80 }), (bytes) => onlyFormatErrors(Buffer.from(bytes))),
    { numRuns: 3000 },
  );
  // Bias towards pointer bytes, where bugs hide.
  const pointerish = fc.array(fc.oneof(fc.constantFrom(0xc0, 0xc1, 12, 13, 14, 0, 1, 3, 0x3f), fc.integer({ min: 0, max: 255 })), { maxLength: 60 });
  fc.assert(fc.property(fc.integer({ min: 0, max: 3 }), pointerish, (an, body) => onlyFormatErrors(raw({ flags: an ? 0x8000 : 0, an }, body))), {
    numRuns: 3000,
  });
  const valid = buildQuery(9, 'a.long.name.example.com', DnsType.A);
  for (let n = 0; n < valid.length; n++) onlyFormatErrors(valid.subarray(0, n));
});

test('buildError answers with the question when it parses, a bare header when not, nothing under 12 bytes', () => {
  const query = parseQuery(buildQuery(0x4242, 'gone.example', DnsType.A));
  const nx = parseMessage(buildError(query, Rcode.NXDOMAIN));
  assert.equal(nx.id, 0x4242);
  assert.equal(nx.rcode, Rcode.NXDOMAIN);
  assert.equal(nx.response, true);
  assert.equal(nx.recursionDesired, true);
  assert.equal(nx.questions[0]?.name, 'gone.example');
  assert.equal(nx.answers.length, 0);

  for (const rcode of [Rcode.FORMERR, Rcode.SERVFAIL, Rcode.NOTIMP, Rcode.REFUSED]) {
    assert.equal(parseMessage(buildError(buildQuery(1, 'x', 1), rcode) ?? Buffer.alloc(0)).rcode, rcode);
  }

  const broken = raw({ id: 0x7777 }, [0xc0, 12, 0, 1, 0, 1]);
  const reply = buildError(broken, Rcode.FORMERR);
  assert.ok(reply);
  assert.equal(reply.length, 12);
  const m = parseMessage(reply);
  assert.equal(m.id, 0x7777);
  assert.equal(m.rcode, Rcode.FORMERR);
  assert.equal(m.response, true);
  assert.equal(m.counts.questions, 0);

  assert.equal(buildError(Buffer.alloc(11), Rcode.FORMERR), undefined);
  assert.throws(() => buildError(query, 16), RangeError, 'extended rcodes need EDNS');
});

test('answers that do not fit in 512 bytes are dropped and TC is set', () => {
  const query = parseQuery(buildQuery(3, 'many', DnsType.A));
  const answers: DnsAnswer[] = Array.from({ length: 100 }, (_, i) => ({ name: 'many', type: DnsType.A, ttl: 1, data: `10.0.${i >> 8}.${i & 255}` }));
  const buf = buildResponse(query, { rcode: 0, answers });
  assert.ok(buf.length <= MAX_UDP_PAYLOAD, `${buf.length} bytes`);
  const m = parseMessage(buf);
  assert.equal(m.truncated, true);
  // 12 header + 10 question, then 16 bytes per compressed A record.
  assert.equal(m.answers.length, Math.floor((512 - 22) / 16));
  assert.deepEqual(
    m.answers.map((a) => a.data),
    answers.slice(0, m.answers.length).map((a) => a.data),
  );

  const fits = parseMessage(buildResponse(query, { rcode: 0, answers: answers.slice(0, 30) }));
  assert.equal(fits.truncated, false);
  assert.equal(fits.answers.length, 30);
});

test('invalid answer data is refused', () => {
  const query = parseQuery(buildQuery(3, 'x', DnsType.A));
  const bad: DnsAnswer[] = [
    { name: 'x', type: DnsType.A, ttl: 1, data: '1.2.3' },
    { name: 'x', type: DnsType.A, ttl: 1, data: '1.2.3.256' },
    { name: 'x', type: DnsType.A, ttl: 1, data: '01.2.3.4' },
    { name: 'x', type: DnsType.A, ttl: 1, data: '::1' },
    { name: 'x', type: DnsType.AAAA, ttl: 1, data: '1.2.3.4' },
    { name: 'x', type: DnsType.AAAA, ttl: 1, data: '1:::2' },
    { name: 'x', type: DnsType.AAAA, ttl: 1, data: 'fe80::1%eth0' },
    { name: 'x', type: DnsType.PTR, ttl: 1, data: 'a'.repeat(64) },
    { name: 'x', type: DnsType.A, ttl: -1, data: '1.2.3.4' },
  ];
  for (const a of bad) assert.throws(() => buildResponse(query, { rcode: 0, answers: [a] }), RangeError, JSON.stringify(a));
});

test('IPv6 text converts to bytes and back in RFC 5952 form', () => {
  const cases: Array<[string, string]> = [
    ['::', '::'],
    ['::1', '::1'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
    ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
    ['1:0:2:3:4:5:6:7', '1:0:2:3:4:5:6:7'],
    ['::ffff:1.2.3.4', '::ffff:102:304'],
    ['fe80::', 'fe80::'],
  ];
  for (const [input, expected] of cases) {
    const bytes = ipToBytes(input);
    assert.ok(bytes, input);
    assert.equal(bytes.length, 16);
    assert.equal(formatIPv6(bytes), expected, input);
  }
  for (const bad of ['1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', '::1::', '1.2.3.4::', 'g::1', '12345::']) assert.equal(ipToBytes(bad), undefined, bad);
});
