/**
 * A small RFC 1035 codec for the embedded DNS server: pure functions, no I/O.
 * It reads queries (and, for forwarding and tests, the header, question and
 * answer sections of replies) and writes the few answers the server gives.
 *
 * Names are in presentation form without the trailing dot: labels joined by
 * ".", with "." and "\" inside a label and bytes outside printable ASCII
 * escaped as in zone files ("\.", "\\", "\032"), so every wire name
 * round-trips. Name comparison in DNS is ASCII case-insensitive only, so only
 * A-Z are lowercased.
 */

export const DnsType = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, OPT: 41, ANY: 255 } as const;
export const DnsClass = { IN: 1, CH: 3, ANY: 255 } as const;
export const Rcode = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
export const Opcode = { QUERY: 0 } as const;

/** Classic DNS over UDP: without EDNS a reply may not exceed 512 bytes. */
export const MAX_UDP_PAYLOAD = 512;
const HEADER_SIZE = 12;
const MAX_NAME_WIRE = 255;
const MAX_LABEL = 63;
/** A name has at most 127 labels, so more jumps than that can only be a loop. */
const MAX_POINTER_HOPS = 127;

const FLAG_QR = 0x8000;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;

export type DnsFormatReason =
  | 'short' // fewer than 12 bytes: not even a header, nothing to answer
  | 'response' // QR=1: never answer responses, that is how reflection loops start
  | 'qdcount' // a query must ask exactly one question
  | 'truncated'
  | 'pointer-loop'
  | 'pointer-range'
  | 'label' // reserved label type (0x40/0x80)
  | 'name-too-long';

/** Malformed input. `id` is set when the header could be read, so the caller can answer FORMERR. */
export class DnsFormatError extends Error {
  readonly reason: DnsFormatReason;
  readonly id: number | undefined;
  /** What a server should answer; see `answerable` for whether it should answer at all. */
  readonly rcode = Rcode.FORMERR;
  constructor(reason: DnsFormatReason, message: string, id?: number) {
    super(message);
    this.name = 'DnsFormatError';
    this.reason = reason;
    this.id = id;
  }
  /** False for fragments without a header and for responses (answering those invites loops). */
  get answerable(): boolean {
    return this.reason !== 'short' && this.reason !== 'response';
  }
}

export interface DnsQuestion {
  /** Lowercased, no trailing dot, "" for the root. */
  name: string;
  /** The name with its original case, echoed back for clients that randomise case (DNS 0x20). */
  askedName?: string;
  type: number;
  class: number;
}

export interface DnsQuery {
  id: number;
  /** The raw 16-bit flags word. */
  flags: number;
  opcode: number;
  recursionDesired: boolean;
  questions: DnsQuestion[];
}

export interface DnsRecord {
  name: string;
  type: number;
  class: number;
  ttl: number;
  rdata: Buffer;
  /** Decoded rdata for A, AAAA (address) and PTR, CNAME, NS (name); undefined for other types. */
  data: string | undefined;
}

export interface DnsMessage extends DnsQuery {
  response: boolean;
  authoritative: boolean;
  truncated: boolean;
  recursionAvailable: boolean;
  rcode: number;
  counts: { questions: number; answers: number; authority: number; additional: number };
  answers: DnsRecord[];
}

export type AnswerType = typeof DnsType.A | typeof DnsType.AAAA | typeof DnsType.PTR;
export interface DnsAnswer {
  name: string;
  type: AnswerType;
  ttl: number;
  /** Dotted IPv4 for A, IPv6 text for AAAA, a domain name for PTR. */
  data: string;
}

export interface ResponseOptions {
  rcode: number;
  answers: DnsAnswer[];
  authoritative?: boolean;
  recursionAvailable?: boolean;
}

// ---------------------------------------------------------------- reading

class Reader {
  constructor(
    readonly buf: Buffer,
    readonly id: number | undefined,
  ) {}

  fail(reason: DnsFormatReason, message: string): never {
    throw new DnsFormatError(reason, message, this.id);
  }

  u16(at: number): number {
    if (at + 2 > this.buf.length) this.fail('truncated', `message ends inside a field at offset ${at}`);
    return this.buf.readUInt16BE(at);
  }

  u32(at: number): number {
    if (at + 4 > this.buf.length) this.fail('truncated', `message ends inside a field at offset ${at}`);
    return this.buf.readUInt32BE(at);
  }

  /**
   * Reads a possibly compressed name at `start`. Every pointer must jump to
   * before the lowest offset visited so far: jump targets strictly decrease,
   * so the walk ends even without the hop limit, and loops are refused.
   */
  name(start: number): { lower: string; asked: string; next: number } {
    const buf = this.buf;
    const lower: string[] = [];
    const asked: string[] = [];
    let pos = start;
    let lowest = start;
    let next = -1;
    let hops = 0;
    let wireLength = 1;
    for (;;) {
      const len = buf[pos];
      if (len === undefined) this.fail('truncated', `name at offset ${start} runs past the end`);
      if ((len & 0xc0) === 0xc0) {
        const low = buf[pos + 1];
        if (low === undefined) this.fail('truncated', `compression pointer at offset ${pos} is cut off`);
        const target = ((len & 0x3f) << 8) | low;
        if (target < HEADER_SIZE || target >= buf.length) this.fail('pointer-range', `compression pointer to offset ${target} is out of range`);
        if (target >= lowest || ++hops > MAX_POINTER_HOPS) this.fail('pointer-loop', `compression pointer to offset ${target} does not point backwards`);
        if (next < 0) next = pos + 2;
        pos = lowest = target;
        continue;
      }
      if (len & 0xc0) this.fail('label', `reserved label type 0x${len.toString(16)} at offset ${pos}`);
      if (len === 0) {
        if (next < 0) next = pos + 1;
        break;
      }
      if (pos + 1 + len > buf.length) this.fail('truncated', `label at offset ${pos} runs past the end`);
      wireLength += len + 1;
      if (wireLength > MAX_NAME_WIRE) this.fail('name-too-long', `name at offset ${start} is longer than 255 bytes`);
      const label = buf.subarray(pos + 1, pos + 1 + len);
      asked.push(escapeLabel(label, false));
      lower.push(escapeLabel(label, true));
      pos += 1 + len;
    }
    return { lower: lower.join('.'), asked: asked.join('.'), next };
  }
}

function escapeLabel(label: Buffer, lowercase: boolean): string {
  let out = '';
  for (const b of label) {
    if (b === 0x2e || b === 0x5c) out += '\\' + String.fromCharCode(b);
    else if (b > 0x20 && b < 0x7f) out += String.fromCharCode(lowercase && b >= 0x41 && b <= 0x5a ? b + 0x20 : b);
    else out += '\\' + b.toString().padStart(3, '0');
  }
  return out;
}

function readHeader(buf: Buffer): { reader: Reader; message: DnsMessage } {
  if (buf.length < HEADER_SIZE) throw new DnsFormatError('short', `message of ${buf.length} bytes is shorter than a DNS header`);
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  const message: DnsMessage = {
    id,
    flags,
    opcode: (flags >> 11) & 0xf,
    recursionDesired: (flags & FLAG_RD) !== 0,
    response: (flags & FLAG_QR) !== 0,
    authoritative: (flags & FLAG_AA) !== 0,
    truncated: (flags & FLAG_TC) !== 0,
    recursionAvailable: (flags & FLAG_RA) !== 0,
    rcode: flags & 0xf,
    counts: { questions: buf.readUInt16BE(4), answers: buf.readUInt16BE(6), authority: buf.readUInt16BE(8), additional: buf.readUInt16BE(10) },
    questions: [],
    answers: [],
  };
  return { reader: new Reader(buf, id), message };
}

function readQuestions(reader: Reader, count: number): { questions: DnsQuestion[]; next: number } {
  const questions: DnsQuestion[] = [];
  let pos = HEADER_SIZE;
  // Each question takes at least 5 bytes, so a lying count runs out of buffer quickly.
  for (let i = 0; i < count; i++) {
    const name = reader.name(pos);
    questions.push({ name: name.lower, askedName: name.asked, type: reader.u16(name.next), class: reader.u16(name.next + 2) });
    pos = name.next + 4;
  }
  return { questions, next: pos };
}

/**
 * Parses a query the server should answer. Throws DnsFormatError for anything
 * malformed, for responses (QR=1) and for QDCOUNT != 1; see `answerable`.
 */
export function parseQuery(buf: Buffer): DnsQuery {
  const { reader, message } = readHeader(buf);
  if (message.response) reader.fail('response', 'message is a response, not a query');
  if (message.counts.questions !== 1) reader.fail('qdcount', `query has ${message.counts.questions} questions, expected 1`);
  // Answer, authority and additional sections (e.g. an EDNS OPT record) are ignored.
  const { questions } = readQuestions(reader, 1);
  return { id: message.id, flags: message.flags, opcode: message.opcode, recursionDesired: message.recursionDesired, questions };
}

/**
 * Parses any message: header, questions and (unless `answers: false`) the
 * answer section. Authority and additional sections are only counted.
 */
export function parseMessage(buf: Buffer, opts: { answers?: boolean } = {}): DnsMessage {
  const { reader, message } = readHeader(buf);
  const { questions, next } = readQuestions(reader, message.counts.questions);
  message.questions = questions;
  if (opts.answers === false) return message;
  let pos = next;
  for (let i = 0; i < message.counts.answers; i++) {
    const owner = reader.name(pos);
    const type = reader.u16(owner.next);
    const klass = reader.u16(owner.next + 2);
    const ttl = reader.u32(owner.next + 4);
    const length = reader.u16(owner.next + 8);
    const start = owner.next + 10;
    if (start + length > buf.length) reader.fail('truncated', `record data at offset ${start} runs past the end`);
    const rdata = buf.subarray(start, start + length);
    message.answers.push({ name: owner.lower, type, class: klass, ttl, rdata, data: decodeRdata(reader, type, rdata, start) });
    pos = start + length;
  }
  return message;
}

function decodeRdata(reader: Reader, type: number, rdata: Buffer, start: number): string | undefined {
  switch (type) {
    case DnsType.A:
      if (rdata.length !== 4) reader.fail('truncated', `A record data is ${rdata.length} bytes`);
      return Array.from(rdata).join('.');
    case DnsType.AAAA:
      if (rdata.length !== 16) reader.fail('truncated', `AAAA record data is ${rdata.length} bytes`);
      return formatIPv6(rdata);
    case DnsType.PTR:
    case DnsType.CNAME:
    case DnsType.NS: {
      const name = reader.name(start);
      if (name.next > start + rdata.length) reader.fail('truncated', `name in record data at offset ${start} overruns its length`);
      return name.lower;
    }
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------- addresses

/** 4 bytes for dotted IPv4 (no leading zeros), 16 for IPv6 text, undefined otherwise. */
export function ipToBytes(ip: string): Buffer | undefined {
  return ip.includes(':') ? ipv6ToBytes(ip) : ipv4ToBytes(ip);
}

function ipv4ToBytes(ip: string): Buffer | undefined {
  const parts = ip.split('.');
  if (parts.length !== 4) return undefined;
  const out = Buffer.alloc(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i] ?? '';
    if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) return undefined;
    out[i] = Number(p);
  }
  return out;
}

function ipv6ToBytes(ip: string): Buffer | undefined {
  const groups = (text: string, allowV4Tail: boolean): number[] | undefined => {
    if (text === '') return [];
    const out: number[] = [];
    const parts = text.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i] ?? '';
      if (allowV4Tail && i === parts.length - 1 && p.includes('.')) {
        const v4 = ipv4ToBytes(p);
        if (!v4) return undefined;
        out.push(v4.readUInt16BE(0), v4.readUInt16BE(2));
      } else if (/^[0-9a-f]{1,4}$/i.test(p)) {
        out.push(parseInt(p, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const gap = ip.indexOf('::');
  let words: number[];
  if (gap < 0) {
    const all = groups(ip, true);
    if (!all || all.length !== 8) return undefined;
    words = all;
  } else {
    if (ip.indexOf('::', gap + 1) >= 0) return undefined;
    const head = groups(ip.slice(0, gap), false);
    const tail = groups(ip.slice(gap + 2), true);
    if (!head || !tail || head.length + tail.length > 7) return undefined;
    words = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  }
  const out = Buffer.alloc(16);
  words.forEach((w, i) => out.writeUInt16BE(w, i * 2));
  return out;
}

/** RFC 5952 text: lowercase, longest run (≥ 2) of zero groups compressed. */
export function formatIPv6(bytes: Buffer): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(bytes.readUInt16BE(i));
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestStart < 0) return hex.join(':');
  return hex.slice(0, bestStart).join(':') + '::' + hex.slice(bestStart + bestLen).join(':');
}

// ---------------------------------------------------------------- writing

/** Presentation form (escapes allowed, trailing dot optional) to wire labels; throws RangeError when invalid. */
export function nameToLabels(name: string): Buffer[] {
  if (name === '' || name === '.') return [];
  const labels: Buffer[] = [];
  let current: number[] = [];
  let endsWithDot = false;
  const endLabel = () => {
    if (current.length === 0) throw new RangeError(`empty label in DNS name ${JSON.stringify(name)}`);
    if (current.length > MAX_LABEL) throw new RangeError(`label longer than 63 bytes in DNS name ${JSON.stringify(name)}`);
    labels.push(Buffer.from(current));
    current = [];
  };
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c === 0x2e) {
      endLabel();
      endsWithDot = i === name.length - 1;
    } else if (c === 0x5c) {
      const digits = name.slice(i + 1, i + 4);
      if (/^\d{3}$/.test(digits) && Number(digits) <= 255) {
        current.push(Number(digits));
        i += 3;
      } else {
        const escaped = name.charCodeAt(i + 1);
        if (!(escaped > 0x20 && escaped < 0x7f)) throw new RangeError(`bad escape in DNS name ${JSON.stringify(name)}`);
        current.push(escaped);
        i += 1;
      }
    } else if (c > 0x20 && c < 0x7f) {
      current.push(c);
    } else {
      throw new RangeError(`character outside printable ASCII in DNS name ${JSON.stringify(name)}`);
    }
  }
  if (!endsWithDot) endLabel();
  if (labels.reduce((n, l) => n + l.length + 1, 1) > MAX_NAME_WIRE) throw new RangeError(`DNS name longer than 255 bytes: ${JSON.stringify(name)}`);
  return labels;
}

const OVERFLOW = Symbol('overflow');

/** A fixed-size writer with name compression that can roll back a record that does not fit. */
class Writer {
  private readonly buf: Buffer;
  private pos = 0;
  private readonly names = new Map<string, number>();
  constructor(limit: number) {
    this.buf = Buffer.alloc(limit);
  }
  get offset(): number {
    return this.pos;
  }
  private room(n: number): void {
    if (this.pos + n > this.buf.length) throw OVERFLOW;
  }
  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
  }
  u16(v: number): void {
    this.room(2);
    this.buf.writeUInt16BE(v, this.pos);
    this.pos += 2;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32BE(v >>> 0, this.pos);
    this.pos += 4;
  }
  patch16(at: number, v: number): void {
    this.buf.writeUInt16BE(v, at);
  }
  bytes(b: Buffer): void {
    this.room(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }
  name(labels: Buffer[]): void {
    for (let i = 0; i < labels.length; i++) {
      const key = suffixKey(labels, i);
      const seen = this.names.get(key);
      if (seen !== undefined) {
        this.u16(0xc000 | seen);
        return;
      }
      if (this.pos <= 0x3fff) this.names.set(key, this.pos);
      const label = labels[i] as Buffer;
      this.u8(label.length);
      this.bytes(label);
    }
    this.u8(0);
  }
  rollback(to: number): void {
    this.pos = to;
    for (const [key, at] of this.names) if (at >= to) this.names.delete(key);
  }
  result(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }
}

function suffixKey(labels: Buffer[], from: number): string {
  let key = '';
  for (let i = from; i < labels.length; i++) {
    const label = labels[i] as Buffer;
    key += label.length.toString(16) + ':';
    for (const b of label) key += String.fromCharCode(b >= 0x41 && b <= 0x5a ? b + 0x20 : b);
  }
  return key;
}

function header(w: Writer, id: number, flags: number, counts: [number, number, number, number]): void {
  w.u16(id);
  w.u16(flags);
  for (const c of counts) w.u16(c);
}

function responseFlags(queryFlags: number, rcode: number, extra: number): number {
  if (!Number.isInteger(rcode) || rcode < 0 || rcode > 15) throw new RangeError(`rcode ${rcode} does not fit a DNS header`);
  // Opcode and RD are echoed from the query, as RFC 1035 asks.
  return FLAG_QR | (queryFlags & 0x7800) | (queryFlags & FLAG_RD) | extra | rcode;
}

function writeQuestions(w: Writer, questions: DnsQuestion[]): void {
  for (const q of questions) {
    w.name(nameToLabels(q.askedName ?? q.name));
    w.u16(q.type);
    w.u16(q.class);
  }
}

function encodeAnswer(a: DnsAnswer): { owner: Buffer[]; rdata: Buffer | Buffer[] } {
  const owner = nameToLabels(a.name);
  if (!Number.isInteger(a.ttl) || a.ttl < 0 || a.ttl > 0x7fffffff) throw new RangeError(`bad TTL ${a.ttl}`);
  switch (a.type) {
    case DnsType.A: {
      const bytes = a.data.includes(':') ? undefined : ipToBytes(a.data);
      if (!bytes) throw new RangeError(`not an IPv4 address: ${JSON.stringify(a.data)}`);
      return { owner, rdata: bytes };
    }
    case DnsType.AAAA: {
      const bytes = a.data.includes(':') ? ipToBytes(a.data) : undefined;
      if (!bytes) throw new RangeError(`not an IPv6 address: ${JSON.stringify(a.data)}`);
      return { owner, rdata: bytes };
    }
    case DnsType.PTR:
      return { owner, rdata: nameToLabels(a.data) };
    default:
      throw new RangeError(`unsupported answer type ${String(a.type)}`);
  }
}

/**
 * A response to `query`: the question echoed, QR set, opcode and RD copied,
 * AA/RA as asked. Answers that would push the message past 512 bytes are
 * dropped and TC is set. Throws RangeError for invalid answer data.
 */
export function buildResponse(query: DnsQuery, opts: ResponseOptions): Buffer {
  const encoded = opts.answers.map((a) => ({ answer: a, ...encodeAnswer(a) }));
  const w = new Writer(MAX_UDP_PAYLOAD);
  header(w, query.id, 0, [query.questions.length, 0, 0, 0]);
  try {
    writeQuestions(w, query.questions);
  } catch (e) {
    throw e === OVERFLOW ? new RangeError('questions alone exceed 512 bytes') : e;
  }
  let written = 0;
  let truncated = false;
  for (const { answer, owner, rdata } of encoded) {
    const mark = w.offset;
    try {
      w.name(owner);
      w.u16(answer.type);
      w.u16(DnsClass.IN);
      w.u32(answer.ttl);
      if (Buffer.isBuffer(rdata)) {
        w.u16(rdata.length);
        w.bytes(rdata);
      } else {
        const lengthAt = w.offset;
        w.u16(0);
        w.name(rdata);
        w.patch16(lengthAt, w.offset - lengthAt - 2);
      }
      written++;
    } catch (e) {
      if (e !== OVERFLOW) throw e;
      w.rollback(mark);
      truncated = true;
      break;
    }
  }
  const out = w.result();
  const extra = (opts.authoritative ? FLAG_AA : 0) | (opts.recursionAvailable ? FLAG_RA : 0) | (truncated ? FLAG_TC : 0);
  out.writeUInt16BE(responseFlags(query.flags, opts.rcode, extra), 2);
  out.writeUInt16BE(written, 6);
  return out;
}

/**
 * An error reply (FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED...). For a raw
 * buffer the question is echoed when it parses; otherwise the reply is a bare
 * header with the id echoed. Below 12 bytes there is nothing to answer: undefined.
 */
export function buildError(query: DnsQuery, rcode: number): Buffer;
export function buildError(raw: Buffer, rcode: number): Buffer | undefined;
export function buildError(input: DnsQuery | Buffer, rcode: number): Buffer | undefined {
  if (!Buffer.isBuffer(input)) return buildResponse(input, { rcode, answers: [] });
  if (input.length < HEADER_SIZE) return undefined;
  try {
    return buildResponse(parseQuery(input), { rcode, answers: [] });
  } catch (e) {
    if (!(e instanceof DnsFormatError)) throw e;
  }
  const w = new Writer(HEADER_SIZE);
  header(w, input.readUInt16BE(0), responseFlags(input.readUInt16BE(2), rcode, 0), [0, 0, 0, 0]);
  return w.result();
}

/** A standard query (RD set unless told otherwise), for health checks and tests. */
export function buildQuery(id: number, name: string, type: number, opts: { recursionDesired?: boolean; class?: number } = {}): Buffer {
  const w = new Writer(MAX_UDP_PAYLOAD);
  header(w, id, opts.recursionDesired === false ? 0 : FLAG_RD, [1, 0, 0, 0]);
  writeQuestions(w, [{ name, type, class: opts.class ?? DnsClass.IN }]);
  return w.result();
}
