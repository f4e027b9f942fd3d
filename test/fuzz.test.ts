/**
 * The API fuzz suite: for every route of the route table, requests generated from the route's own
 * TypeBox schemas (valid values, boundary values, hostile ones) go over HTTP to one real nimbusd,
 * as the local administrator on its unix socket and as a project member over TCP.
 *
 * Asserted for every request: never a 5xx, an answer (for streams: the response head) within
 * REPLY_MS, and never a 2xx for a request that is wrong by construction (a wrong type, an unknown
 * field, NUL in a string). At the end: the daemon is alive and nothing is half-made: every
 * container, network and project answers its inspect, the quota ledger's figures are whole and
 * non-negative, each project's charged instances are its containers and VMs, and every instance
 * the quota audit admitted and never released exists.
 *
 * Budget: NIMBUS_FUZZ_RUNS requests per route (default 20), seed NIMBUS_FUZZ_SEED (default fixed;
 * "random" picks one; it is printed either way, so a failure replays). `npm run fuzz` is the long run.
 * NIMBUS_FUZZ_ONLY=operationId[,…] runs those routes only and prints every request and answer;
 * NIMBUS_FUZZ_VERBOSE=1 prints the statuses per route; NIMBUS_FUZZ_TRACE=FILE appends each request to FILE before it is sent.
 *
 * Kept safe for a shared host: subnets come from the test range (10.200-249, free of host routes),
 * published host ports from 45000-45999, image references and agent URLs only point at closed
 * loopback ports, runtime "vm" (a microVM per container) is not generated, and stop/wait timeouts
 * are 0-2 s (a valid 3600 would only wait out the hour). Nothing else is skipped.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { appendFileSync } from 'node:fs';
import fc from 'fast-check';
import { Kind, type TSchema } from '@sinclair/typebox';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { buildTestImages, makeTar, type PlatformImage } from '../scripts/fixtures/images.js';
import { allRoutes } from '../src/api/routes/index.js';
import type { Route } from '../src/api/route.js';
import { harden } from '../src/api/validate.js';
import { freeTestSubnet, nthAddress } from '../src/agent/network/network-test-env.js';

const RUNS = Math.max(1, Number(process.env.NIMBUS_FUZZ_RUNS ?? 20));
const SEED = process.env.NIMBUS_FUZZ_SEED === 'random' ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.NIMBUS_FUZZ_SEED ?? 20261213);
/** An answer (or a stream's head) must come within this. */
const REPLY_MS = 20_000;
/** Routes that block by design until something happens: a wait still pending after this is not a hang. */
const BLOCKING = new Set(['waitContainer', 'waitOperation']);
const BLOCK_MS = 3_000;

/**
 * 5xx answers found by this suite in code it does not own, reported to their owners (issue 13) and
 * listed here so the suite stays a gate for everything else: each is counted and printed on every
 * run. Remove an entry once its owner has fixed it.
 */
const KNOWN_5XX: { operationId: string; status: number; message: RegExp; why: string }[] = [
  // by design, not a defect: the agent the request named did not answer (502 Bad Gateway, docs/security.md);
  // the control plane itself is fine, and the agent's registration loop retries a 5xx
  { operationId: 'registerAgent', status: 502, message: /does not answer/, why: 'the agent URL the request named does not answer: 502 by design' },
  // the same for a TCP agent registering over mutual TLS: the control plane calls it back first
  { operationId: 'registerTlsAgent', status: 502, message: /does not answer/, why: 'the TLS agent URL the request named does not answer: 502 by design' },
  // and for a registry login: the registry the request named (a closed loopback port) does not answer
  { operationId: 'loginRegistry', status: 502, message: /cannot reach registry/, why: 'the registry the request named does not answer: 502 by design' },
];

/** A body past the 4 MiB limit may be cut off by closing the connection (issue 13: "drained or closed at once"). */
const MAX_BODY = 4 * 1024 * 1024;

const ADMIN_PASSWORD = 'fuzz-admin-password';
const PASSWORD = 'fuzz-member-password';
const PROJECT = 'fz';

type S = TSchema & Record<string, unknown>;
const kindOf = (s: S) => String(s[Kind]);

// ---- requests -----------------------------------------------------------------------------------

/** A value the JSON body cannot carry literally: written into the text after JSON.stringify. */
const DEEP = '\u0001deep\u0001';
const DEEP_TEXT = '['.repeat(20_000) + ']'.repeat(20_000);

/** Why a request is wrong by construction (then a 2xx is a failure); undefined: it may be right. */
type Wrong = string | undefined;

interface Req {
  route: Route;
  method: string;
  path: string;
  body?: Buffer;
  contentType?: string;
  tcp: boolean;
  wrong: Wrong;
  note: string;
}

interface Fixture {
  image: string;
  container: string;
  network: string;
  operation: string;
  subnets: string[];
}

/** Values known to the daemon for each kind of name, so requests reach real resources as well as missing ones. */
function known(fx: Fixture): Record<string, string[]> {
  return {
    containers: [fx.container, 'fz-box', 'no-such-container'],
    networks: [fx.network, 'fz-net', 'bridge', 'no-such-net'],
    images: [fx.image, 'fuzz/img:v1', 'no/such:image'],
    vms: ['no-such-vm'],
    operations: [fx.operation, 'no-such-op'],
    projects: [PROJECT, 'fz/child', 'no-such-project'],
    quota: [PROJECT, 'fz/child'],
    users: ['victim', 'no-such-user'],
    roles: ['victim', 'mallory-not'],
    apikeys: ['k1', 'no-such-key'],
    pools: ['shared', 'no-such-pool'],
    agents: ['no-such-agent', 'local'],
    'disk-images': ['no-such-disk'],
  };
}

const printable = (max = 24) => fc.string({ minLength: 1, maxLength: max });
const safeName = fc.stringMatching(/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,15}$/);

/** Field-specific generators: what keeps the run off the host's network and out of long waits. */
function override(field: string, s: S, fx: Fixture, route: Route): fc.Arbitrary<unknown> | undefined {
  switch (field) {
    case 'subnet': return fc.constantFrom(...fx.subnets);
    case 'gateway':
    case 'ip': return fc.oneof(fc.constantFrom(...fx.subnets.map((n) => nthAddress(n, 1)), ...fx.subnets.map((n) => nthAddress(n, 7))), ipv4());
    case 'hostPort': return fc.integer({ min: 45000, max: 45999 });
    case 'reference': return fc.oneof(fc.constant('127.0.0.1:1/none/such:latest'), safeName.map((n) => `127.0.0.1:1/${n.toLowerCase().replace(/[^a-z0-9]/g, 'x')}:v1`));
    case 'url': return fc.constantFrom('http://127.0.0.1:1', 'unix:/nonexistent/agent.sock');
    // a registry login is checked against the registry: closed loopback ports only
    case 'server': return fc.constantFrom('127.0.0.1:1', 'http://127.0.0.1:1/v2/', 'localhost:1');
    case 'runtime': return fc.constantFrom('runc', 'crun');
    case 'timeout':
    case 'stopTimeout': return fc.integer({ min: 0, max: 2 });
    case 'image': return route.operationId === 'createContainer' ? fc.oneof({ weight: 4, arbitrary: fc.constant(fx.image) }, { weight: 1, arbitrary: printable() }) : undefined;
    case 'container': return fc.constantFrom(fx.container, 'fz-box', 'no-such-container');
    case 'network': return fc.constantFrom('bridge', 'none', 'fz-net', 'host', 'container:fz-box', 'no-such-net');
    case 'parent':
    case 'defaultProject':
    case 'project': return fc.constantFrom(PROJECT, 'no-such-project', 'fz/child');
    case 'kernel':
    case 'initrd':
    case 'disk': return fc.constantFrom('/etc/shadow', '/boot/vmlinuz', '../../etc/passwd', 'no-such-file');
    case 'cmd':
    case 'entrypoint':
    case 'args':
      // an executable from a short list (missing ones included), then anything as its arguments
      return fc.tuple(fc.constantFrom('true', 'false', '/nonexistent', 'echo', 'sh', 'ls'), fc.array(fc.string({ maxLength: 16 }), { maxLength: 3 }))
        .map(([exe, rest]) => [exe, ...rest]);
    case 'memoryBytes': return fc.integer({ min: 6 * 1024 * 1024, max: 256 * 1024 * 1024 });
    default: return s[Kind] === 'String' && typeof s.format === 'string' && s.format in FORMAT_ARBS ? FORMAT_ARBS[s.format] : undefined;
  }
}

const ipv4 = () => fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join('.'));
const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
const hostname = fc.array(label, { minLength: 1, maxLength: 3 }).map((l) => l.join('.').slice(0, 63).replace(/[-.]+$/, '') || 'h');
const FORMAT_ARBS: Record<string, fc.Arbitrary<unknown>> = {
  ipv4: ipv4(),
  'ipv4-cidr': fc.tuple(ipv4(), fc.integer({ min: 0, max: 32 })).map(([a, p]) => `${a}/${p}`),
  hostname,
  'host-entry': fc.tuple(hostname, ipv4()).map(([h, a]) => `${h}:${a}`),
  signal: fc.constantFrom('SIGTERM', 'TERM', '15', 'SIGKILL', 'SIGRTMIN+3', 'sigusr1', 'SIGIOT', 'SIGHUP', 'SIGCONT', '64'),
  user: fc.constantFrom('root', '0', '1000:1000', 'nobody', 'app', '2147483647:0', 'no-such-user', 'root:no-such-group'),
};

const ABSENT = Symbol('absent');

/** A valid value of the (hardened) schema. */
function valid(s: S, field: string, fx: Fixture, route: Route): fc.Arbitrary<unknown> {
  const o = override(field, s, fx, route);
  if (o) return o;
  switch (kindOf(s)) {
    case 'String': {
      const max = Math.min(Number(s.maxLength ?? 64), 24);
      const min = Number(s.minLength ?? 0);
      const own = typeof s.pattern === 'string' && s.pattern.startsWith('^(?=') ? `^${s.pattern.replace(/^\^\(\?=\[\^[^\]]*\]\*\$\)/, '')}` : undefined;
      if (own) return fc.stringMatching(new RegExp(own)).filter((x) => x.length >= min && x.length <= Number(s.maxLength ?? 4096));
      return fc.string({ minLength: min, maxLength: Math.max(min, max) });
    }
    case 'Integer': {
      const min = Math.max(Number(s.minimum ?? -(2 ** 31)), -(2 ** 31));
      const max = Math.min(Number(s.maximum ?? 2 ** 31), 2 ** 31);
      return fc.integer({ min: s.exclusiveMinimum !== undefined ? Number(s.exclusiveMinimum) + 1 : min, max });
    }
    case 'Number': {
      const min = s.exclusiveMinimum !== undefined ? Number(s.exclusiveMinimum) + 0.001 : Number(s.minimum ?? -1e6);
      return fc.double({ min, max: Number(s.maximum ?? 1e6), noNaN: true, noDefaultInfinity: true });
    }
    case 'Boolean': return fc.boolean();
    case 'Literal': return fc.constant(s.const);
    case 'Null': return fc.constant(null);
    case 'Union': return fc.oneof(...(s.anyOf as S[]).map((m) => valid(m, field, fx, route)));
    case 'Array': return fc.array(valid(s.items as S, field, fx, route), { minLength: Number(s.minItems ?? 0), maxLength: Math.min(Number(s.maxItems ?? 4), 4) });
    case 'Record': {
      const [keyPattern, value] = Object.entries(s.patternProperties as Record<string, S>)[0]!;
      const key = fc.stringMatching(new RegExp(keyPattern.replace(/^\^\(\?=\[\^[^\]]*\]\*\$\)/, '^'))).filter((k) => k.length > 0 && k !== '__proto__');
      return fc.dictionary(key, valid(value, field, fx, route), { maxKeys: 3 });
    }
    case 'Object': {
      const props = (s.properties ?? {}) as Record<string, S>;
      const required = new Set((s.required ?? []) as string[]);
      // optional fields are present one time in four: each is a chance for a cross-field refusal
      const arbs = Object.fromEntries(Object.entries(props).map(([k, v]) => [
        k, required.has(k) ? valid(v, k, fx, route) : fc.oneof({ weight: 3, arbitrary: fc.constant(ABSENT) }, { weight: 1, arbitrary: valid(v, k, fx, route) }),
      ]));
      return fc.record(arbs).map((o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== ABSENT)));
    }
    default:
      return fc.constant(null);
  }
}

/** Values at and just past the schema's bounds (some valid, some not). */
function boundary(s: S): fc.Arbitrary<unknown> {
  switch (kindOf(s)) {
    case 'String': {
      const max = Number(s.maxLength ?? 4096);
      return fc.constantFrom('', 'a'.repeat(max), 'a'.repeat(max + 1), ' ', 'ä'.repeat(Math.min(max, 100)));
    }
    case 'Integer':
    case 'Number': {
      const lo = Number(s.minimum ?? s.exclusiveMinimum ?? -Number.MAX_SAFE_INTEGER);
      const hi = Number(s.maximum ?? s.exclusiveMaximum ?? Number.MAX_SAFE_INTEGER);
      return fc.constantFrom(lo, hi, lo - 1, hi + 1, 0, -0, 1e308, -1e308, 2 ** 53, 0.5, 1e-308);
    }
    case 'Array': {
      const n = Math.min(Number(s.maxItems ?? 1024) + 1, 5000);
      return fc.constantFrom([], Array.from({ length: n }, () => 'x'), Array.from({ length: n - 1 }, () => 'x'));
    }
    case 'Record': {
      const n = Number(s.maxProperties ?? 256) + 1;
      return fc.constantFrom({}, Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v'])), { ['k'.repeat(300)]: 'v' }, { '': 'v' });
    }
    default:
      return fc.constantFrom(null, {});
  }
}

/** Wrong by construction, whatever the field: [value, why]. */
function hostile(s: S): fc.Arbitrary<[unknown, Wrong]> {
  const k = kindOf(s);
  const wrongTypes: [unknown, string][] = [
    [12345, 'number'], ['12345', 'numeric string'], ['true', 'boolean as string'], [true, 'boolean'], [[], 'list'], [{}, 'object'], [1.5, 'fraction'], ['NaN', 'NaN'], ['1e309', 'overflow'],
  ];
  const ofOtherType = wrongTypes.filter(([v]) => {
    if (k === 'String') return typeof v !== 'string';
    if (k === 'Integer') return !(typeof v === 'number' && Number.isInteger(v));
    if (k === 'Number') return typeof v !== 'number';
    if (k === 'Boolean') return typeof v !== 'boolean';
    if (k === 'Array') return !Array.isArray(v);
    if (k === 'Object' || k === 'Record') return typeof v !== 'object' || Array.isArray(v);
    return false;
  });
  const options: fc.Arbitrary<[unknown, Wrong]>[] = [
    fc.constant<[unknown, Wrong]>([DEEP, k === 'Unknown' ? undefined : 'deep nesting']),
    // a map of numbers takes it; anything else refuses an unknown field or an object
    fc.constant<[unknown, Wrong]>([{ zz_unknown: 1 }, k === 'Record' || k === 'Union' ? undefined : 'unknown field or an object for a scalar']),
  ];
  if (ofOtherType.length) options.push(fc.constantFrom(...ofOtherType.map(([v, why]) => [v, `wrong type: ${why}`] as [unknown, Wrong])));
  if (k === 'String') {
    options.push(fc.constantFrom<[unknown, Wrong]>(['a\u0000b', 'NUL'], ['\u001b[31mred', 'ESC'], ['x\u0085', 'C1 control'], ['a\nb', undefined], ['\ud800', undefined], ['x'.repeat(1 << 20), 'a 1 MiB string']));
  }
  if (k === 'Object') {
    options.push(fc.constant<[unknown, Wrong]>([{ ...JSON.parse('{"__proto__":{"polluted":1}}'), zz_unknown: true }, 'unknown field']));
  }
  return fc.oneof(...options);
}

/** Paths into a value where a mutation can go: [path, schema there]. */
function fieldsOf(s: S, path: (string | number)[] = []): [(string | number)[], S][] {
  const out: [(string | number)[], S][] = [[path, s]];
  if (kindOf(s) === 'Object') for (const [k, v] of Object.entries((s.properties ?? {}) as Record<string, S>)) out.push(...fieldsOf(v, [...path, k]));
  if (kindOf(s) === 'Array') out.push(...fieldsOf(s.items as S, [...path, 0]));
  if (kindOf(s) === 'Union') for (const m of (s.anyOf as S[]).filter((x) => kindOf(x) === 'Object' || kindOf(x) === 'Array')) out.push(...fieldsOf(m, path));
  return out;
}

function setAt(root: unknown, path: (string | number)[], value: unknown): unknown {
  if (!path.length) return value;
  const base = (root && typeof root === 'object' ? structuredClone(root) : typeof path[0] === 'number' ? [] : {}) as Record<string | number, unknown>;
  const [head, ...rest] = path;
  base[head!] = setAt(base[head!], rest, value);
  return base;
}

/** A body: valid (40 %), valid but for one boundary value (30 %), or valid but for one hostile value (30 %). */
function bodyArb(schema: S, fx: Fixture, route: Route): fc.Arbitrary<{ value: unknown; wrong: Wrong; note: string }> {
  const base = valid(schema, '', fx, route);
  const fields = fieldsOf(schema);
  const mutated = (how: 'boundary' | 'hostile') =>
    fc.tuple(base, fc.nat(fields.length - 1)).chain(([v, i]) => {
      const [path, s] = fields[i]!;
      const where = path.join('.') || '(body)';
      if (how === 'boundary') {
        // a graceful stop may take its whole timeout (the fixture ignores SIGTERM): its upper boundary is a
        // legitimate hour-long wait, so the boundaries tried are the lower one and the first refused one
        const last = path[path.length - 1];
        const values = last === 'timeout' || last === 'stopTimeout' ? fc.constantFrom(s.minimum ?? 0, Number(s.maximum ?? 0) + 1) : boundary(s);
        return values.map((b) => ({ value: setAt(v, path, b), wrong: undefined as Wrong, note: `boundary at ${where}` }));
      }
      return hostile(s).map(([h, why]) => ({
        value: setAt(v, path, h),
        // a mutation inside a list item we may have just made up is only wrong where the list exists
        wrong: why && (path.length <= 1 || path.slice(0, -1).every((_, j) => get(v, path.slice(0, j + 1)) !== undefined)) ? `${why} at ${where}` : undefined,
        note: `hostile at ${where}`,
      }));
    });
  return fc.oneof(
    { weight: 4, arbitrary: base.map((value) => ({ value, wrong: undefined as Wrong, note: 'valid' })) },
    { weight: 3, arbitrary: mutated('boundary') },
    { weight: 3, arbitrary: mutated('hostile') },
  );
}

function get(v: unknown, path: (string | number)[]): unknown {
  let cur = v;
  for (const p of path) cur = cur && typeof cur === 'object' ? (cur as Record<string | number, unknown>)[p] : undefined;
  return cur;
}

/** Raw path segments a client can send: malformed percent-encoding, encoded NUL and newline, traversal, 10 KiB. */
const HOSTILE_SEGMENTS = ['%ff%fe', '%', '%zz', '%E2%82', '%00', '%0a', '..', '%2e%2e', '%2F', 'x'.repeat(10_000), '%C3%A4', '*', '%20'];

function segmentArb(route: Route, name: string, fx: Fixture): fc.Arbitrary<{ raw: string; wrong: Wrong }> {
  const segment = route.path.slice(0, route.path.indexOf(`{${name}}`)).split('/').filter(Boolean).pop() ?? '';
  const pool = name === 'user' ? known(fx).roles! : name === 'pool' ? known(fx).pools! : known(fx)[segment] ?? ['x'];
  return fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...pool).map((v) => ({ raw: encodeURIComponent(v), wrong: undefined as Wrong })) },
    { weight: 2, arbitrary: printable().map((v) => ({ raw: encodeURIComponent(v), wrong: undefined as Wrong })) },
    { weight: 2, arbitrary: fc.constantFrom(...HOSTILE_SEGMENTS).map((raw) => ({ raw, wrong: ['%ff%fe', '%', '%zz', '%E2%82', '%00', '%0a', 'x'.repeat(10_000)].includes(raw) ? `path segment ${raw.slice(0, 12)}` : undefined })) },
  );
}

const scalar = (s: S) => ['Boolean', 'Integer', 'Number'].includes(kindOf(s));

function queryArb(route: Route, fx: Fixture): fc.Arbitrary<{ q: string; wrong: Wrong }> {
  const a = route.auth;
  const projectFromQuery = !!a && 'project' in a && typeof a.project === 'string';
  const props = route.query ? ((harden(route.query, 'query parameter') as S).properties as Record<string, S>) : {};
  const pairs = Object.entries(props).map(([k, s]) =>
    fc.oneof(
      { weight: 6, arbitrary: valid(s, k, fx, route).map((v) => ({ part: v === undefined ? '' : `${k}=${encodeURIComponent(String(v))}`, wrong: undefined as Wrong })) },
      {
        weight: 1,
        arbitrary: fc.constantFrom<[string, Wrong]>(['yes', kindOf(s) === 'Boolean' ? 'boolean yes' : undefined], ['NaN', scalar(s) ? 'NaN' : undefined], ['1e309', scalar(s) ? '1e309' : undefined], ['', undefined], ['%00', 'NUL'], ['%ff', undefined], ['x'.repeat(100_000), 'a 100 KB query'])
          .map(([v, wrong]) => ({ part: `${k}=${v}`, wrong: wrong && `query ${k}: ${wrong}` })),
      },
      { weight: 1, arbitrary: fc.constant({ part: `${k}=1&${k}=2`, wrong: kindOf(s) === 'Array' || kindOf(s) === 'Union' ? undefined : `query ${k} given twice` }) },
      { weight: 2, arbitrary: fc.constant({ part: '', wrong: undefined as Wrong }) },
    ));
  const project = projectFromQuery
    ? fc.oneof({ weight: 6, arbitrary: fc.constant(`project=${PROJECT}`) }, { weight: 2, arbitrary: fc.constantFrom('project=*', 'project=no-such-project', '', 'project=%00', 'project=fz%2Fchild') })
    : fc.constantFrom('', 'project=fz');
  // one query in six carries a parameter the route does not take (refused, so rarer: the rest reach the handler)
  const extraArb = fc.oneof({ weight: 5, arbitrary: fc.constant('') }, { weight: 1, arbitrary: fc.constant('zz_unknown=1') });
  return fc.tuple(project, fc.tuple(...pairs), extraArb).map(([p, parts, extra]) => {
    const all = [p, ...parts.map((x) => x.part), extra].filter(Boolean);
    return { q: all.length ? `?${all.join('&')}` : '', wrong: parts.map((x) => x.wrong).find(Boolean) ?? (extra ? 'unknown query parameter' : undefined) };
  });
}

/** Whole bodies that are wrong whatever the schema. */
const BAD_BODIES: [Buffer, string][] = [
  [Buffer.from('null'), 'null body'],
  [Buffer.from('[]'), 'array body'],
  [Buffer.from('"x"'), 'string body'],
  [Buffer.from('{"a":'), 'truncated JSON'],
  [Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), 'invalid UTF-8'],
  [Buffer.alloc(5 * 1024 * 1024, 0x20), '5 MiB body'],
];

function requestArb(route: Route, fx: Fixture): fc.Arbitrary<Req> {
  const names = [...route.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
  const segs = fc.tuple(...names.map((n) => segmentArb(route, n, fx)));
  const body: fc.Arbitrary<{ buf?: Buffer; type?: string; wrong: Wrong; note: string }> = route.rawBody
    ? fc.oneof(
      fc.uint8Array({ maxLength: 4096 }).map((b) => ({ buf: Buffer.from(b), type: route.rawBody, wrong: undefined as Wrong, note: 'random bytes' })),
      fc.constant({ buf: Buffer.alloc(0), type: route.rawBody, wrong: undefined as Wrong, note: 'empty' }),
    )
    : route.body
      ? fc.oneof(
        { weight: 9, arbitrary: bodyArb(harden(route.body, 'request body') as S, fx, route).map(({ value, wrong, note }) => ({ buf: serialize(value), type: 'application/json', wrong, note })) },
        { weight: 1, arbitrary: fc.constantFrom(...BAD_BODIES).map(([buf, why]) => ({ buf, type: 'application/json', wrong: why === 'null body' ? undefined : why, note: why })) },
      )
      : fc.constant({ wrong: undefined as Wrong, note: 'no body' });
  return fc.record({ segs, query: queryArb(route, fx), body, tcp: fc.boolean() }).map(({ segs: ss, query, body: b, tcp }) => {
    let i = 0;
    const path = route.path.replace(/\{\w+\}/g, () => ss[i++]!.raw) + query.q;
    return {
      route, method: route.method, path, tcp,
      ...(b.buf ? { body: b.buf } : {}), ...(b.type ? { contentType: b.type } : {}),
      wrong: ss.map((x) => x.wrong).find(Boolean) ?? query.wrong ?? b.wrong,
      note: b.note,
    };
  });
}

function serialize(value: unknown): Buffer {
  if (value === undefined) return Buffer.alloc(0);
  const text = JSON.stringify(value);
  return Buffer.from(text.split(JSON.stringify(DEEP)).join(DEEP_TEXT));
}

// ---- HTTP ---------------------------------------------------------------------------------------

interface Reply { status: number; text: string; ms: number; outcome: 'answered' | 'streaming' | 'blocked' | 'timeout' | 'error'; error?: string }

function send(d: DaemonProcess, port: number, token: string, r: Req): Promise<Reply> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const headers: Record<string, string | number> = {};
    if (r.tcp) headers.authorization = `Bearer ${token}`;
    if (r.body) {
      headers['content-type'] = r.contentType ?? 'application/json';
      headers['content-length'] = r.body.length;
    }
    const where = r.tcp ? { host: '127.0.0.1', port } : { socketPath: d.socket };
    let settled = false;
    let req: ReturnType<typeof request> | undefined;
    let timer: NodeJS.Timeout | undefined;
    const done = (x: Omit<Reply, 'ms'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        req?.destroy();
      } finally {
        resolve({ ...x, ms: Date.now() - t0 });
      }
    };
    const blocking = BLOCKING.has(r.route.operationId);
    try {
      req = request({ ...where, method: r.method, path: r.path, headers, agent: false }, (res) => {
        const status = res.statusCode ?? 0;
        const type = String(res.headers['content-type'] ?? '');
        if (status === 200 && (type.includes('ndjson') || type.includes('event-stream'))) return done({ status, text: '', outcome: 'streaming' });
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => done({ status, text: Buffer.concat(chunks).toString(), outcome: 'answered' }));
        res.on('error', (e) => done({ status, text: '', outcome: 'error', error: e.message }));
        res.on('close', () => done({ status, text: Buffer.concat(chunks).toString(), outcome: res.complete ? 'answered' : 'error', error: 'closed mid-response' }));
      });
    } catch (e) {
      // the client refused to send it at all (a path Node will not write): not the daemon's doing
      return done({ status: 0, text: '', outcome: 'error', error: `client: ${(e as Error).message}` });
    }
    timer = setTimeout(() => done({ status: 0, text: '', outcome: blocking ? 'blocked' : 'timeout' }), blocking ? BLOCK_MS : REPLY_MS);
    req.on('error', (e) => done({ status: 0, text: '', outcome: 'error', error: e.message }));
    req.end(r.body);
  });
}

// ---- the run ------------------------------------------------------------------------------------

/** Reads before writes, creates before changes, removals and logout last: each route sees the fixtures as long as possible. */
function order(r: Route): number {
  if (r.operationId === 'logout') return 9;
  if (r.method === 'DELETE') return r.path.startsWith('/projects') || r.path.startsWith('/users') ? 8 : 7;
  if (r.method === 'GET') return 0;
  if (r.path.startsWith('/quota') || r.path.startsWith('/projects')) return 5;
  if (r.path.includes('{')) return 3;
  return 1;
}

async function labelledImage(img: PlatformImage): Promise<Buffer> {
  const config = JSON.parse(img.config.data.toString()) as { config: Record<string, unknown> };
  config.config.Labels = { 'nimbus.test/fuzz': 'yes' };
  return makeTar([
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: 'config.json', RepoTags: ['fuzz/img:v1'], Layers: img.rawLayers.map((_, i) => `l${i}/layer.tar`) }]) },
    { name: 'config.json', type: 'file', content: JSON.stringify(config) },
    ...img.rawLayers.map((r, i) => ({ name: `l${i}/layer.tar`, type: 'file' as const, content: r })),
  ]);
}

describe('API fuzz: every route, generated from its schemas', { concurrency: false }, () => {
  let d: DaemonProcess;
  let port: number;
  let token = '';
  let fx: Fixture;
  const admin = (method: string, path: string, body?: unknown) => send(d, port, '', {
    route: { operationId: 'setup' } as Route, method, path, tcp: false, wrong: undefined, note: 'setup',
    ...(body !== undefined ? { body: Buffer.from(JSON.stringify(body)) } : {}),
  });
  const admitted = (r: Reply, what: string) => assert.ok(r.status >= 200 && r.status < 300, `${what}: ${r.status} ${r.text}`);

  before(async () => {
    process.env.NIMBUS_ADMIN_PASSWORD = ADMIN_PASSWORD;
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0']);
    const m = /tcp:127\.0\.0\.1:(\d+)/.exec(d.output());
    assert.ok(m, d.output());
    port = Number(m[1]);
    admitted(await admin('POST', '/projects', { name: PROJECT }), 'project');
    admitted(await admin('POST', '/projects', { name: 'child', parent: PROJECT }), 'child project');
    for (const u of ['mallory', 'victim']) admitted(await admin('POST', '/users', { name: u, password: PASSWORD }), u);
    admitted(await admin('PUT', `/projects/${PROJECT}/roles/mallory`, { role: 'member' }), 'grant');
    const imported = await send(d, port, '', {
      route: { operationId: 'setup' } as Route, method: 'POST', path: `/images/import?project=${PROJECT}`, tcp: false, wrong: undefined, note: '',
      body: await labelledImage((await buildTestImages()).amd64), contentType: 'application/x-tar',
    });
    admitted(imported, 'import');
    const image = (JSON.parse(imported.text) as { image: { digest: string } }[])[0]!.image.digest;
    // it ends on SIGTERM (a bare sleep as PID 1 ignores it): a restart or stop generated without a
    // timeout would otherwise wait out the 10 s default each time (41 of 66 s of the run once)
    const box = await admin('POST', `/containers?project=${PROJECT}`, { image, name: 'fz-box', cmd: ['sh', '-c', 'trap "exit 0" TERM; sleep 600 & wait'], start: true });
    admitted(box, 'fixture container');
    const net = await admin('POST', `/networks?project=${PROJECT}`, { name: 'fz-net' });
    admitted(net, 'fixture network');
    const pull = await admin('POST', `/images/pull?project=${PROJECT}`, { reference: '127.0.0.1:1/none/such:latest' });
    admitted(pull, 'pull');
    const login = await send(d, port, '', {
      route: { operationId: 'setup' } as Route, method: 'POST', path: '/auth/login', tcp: true, wrong: undefined, note: '',
      body: Buffer.from(JSON.stringify({ user: 'mallory', password: PASSWORD })),
    });
    admitted(login, 'login');
    token = (JSON.parse(login.text) as { token: string }).token;
    fx = {
      image, container: (JSON.parse(box.text) as { id: string }).id, network: (JSON.parse(net.text) as { id: string }).id,
      operation: (JSON.parse(pull.text) as { id: string }).id, subnets: [freeTestSubnet(24), freeTestSubnet(28), freeTestSubnet(30)],
    };
  });
  after(async () => {
    delete process.env.NIMBUS_ADMIN_PASSWORD;
    await d?.destroy();
  });

  test(`${RUNS} requests per route, seed ${SEED}: never a 5xx, never a hang, never a 2xx for a wrong request`, { timeout: 30 * 60_000 }, async (t) => {
    t.diagnostic(`seed ${SEED} (replay: NIMBUS_FUZZ_SEED=${SEED} NIMBUS_FUZZ_RUNS=${RUNS})`);
    process.stderr.write(`fuzz: seed ${SEED}, ${RUNS} requests per route\n`); // now, not at the end: a stuck run still names its seed
    const trace = process.env.NIMBUS_FUZZ_TRACE;
    const routes = allRoutes().map((r, i) => ({ r, i })).sort((a, b) => order(a.r) - order(b.r) || a.i - b.i);
    const failures: string[] = [];
    const known = new Map<string, number>();
    const byRoute: [string, Record<number, number>, { ms: number }][] = [];
    const counts = { requests: 0, statuses: new Map<number, number>(), streaming: 0, blocked: 0 };
    const t0 = Date.now();
    const only = process.env.NIMBUS_FUZZ_ONLY?.split(',');
    for (const { r, i } of routes) {
      if (only && !only.includes(r.operationId)) continue;
      // the member keeps its role whatever an earlier route did to it
      await admin('PUT', `/projects/${PROJECT}/roles/mallory`, { role: 'member' });
      const reqs = fc.sample(requestArb(r, fx), { seed: SEED + i, numRuns: RUNS });
      const perRoute: Record<number, number> = {};
      const spent = { ms: 0 };
      byRoute.push([`${r.method} ${r.path}`, perRoute, spent]);
      for (const q of reqs) {
        if (trace) appendFileSync(trace, `${new Date().toISOString()} ${q.tcp ? 'tcp' : 'unix'} ${q.method} ${q.path.slice(0, 300)} ${q.body ? q.body.subarray(0, 300).toString() : ''}\n`);
        const sent = Date.now();
        const res = await send(d, port, token, q);
        spent.ms += Date.now() - sent;
        counts.requests++;
        counts.statuses.set(res.status, (counts.statuses.get(res.status) ?? 0) + 1);
        perRoute[res.status] = (perRoute[res.status] ?? 0) + 1;
        if (res.outcome === 'streaming') counts.streaming++;
        if (res.outcome === 'blocked') counts.blocked++;
        const what = `${q.tcp ? 'tcp(member)' : 'unix(admin)'} ${q.method} ${q.path.slice(0, 200)} [${q.note}] body=${q.body ? q.body.subarray(0, 300).toString() : '-'}`;
        if (only) t.diagnostic(`${res.status} ${what.slice(0, 400)} → ${res.text.slice(0, 300)}`);
        const known5xx = res.status >= 500 && KNOWN_5XX.find((k) => k.operationId === r.operationId && k.status === res.status && k.message.test(res.text));
        if (known5xx) {
          known.set(known5xx.why, (known.get(known5xx.why) ?? 0) + 1);
          continue;
        }
        // The edge closes instead of draining a body it will not read: one over the limit, or any
        // large one of a request refused before its body is read (an unknown query parameter, a bad
        // path). The client, still writing, sees the close. A valid request is never cut off.
        const bodyBytes = q.body?.length ?? 0;
        const cutOff = res.outcome === 'error' && /EPIPE|ECONNRESET/.test(res.error ?? '') && (bodyBytes > MAX_BODY || (q.wrong !== undefined && bodyBytes > 64 * 1024));
        if (res.outcome === 'timeout') failures.push(`no answer in ${REPLY_MS} ms: ${what}`);
        else if (res.outcome === 'error' && !cutOff) failures.push(`connection error ${res.error}: ${what}`);
        else if (res.status >= 500) failures.push(`${res.status} ${res.text.slice(0, 500)}: ${what}`);
        else if (q.wrong && res.status >= 200 && res.status < 300) failures.push(`${res.status} for a wrong request (${q.wrong}): ${what} → ${res.text.slice(0, 200)}`);
      }
    }
    const seconds = ((Date.now() - t0) / 1000).toFixed(1);
    t.diagnostic(`${counts.requests} requests in ${seconds} s; streams ${counts.streaming}, waits left pending ${counts.blocked}; statuses ${JSON.stringify(Object.fromEntries([...counts.statuses].sort((a, b) => a[0] - b[0])))}`);
    // the statuses per route, slowest routes first (where the suite's time goes)
    if (process.env.NIMBUS_FUZZ_VERBOSE) for (const [route, st, { ms }] of byRoute.sort((a, b) => b[2].ms - a[2].ms)) t.diagnostic(`${route}: ${ms} ms ${JSON.stringify(st)}`);
    for (const [why, n] of known) t.diagnostic(`known 5xx (${n}x), reported, not failed: ${why}`);
    assert.deepEqual(failures, [], `seed ${SEED}: ${failures.length} failure(s)`);
  });

  test('afterwards: the daemon is alive and nothing is half-made', async () => {
    assert.equal(d.child.exitCode, null, 'nimbusd still runs');
    assert.equal((await admin('GET', '/_ping')).status, 200);
    const json = async <T>(path: string): Promise<T> => {
      const r = await admin('GET', path);
      assert.equal(r.status, 200, `GET ${path}: ${r.status} ${r.text}`);
      return JSON.parse(r.text) as T;
    };
    const projects = await json<{ id: string; path: string }[]>('/projects');
    const containers = await json<{ id: string; projectId: string; status: string }[]>('/containers?all=true&project=*');
    const networks = await json<{ id: string; projectId: string; builtin: boolean }[]>('/networks?project=*');
    const vms = await json<{ id: string; projectId: string }[]>('/vms?all=true&project=*');
    const volumes = await json<{ id: string; projectId: string }[]>('/volumes?project=*');
    const ids = new Set(projects.map((p) => p.id));
    for (const c of containers) {
      assert.ok(ids.has(c.projectId), `container ${c.id} in a project that exists`);
      assert.ok(['created', 'running', 'paused', 'exited', 'restarting'].includes(c.status), `container ${c.id} is ${c.status}`);
      await json(`/containers/${c.id}`);
    }
    for (const n of networks) {
      assert.ok(ids.has(n.projectId), `network ${n.id} in a project that exists`);
      await json(`/networks/${n.id}`);
    }
    for (const p of projects) {
      await json(`/projects/${encodeURIComponent(p.path)}`);
      const q = await json<{ resources: Record<string, Record<string, number | null>> }>(`/quota/${encodeURIComponent(p.path)}`);
      for (const [res, figures] of Object.entries(q.resources)) {
        for (const [k, v] of Object.entries(figures)) assert.ok(v === null || (Number.isInteger(v) && v >= 0), `${p.path} ${res}.${k} = ${v}`);
      }
      const instances = containers.filter((c) => c.projectId === p.id).length + vms.filter((v) => v.projectId === p.id).length;
      assert.equal(q.resources.instances!.used, instances, `${p.path}: instances charged = its containers and VMs`);
      const userNetworks = networks.filter((n) => n.projectId === p.id && !n.builtin).length;
      assert.equal(q.resources.networks!.used, userNetworks, `${p.path}: networks charged = its networks`);
    }
    // Every instance the ledger admitted and never released is a thing that exists.
    const audit = await json<{ kind: string; instance?: string }[]>('/quota-audit');
    const open = new Set<string>();
    for (const e of audit) {
      if (!e.instance) continue;
      if (e.kind === 'admit') open.add(e.instance);
      if (e.kind === 'release') open.delete(e.instance);
    }
    const existing = new Set([...containers, ...networks, ...vms, ...volumes].map((x) => x.id));
    assert.deepEqual([...open].filter((id) => !existing.has(id)), [], 'admitted, never released, and gone');
  });
});
