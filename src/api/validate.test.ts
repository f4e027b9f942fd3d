import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Kind, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { checkOrThrow, checkTotalLength, DEFAULT_LIMITS, harden, isHostname, UNBOUNDED_KINDS, type Where } from './validate.js';
import { allRoutes } from './routes/index.js';
import { buildOpenApi } from './openapi.js';
import { NAME_PATTERN } from './schemas.js';
import { isValidName } from '../core/ids.js';
import { canonicalSignal, signalNumber } from '../core/signals.js';
import { NimbusError } from '../core/errors.js';

const routes = allRoutes();
function routeOf(operationId: string) {
  const r = routes.find((x) => x.operationId === operationId);
  assert.ok(r, operationId);
  return r;
}

function check(operationId: string, where: Where, value: unknown): unknown {
  const r = routeOf(operationId);
  const schema = where === 'request body' ? r.body : where === 'query parameter' ? r.query : r.params;
  assert.ok(schema, `${operationId} has a ${where} schema`);
  return checkOrThrow(TypeCompiler.Compile(schema), value, where);
}

/** The 400 message, or a failure when it was accepted. */
function refused(operationId: string, where: Where, value: unknown): string {
  try {
    check(operationId, where, value);
  } catch (e) {
    assert.ok(e instanceof NimbusError && e.code === 'InvalidArgument', `InvalidArgument, got ${String(e)}`);
    return e.message;
  }
  assert.fail(`${operationId} accepted ${JSON.stringify(value)?.slice(0, 200)}`);
}

const create = (extra: Record<string, unknown>) => ({ image: 'busybox', ...extra });

test('JSON bodies are never converted', () => {
  assert.match(refused('createContainer', 'request body', create({ name: 12345 })), /field "name": must be a string, got a whole number/);
  assert.match(refused('createContainer', 'request body', create({ autoRemove: 'true' })), /field "autoRemove": must be true or false, got a string/);
  assert.match(refused('createContainer', 'request body', create({ cmd: 'x' })), /field "cmd": must be a list, got a string/);
  assert.match(refused('createContainer', 'request body', create({ stopTimeout: 1.5 })), /field "stopTimeout": must be a whole number/);
  assert.match(refused('setQuota', 'request body', { hard: { instances: 1.5 } }), /field "hard.instances": must be a whole number/);
  assert.match(refused('createNetwork', 'request body', { name: 12345 }), /field "name"/);
  assert.match(refused('createUser', 'request body', { name: 12345, password: 'long enough' }), /field "name"/);
  assert.match(refused('createProject', 'request body', { name: 12345 }), /field "name"/);
  assert.match(refused('createApiKey', 'request body', { name: 12345 }), /field "name"/);
  assert.match(refused('pruneImages', 'request body', { all: 'true' }), /field "all"/);
  assert.match(refused('createContainer', 'request body', []), /must be a JSON object, got a list/);
  assert.match(refused('createContainer', 'request body', 'busybox'), /must be a JSON object, got a string/);
  // a list where an object belongs, empty or not, at any depth (defaults made [] into {} once: the fuzz found it)
  assert.match(refused('createNetwork', 'request body', { name: 'n', driver: 'route', labels: [] }), /field "labels": must be an object, got a list/);
  assert.match(refused('createNetwork', 'request body', { name: 'n', labels: ['a'] }), /field "labels": must be an object, got a list/);
  assert.match(refused('createContainer', 'request body', create({ labels: [] })), /field "labels": must be an object, got a list/);
  assert.match(refused('setQuota', 'request body', { hard: [] }), /field "hard": must be an object, got a list/);
  // defaults still apply
  const out = check('createContainer', 'request body', create({})) as Record<string, unknown>;
  assert.deepEqual([out.env, out.labels, out.autoRemove, out.start], [[], {}, false, false]);
});

test('an empty body is an empty object: 400 naming the first required field', () => {
  assert.match(refused('createContainer', 'request body', undefined), /^request body required: field "image" is required/);
  assert.deepEqual(check('stopContainer', 'request body', undefined), {});
  assert.deepEqual(check('killContainer', 'request body', undefined), { signal: 'SIGKILL' });
});

test('query strings and path parameters convert exactly', () => {
  assert.deepEqual(check('listContainers', 'query parameter', { all: 'true' }), { all: true });
  assert.deepEqual(check('listContainers', 'query parameter', { all: 'false' }), { all: false });
  assert.deepEqual(check('listContainers', 'query parameter', {}), { all: false });
  for (const bad of ['1', 'yes', 'TRUE', '', 'true ']) assert.match(refused('listContainers', 'query parameter', { all: bad }), /field "all": must be true or false/);
  assert.match(refused('listContainers', 'query parameter', { all: ['true', 'false'] }), /field "all": given more than once/);
  assert.deepEqual(check('containerLogs', 'query parameter', { tail: '5' }), { tail: 5, follow: false });
  for (const bad of ['5.0', '1e3', '0x10', ' 5', 'NaN', '99999999999999999999', ''])
    assert.match(refused('containerLogs', 'query parameter', { tail: bad }), /field "tail": must be a whole number/, bad);
  assert.match(refused('containerLogs', 'query parameter', { tail: '-1' }), /field "tail": must be at least 0/);
  assert.deepEqual(check('waitOperation', 'query parameter', { timeout: '0.5' }), { timeout: 0.5 });
  for (const bad of ['NaN', 'Infinity', '1e309', '.5', '5.', '0x1', '1,5'])
    assert.match(refused('waitOperation', 'query parameter', { timeout: bad }), /field "timeout": must be a decimal number/, bad);
  assert.match(refused('waitOperation', 'query parameter', { timeout: '1e308' }), /field "timeout": must be at most 3600/);
  assert.match(refused('waitContainer', 'query parameter', { condition: 'gone' }), /field "condition": must be one of "not-running", "removed"/);
  // a union of a string and a list of strings: one value is the string, repeated ones the list
  assert.deepEqual(check('events', 'query parameter', { type: 'container' }), { type: 'container' });
  assert.deepEqual(check('events', 'query parameter', { type: ['container', 'image'] }), { type: ['container', 'image'] });
  // path parameters: strings, bounded, no control characters
  assert.deepEqual(check('inspectContainer', 'path parameter', { id: 'web' }), { id: 'web' });
  assert.match(refused('inspectContainer', 'path parameter', { id: 'a\u0000b' }), /path parameter field "id": must not contain NUL/);
  assert.match(refused('inspectContainer', 'path parameter', { id: 'x'.repeat(257) }), /at most 256 characters/);
  assert.match(refused('removeUser', 'path parameter', { name: '../etc' }), /field "name": must be a name/);
});

test('unknown fields are refused, nested ones too', () => {
  assert.match(refused('createContainer', 'request body', create({ extra: 1 })), /field "extra": is not a known field/);
  assert.match(refused('createContainer', 'request body', create({ restart: { name: 'always', extra: 1 } })), /field "restart.extra": is not a known field/);
  assert.match(refused('createContainer', 'request body', create({ links: [{ container: 'a', alias: 'b', x: 1 }] })), /field "links.0.x"/);
  assert.match(refused('createContainer', 'request body', create({ ports: [{ hostPort: 1, containerPort: 1, x: 1 }] })), /field "ports.0.x"/);
  assert.match(refused('stopContainer', 'request body', { timeout: 1, force: true }), /field "force": is not a known field/);
  assert.match(refused('killContainer', 'request body', { sig: 'KILL' }), /field "sig"/);
  assert.match(refused('setQuota', 'request body', { hard: { gpus: 1 } }), /field "hard.gpus"/);
});

test('strings: control characters refused, arguments and environment may be multi-line, NUL never', () => {
  for (const [field, value] of [['hostname', 'a\nb'], ['workdir', '/a\u0000'], ['user', 'root\u001b'], ['name', 'a\tb'], ['image', 'busybox\u0085']] as const) {
    assert.match(refused('createContainer', 'request body', create({ [field]: value })), new RegExp(`field "${field}": must not contain NUL`), field);
  }
  assert.match(refused('createContainer', 'request body', create({ env: ['A=\u0000'] })), /field "env.0": must not contain NUL/);
  assert.match(refused('createContainer', 'request body', create({ cmd: ['sh', '-c', 'a\u0000'] })), /field "cmd.2": must not contain NUL/);
  assert.match(refused('createContainer', 'request body', create({ labels: { 'a\nb': 'x' } })), /field "labels.a\nb"/);
  assert.match(refused('createContainer', 'request body', create({ labels: { a: 'x\u0000' } })), /field "labels.a": must not contain NUL/);
  assert.match(refused('createContainer', 'request body', create({ labels: { a: 'x\ny' } })), /field "labels.a"/);
  check('createContainer', 'request body', create({ cmd: ['sh', '-c', 'echo a\n\techo b\r\n'], env: ['CERT=-----BEGIN\nabc\n-----END'] }));
  assert.match(refused('execInContainer', 'path parameter', { id: '\u0007' }), /NUL or other control/);
  assert.match(refused('execInContainer', 'request body', { args: ['a\u0000'] }), /field "args.0"/);
  assert.match(refused('execInContainer', 'request body', { args: [] }), /field "args": must have at least 1 item/);
});

test('deep nesting is a 400 naming where, at any depth (TypeBox\'s defaults recurse)', () => {
  let deep: unknown = 'x';
  for (let i = 0; i < 100_000; i++) deep = [deep];
  assert.match(refused('createNetwork', 'request body', { name: 'n', driver: deep }), /field "driver(\.0)+": nested deeper than 32 levels/);
  assert.match(refused('createContainer', 'request body', create({ labels: { a: deep } })), /field "labels\.a(\.0)+": nested deeper/);
});

test('every string, list and map is bounded', () => {
  assert.match(refused('createContainer', 'request body', create({ workdir: '/' + 'a'.repeat(4096) })), /field "workdir": must be at most 4096 characters/);
  assert.match(refused('createContainer', 'request body', create({ env: Array.from({ length: 1025 }, (_, i) => `A${i}=1`) })), /field "env": must have at most 1024 items/);
  assert.match(refused('createContainer', 'request body', create({ env: ['A=' + 'x'.repeat(32 * 1024)] })), /field "env.0": must be at most 32768 characters/);
  const labels = Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`k${i}`, 'v']));
  assert.match(refused('createContainer', 'request body', create({ labels })), /field "labels": must have at most 256 entries/);
  assert.match(refused('createContainer', 'request body', create({ labels: { ['k'.repeat(129)]: 'v' } })), /field "labels.k+"/);
  assert.match(refused('createContainer', 'request body', create({ labels: { '': 'v' } })), /field "labels."/);
  assert.match(refused('createContainer', 'request body', create({ cmd: ['x'.repeat(131_072)] })), /field "cmd.0": must be at most 131071 characters/);
  // argv and environment together fit the kernel's limit: the handler checks the total (1 MiB)
  assert.match(refused('createContainer', 'request body', create({ cmd: Array.from({ length: 4097 }, () => 'x') })), /field "cmd": must have at most 4096 items/);
  assert.match(refused('createUser', 'request body', { name: 'u', password: 'p'.repeat(1025) }), /field "password": must be at most 1024 characters/);
  assert.match(refused('pullImage', 'request body', { reference: 'r'.repeat(1025) }), /field "reference"/);
});

test('argv and environment together are bounded (the create and exec handlers check it)', () => {
  const arg = 'x'.repeat(100_000);
  checkTotalLength({ cmd: Array.from({ length: 10 }, () => arg), env: ['A=1'] }, 1024 * 1024);
  assert.throws(() => checkTotalLength({ entrypoint: [arg], cmd: Array.from({ length: 10 }, () => arg), env: undefined }, 1024 * 1024),
    /invalid request body fields "entrypoint", "cmd", "env": together at most 1048576 characters, got 1100011/);
});

test('field rules: host names, signals, addresses, users, numeric ranges, names', () => {
  for (const h of ['../../etc', '/', 'a b', '', '-a', 'a-', 'a..b', 'a_b', 'x'.repeat(64)]) {
    assert.match(refused('createContainer', 'request body', create({ hostname: h })), /field "hostname"/, JSON.stringify(h));
  }
  for (const h of ['web', 'web-1', 'web.example', '1host', 'x'.repeat(63)]) check('createContainer', 'request body', create({ hostname: h }));
  assert.equal(isHostname(`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`), true, '253 characters');
  assert.equal(isHostname(`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(62)}`), false, '254 characters');

  for (const s of ['SIGTERM', 'TERM', 'sigkill', '15', '9', 'SIGRTMIN+3', 'RTMAX-2', 'SIGIOT']) {
    check('createContainer', 'request body', create({ stopSignal: s }));
    check('killContainer', 'request body', { signal: s });
  }
  for (const s of ['SIGFOO', '0', '65', '015', '-9', 'SIGRTMIN-1', 'SIGRTMIN+31', 'SIG', '', 'x'.repeat(1_000_000)]) {
    assert.match(refused('createContainer', 'request body', create({ stopSignal: s })), /field "stopSignal"/, s.slice(0, 20));
    assert.match(refused('killContainer', 'request body', { signal: s }), /field "signal"/, s.slice(0, 20));
  }

  for (const ip of ['999.999.999.999', '1.2.3.999', '1.2.3', '01.2.3.4', '1.2.3.4 ', '::1']) {
    assert.match(refused('createContainer', 'request body', create({ ip })), /field "ip": must be an IPv4 address/, ip);
    assert.match(refused('createContainer', 'request body', create({ dns: [ip] })), /field "dns.0"/, ip);
    assert.match(refused('createContainer', 'request body', create({ ports: [{ hostIp: ip, hostPort: 1, containerPort: 1 }] })), /field "ports.0.hostIp"/, ip);
    assert.match(refused('createNetwork', 'request body', { name: 'n', gateway: ip }), /field "gateway"/, ip);
    assert.match(refused('connectNetwork', 'request body', { container: 'c', ip }), /field "ip"/, ip);
  }
  for (const subnet of ['10.0.0.0/33', '10.0.0.0', '10.0.0.256/24', '10.0.0.0/024', '10.0.0.0/-1']) {
    assert.match(refused('createNetwork', 'request body', { name: 'n', subnet }), /field "subnet": must be an IPv4 subnet/, subnet);
  }
  check('createNetwork', 'request body', { name: 'n', subnet: '10.0.0.0/24', gateway: '10.0.0.1' });
  for (const h of ['host:1.2.3.999', 'a b:1.2.3.4', ':1.2.3.4', 'host:', 'host:::1', 'host']) {
    assert.match(refused('createContainer', 'request body', create({ extraHosts: [h] })), /field "extraHosts.0"/, h);
  }
  check('createContainer', 'request body', create({ extraHosts: ['db:10.0.0.2', 'db.example:10.0.0.3'] }));

  for (const u of ['4294967295:4294967295', '4294967295', '2147483648', '0:2147483648', 'a:b:c', '', 'root:', ':root', 'a b', '-1']) {
    assert.match(refused('createContainer', 'request body', create({ user: u })), /field "user"/, u);
  }
  for (const u of ['root', '0', '1000:1000', '2147483647:0', 'www-data:www-data', 'nobody:65534', 'user.name']) check('createContainer', 'request body', create({ user: u }));

  assert.match(refused('createContainer', 'request body', create({ pidsLimit: 1e9 })), /field "pidsLimit": must be at most 4194304/);
  assert.match(refused('createContainer', 'request body', create({ pidsLimit: 1e308 })), /field "pidsLimit"/);
  assert.match(refused('createContainer', 'request body', create({ pidsLimit: 0 })), /field "pidsLimit": must be at least 1/);
  check('createContainer', 'request body', create({ pidsLimit: 4_194_304 }));
  assert.match(refused('createContainer', 'request body', create({ memoryBytes: 1e18 })), /field "memoryBytes": must be at most 1099511627776/);
  assert.match(refused('createContainer', 'request body', create({ memoryBytes: 1024 })), /field "memoryBytes": must be at least 6291456/);
  assert.match(refused('createContainer', 'request body', create({ cpus: 0 })), /field "cpus": must be more than 0/);
  assert.match(refused('createContainer', 'request body', create({ restart: { name: 'on-failure', maxRetries: 1e9 } })), /field "restart.maxRetries"/);
  assert.match(refused('createContainer', 'request body', create({ stopTimeout: 3601 })), /field "stopTimeout": must be at most 3600/);
  assert.match(refused('stopContainer', 'request body', { timeout: 1e9 }), /field "timeout": must be at most 3600/);
  assert.match(refused('restartContainer', 'request body', { timeout: -1 }), /field "timeout": must be at least 0/);
  assert.match(refused('setQuota', 'request body', { hard: { memory: 1e300 } }), /field "hard.memory"/);
  assert.match(refused('setQuota', 'request body', { gracePeriodMs: 2 ** 31 }), /field "gracePeriodMs"/);
  assert.match(refused('createApiKey', 'request body', { name: 'k', expiresInSeconds: 1e300 }), /field "expiresInSeconds"/);
  assert.match(refused('createQuotaPool', 'request body', { name: 'p', capacity: {}, weights: { a: 0 } }), /field "weights.a": must be more than 0/);

  assert.match(refused('createProject', 'request body', { name: 'p', parent: '' }), /field "parent": must not be empty/);
  assert.match(refused('createProject', 'request body', { name: '' }), /field "name"/);
  assert.match(refused('createProject', 'request body', { name: 'a/b' }), /field "name": must be a name/);
  assert.match(refused('createUser', 'request body', { name: 'a', password: 'long enough', defaultProject: '' }), /field "defaultProject"/);
  assert.match(refused('createContainer', 'request body', create({ image: '' })), /field "image": must not be empty/);
  assert.match(refused('createContainer', 'request body', create({ workdir: 'le' })), /field "workdir": must be an absolute path/);
  assert.match(refused('execInContainer', 'request body', { args: ['ls'], workdir: 'tmp' }), /field "workdir": must be an absolute path/);
  assert.match(refused('createContainer', 'request body', create({ network: '' })), /field "network"/);
  assert.match(refused('connectNetwork', 'request body', { container: '' }), /field "container"/);
});

test('the name pattern is core/ids.ts\'s isValidName', () => {
  const re = new RegExp(NAME_PATTERN);
  for (const n of ['a', 'A-b_c.d', '0', 'x'.repeat(128), 'x'.repeat(129), '', '-a', '.a', '_a', 'a b', 'a/b', 'ä', 'a\n']) {
    assert.equal(re.test(n), isValidName(n), JSON.stringify(n));
  }
});

test('signals: every accepted spelling has a form runc takes', () => {
  assert.equal(signalNumber('SIGTERM'), 15);
  assert.equal(signalNumber('term'), 15);
  assert.equal(signalNumber('SIGRTMIN'), 34);
  assert.equal(signalNumber('SIGRTMIN+3'), 37);
  assert.equal(signalNumber('SIGRTMAX'), 64);
  assert.equal(signalNumber('SIGRTMAX-30'), 34);
  assert.equal(signalNumber('SIGRTMAX-31'), undefined);
  assert.equal(canonicalSignal('kill'), 'SIGKILL');
  assert.equal(canonicalSignal('SIGIOT'), 'SIGABRT');
  assert.equal(canonicalSignal('SIGPOLL'), 'SIGIO');
  assert.equal(canonicalSignal('SIGRTMIN+3'), '37');
  assert.equal(canonicalSignal('9'), 'SIGKILL');
  assert.equal(canonicalSignal('40'), '40');
  assert.throws(() => canonicalSignal('SIGFOO'), RangeError);
});

/** Every schema node of a request part, hardened as enforced. */
function* nodes(s: TSchema, path = ''): Generator<[string, TSchema & Record<string, unknown>]> {
  const x = s as TSchema & Record<string, unknown>;
  yield [path, x];
  for (const [k, v] of Object.entries((x.properties ?? {}) as Record<string, TSchema>)) yield* nodes(v, `${path}.${k}`);
  for (const [k, v] of Object.entries((x.patternProperties ?? {}) as Record<string, TSchema>)) yield* nodes(v, `${path}[${k}]`);
  if (x.items) yield* nodes(x.items as TSchema, `${path}[]`);
  for (const m of (x.anyOf ?? x.allOf ?? []) as TSchema[]) yield* nodes(m, path);
}

test('every request schema of every route is bounded once hardened (a new route cannot forget)', () => {
  for (const r of routes) {
    for (const [where, schema] of [['path parameter', r.params], ['query parameter', r.query], ['request body', r.body]] as const) {
      if (!schema) continue;
      for (const [path, n] of nodes(harden(schema, where))) {
        const at = `${r.operationId} ${where}${path}`;
        assert.ok(!UNBOUNDED_KINDS.has(String(n[Kind])), `${at}: ${String(n[Kind])} bounds nothing`);
        if (n[Kind] === 'String') {
          assert.ok(typeof n.maxLength === 'number' && n.maxLength <= 131_071, `${at}: maxLength`);
          assert.ok(typeof n.pattern === 'string' && n.pattern.startsWith('^[^\\x00') || String(n.pattern).startsWith('^(?=[^\\x00'), `${at}: control characters`);
        }
        if (n[Kind] === 'Array') assert.ok(typeof n.maxItems === 'number' && n.maxItems <= 4096, `${at}: maxItems`);
        if (n[Kind] === 'Record') {
          assert.ok(typeof n.maxProperties === 'number' && n.maxProperties <= DEFAULT_LIMITS.recordMaxProperties, `${at}: maxProperties`);
          assert.equal(n.additionalProperties, false, `${at}: keys outside the key pattern`);
        }
        if (n[Kind] === 'Object' && where === 'request body') assert.equal(n.additionalProperties, false, `${at}: unknown fields`);
        if (n[Kind] === 'Integer' || n[Kind] === 'Number') {
          assert.ok(typeof n.maximum === 'number' || typeof n.exclusiveMaximum === 'number', `${at}: maximum`);
          assert.ok(typeof n.minimum === 'number' || typeof n.exclusiveMinimum === 'number', `${at}: minimum`);
        }
      }
    }
  }
});

test('/openapi.json documents the enforced bounds', () => {
  const doc = buildOpenApi(routes, 'test') as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: Record<string, unknown> }> } }>> };
  const body = doc.paths['/containers']!.post!.requestBody!.content['application/json']!.schema as {
    additionalProperties: boolean; properties: Record<string, Record<string, unknown>>;
  };
  assert.equal(body.additionalProperties, false);
  assert.equal(body.properties.env!.maxItems, 1024);
  assert.equal(body.properties.hostname!.format, 'hostname');
  assert.equal(body.properties.workdir!.maxLength, 4096);
  assert.equal(body.properties.pidsLimit!.maximum, 4_194_304);
  assert.equal((body.properties.restart as { additionalProperties: boolean }).additionalProperties, false);
});
