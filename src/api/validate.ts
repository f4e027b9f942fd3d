/**
 * Request validation, once for every route: strict JSON, exact wire conversion, and bounds
 * no route can forget.
 *
 * - JSON bodies are never converted: `12345` is not a string, `"true"` is not a boolean,
 *   `"x"` is not a list, 1.5 is not an integer. Schema defaults are applied.
 * - Query strings and path parameters are strings on the wire, so they are converted, exactly:
 *   booleans only from "true"/"false", integers only from /^-?\d+$/ within ±2^53-1, numbers
 *   only from a finite decimal. Anything else is a 400 naming the field.
 * - Every schema is hardened before use (`harden`), so a new route gets the defaults too:
 *     objects          unknown fields refused (bodies; a schema may opt out with additionalProperties: true)
 *     strings          at most DEFAULT_LIMITS.stringMaxLength characters, no control characters
 *                      (C0, DEL, C1); a string marked `'x-text': 'multiline'` may carry tab, LF and CR
 *     lists            at most DEFAULT_LIMITS.arrayMaxItems items
 *     maps (records)   at most DEFAULT_LIMITS.recordMaxProperties keys of 1..keyMaxLength characters, no control characters
 *     integers/numbers within ±Number.MAX_SAFE_INTEGER
 *     nesting          at most DEFAULT_LIMITS.maxDepth objects and lists deep
 *   A schema's own bound wins. /openapi.json shows the hardened schemas, so the documented
 *   ranges are the enforced ones (docs/api-input.md lists them).
 * - Errors name the field: `invalid request body field "hostname": must be a host name (RFC 1123)`.
 */
import { isIPv4 } from 'node:net';
import { FormatRegistry, Kind, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors';
import { Value } from '@sinclair/typebox/value';
import { InvalidArgument } from '../core/errors.js';
import { signalNumber } from '../core/signals.js';
import { isHostname } from '../core/hostname.js';
import { MAX_UID } from '../core/limits.js';

export type Where = 'path parameter' | 'query parameter' | 'request body';

/** What a schema gets when it says nothing. */
export const DEFAULT_LIMITS = {
  stringMaxLength: 4096,
  arrayMaxItems: 1024,
  recordMaxProperties: 256,
  keyMaxLength: 256,
  /** Objects and lists within each other; no schema nests past 4, and TypeBox's Value.Default recurses (a 20,000-deep list overflowed the stack). */
  maxDepth: 32,
} as const;

/** C0 controls, DEL and C1 controls: never in a request string by default. */
const CONTROL = '\\x00-\\x1f\\x7f-\\x9f';
/** The same, but tab, LF and CR are text (scripts, PEM blocks). */
const CONTROL_BUT_WHITESPACE = '\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f';
const CONTROL_RE = /[\x00-\x1f\x7f-\x9f]/;
/** The key pattern TypeBox gives Type.Record(Type.String(), …): any key at all. */
const ANY_KEY = '^(.*)$';

// ---- formats: each also names what it expects, for the error message -----------------------

/** RFC 1123 host name (253 characters at most): core's, named here for the formats below. */
export { isHostname };

function isIdNumber(s: string): boolean {
  return /^(0|[1-9][0-9]{0,9})$/.test(s) && Number(s) <= MAX_UID;
}

/** A user or group name: what useradd and Docker take (no ':' and nothing that is all digits). */
function isAccountName(s: string): boolean {
  return /^[a-zA-Z0-9_.][a-zA-Z0-9_.-]{0,255}\$?$/.test(s) && !/^[0-9]+$/.test(s);
}

/** "user", "uid", "user:group", "uid:gid" in any mix, ids 0..MAX_UID. */
export function isUserSpec(s: string): boolean {
  const parts = s.split(':');
  return parts.length <= 2 && parts.every((p) => isIdNumber(p) || isAccountName(p));
}

export function isIpv4Cidr(s: string): boolean {
  const m = /^([^/]+)\/(0|[1-9][0-9]?)$/.exec(s);
  return !!m && isIPv4(m[1]!) && Number(m[2]) <= 32;
}

export const FORMATS: Record<string, { check: (s: string) => boolean; expects: string }> = {
  ipv4: { check: (s) => isIPv4(s), expects: 'an IPv4 address (four numbers 0-255)' },
  'ipv4-cidr': { check: isIpv4Cidr, expects: 'an IPv4 subnet ADDRESS/PREFIX, prefix 0-32' },
  hostname: { check: isHostname, expects: 'a host name (RFC 1123: labels of letters, digits and \'-\', 1-63 each, 253 in all)' },
  'host-entry': {
    check: (s) => {
      const at = s.indexOf(':');
      return at > 0 && isHostname(s.slice(0, at)) && isIPv4(s.slice(at + 1));
    },
    expects: 'NAME:IPV4 (a host name and an IPv4 address)',
  },
  signal: { check: (s) => signalNumber(s) !== undefined, expects: 'a signal: a name (SIGTERM, TERM, SIGRTMIN+3) or a number 1-64' },
  user: { check: isUserSpec, expects: `user[:group], by name or id (ids 0-${MAX_UID})` },
};
for (const [name, f] of Object.entries(FORMATS)) FormatRegistry.Set(name, f.check);

// ---- hardening -------------------------------------------------------------------------------

type Schema = TSchema & Record<string, unknown>;

function noControl(pattern: unknown, multiline: boolean): string {
  const cls = multiline ? CONTROL_BUT_WHITESPACE : CONTROL;
  if (typeof pattern !== 'string') return `^[^${cls}]*$`;
  // A lookahead in front keeps the schema's own pattern as it was.
  return pattern.startsWith('^') ? `^(?=[^${cls}]*$)${pattern.slice(1)}` : `^(?=[^${cls}]*$)[\\s\\S]*?(?:${pattern})`;
}

function hardenSchema(s: Schema, closeObjects: boolean, inAllOf = false): Schema {
  const out: Schema = { ...s }; // spread keeps TypeBox's symbol keys (Kind, Optional)
  switch (s[Kind]) {
    case 'Object': {
      const props = (s.properties ?? {}) as Record<string, Schema>;
      out.properties = Object.fromEntries(Object.entries(props).map(([k, v]) => [k, hardenSchema(v, closeObjects)]));
      if (closeObjects && !inAllOf && s.additionalProperties === undefined) out.additionalProperties = false;
      break;
    }
    case 'Record': {
      const entries = Object.entries((s.patternProperties ?? {}) as Record<string, Schema>).map(([k, v]) => [
        k === ANY_KEY ? `^[^${CONTROL}]{1,${DEFAULT_LIMITS.keyMaxLength}}$` : k,
        hardenSchema(v, closeObjects),
      ]);
      out.patternProperties = Object.fromEntries(entries);
      if (s.additionalProperties === undefined) out.additionalProperties = false;
      out.maxProperties ??= DEFAULT_LIMITS.recordMaxProperties;
      break;
    }
    case 'Array':
      out.items = hardenSchema(s.items as Schema, closeObjects);
      out.maxItems ??= DEFAULT_LIMITS.arrayMaxItems;
      break;
    case 'String':
      out.maxLength ??= DEFAULT_LIMITS.stringMaxLength;
      out.pattern = noControl(s.pattern, s['x-text'] === 'multiline');
      break;
    case 'Integer':
    case 'Number':
      if (s.minimum === undefined && s.exclusiveMinimum === undefined) out.minimum = -Number.MAX_SAFE_INTEGER;
      if (s.maximum === undefined && s.exclusiveMaximum === undefined) out.maximum = Number.MAX_SAFE_INTEGER;
      break;
    case 'Union':
      out.anyOf = (s.anyOf as Schema[]).map((m) => hardenSchema(m, closeObjects, inAllOf));
      break;
    case 'Intersect':
      out.allOf = (s.allOf as Schema[]).map((m) => hardenSchema(m, closeObjects, true));
      if (closeObjects && s.unevaluatedProperties === undefined) out.unevaluatedProperties = false;
      break;
    default:
      break; // literals, booleans, null: nothing to bound
  }
  return out;
}

/** The schema as enforced: the route's own plus the defaults above (also what /openapi.json documents). */
export function harden<T extends TSchema>(schema: T, where: Where): T {
  return hardenSchema(schema as Schema, where !== 'query parameter') as unknown as T;
}

/** Kinds that bound nothing; a request schema must not contain them (checked by validate.test.ts). */
export const UNBOUNDED_KINDS = new Set(['Unknown', 'Any', 'Unsafe']);

// ---- wire conversion (query strings and path parameters) --------------------------------------

const INTEGER_RE = /^-?[0-9]+$/;
const DECIMAL_RE = /^-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;

class WireError extends Error {}

function fromWireScalar(s: Schema, v: string): unknown {
  switch (s[Kind]) {
    case 'Boolean':
      if (v === 'true') return true;
      if (v === 'false') return false;
      throw new WireError('must be true or false');
    case 'Integer': {
      const n = Number(v);
      if (INTEGER_RE.test(v) && Number.isSafeInteger(n)) return n;
      throw new WireError('must be a whole number');
    }
    case 'Number': {
      const n = Number(v);
      if (DECIMAL_RE.test(v) && Number.isFinite(n)) return n;
      throw new WireError('must be a decimal number');
    }
    case 'Literal':
      if (typeof s.const === 'string') return v;
      return fromWireScalar({ ...s, [Kind]: typeof s.const === 'boolean' ? 'Boolean' : 'Number' } as Schema, v);
    case 'Union': {
      // The first member the value converts to and satisfies; else the first conversion error.
      let first: WireError | undefined;
      for (const m of s.anyOf as Schema[]) {
        try {
          const c = fromWire(m, v);
          if (Value.Check(m, c)) return c;
        } catch (e) {
          if (!(e instanceof WireError)) throw e;
          first ??= e;
        }
      }
      if (first) throw first;
      return v;
    }
    case 'Array':
      return [fromWireScalar(s.items as Schema, v)];
    default:
      return v;
  }
}

function fromWire(s: Schema, v: string | string[]): unknown {
  if (!Array.isArray(v)) return fromWireScalar(s, v);
  if (s[Kind] === 'Array') return v.map((x) => fromWireScalar(s.items as Schema, x));
  const list = s[Kind] === 'Union' ? (s.anyOf as Schema[]).find((m) => m[Kind] === 'Array') : undefined;
  if (list) return fromWire(list, v);
  throw new WireError('given more than once');
}

// ---- messages ----------------------------------------------------------------------------------

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'number') return Number.isInteger(v) ? 'a whole number' : 'a number';
  return `a ${typeof v}`;
}

/** What the field must be, in words; values are never echoed (they may be passwords or megabytes long). */
function describe(e: ValueError): string {
  const s = e.schema as Schema;
  switch (e.type) {
    case ValueErrorType.ObjectRequiredProperty: return 'is required';
    case ValueErrorType.ObjectAdditionalProperties:
    case ValueErrorType.IntersectUnevaluatedProperties:
      return 'is not a known field';
    case ValueErrorType.String: return `must be a string, got ${typeName(e.value)}`;
    case ValueErrorType.Integer: return `must be a whole number, got ${typeName(e.value)}`;
    case ValueErrorType.Number: return `must be a number, got ${typeName(e.value)}`;
    case ValueErrorType.Boolean: return `must be true or false, got ${typeName(e.value)}`;
    case ValueErrorType.Object: return `must be an object, got ${typeName(e.value)}`;
    case ValueErrorType.Array: return `must be a list, got ${typeName(e.value)}`;
    case ValueErrorType.Null: return 'must be null';
    case ValueErrorType.StringMaxLength: return `must be at most ${String(s.maxLength)} characters`;
    case ValueErrorType.StringMinLength: return s.minLength === 1 ? 'must not be empty' : `must be at least ${String(s.minLength)} characters`;
    case ValueErrorType.StringPattern:
      if (typeof e.value === 'string' && CONTROL_RE.test(e.value)) return 'must not contain NUL or other control characters';
      return typeof s['x-error'] === 'string' ? s['x-error'] : `must match ${String(s.pattern)}`;
    case ValueErrorType.StringFormat: return `must be ${FORMATS[String(s.format)]?.expects ?? String(s.format)}`;
    case ValueErrorType.IntegerMinimum:
    case ValueErrorType.NumberMinimum: return `must be at least ${String(s.minimum)}`;
    case ValueErrorType.IntegerMaximum:
    case ValueErrorType.NumberMaximum: return `must be at most ${String(s.maximum)}`;
    case ValueErrorType.IntegerExclusiveMinimum:
    case ValueErrorType.NumberExclusiveMinimum: return `must be more than ${String(s.exclusiveMinimum)}`;
    case ValueErrorType.IntegerExclusiveMaximum:
    case ValueErrorType.NumberExclusiveMaximum: return `must be less than ${String(s.exclusiveMaximum)}`;
    case ValueErrorType.ArrayMaxItems: return `must have at most ${String(s.maxItems)} items`;
    case ValueErrorType.ArrayMinItems: return `must have at least ${String(s.minItems)} item${s.minItems === 1 ? '' : 's'}`;
    case ValueErrorType.ObjectMaxProperties: return `must have at most ${String(s.maxProperties)} entries`;
    case ValueErrorType.Literal: return `must be ${JSON.stringify(s.const)}`;
    case ValueErrorType.Union: {
      const members = (s.anyOf ?? []) as Schema[];
      if (members.length && members.every((m) => m[Kind] === 'Literal')) return `must be one of ${members.map((m) => JSON.stringify(m.const)).join(', ')}`;
      return 'matches none of the allowed forms';
    }
    default:
      return e.message;
  }
}

/**
 * The first field holding a JSON array where the schema wants an object (an Object or a Record),
 * walking the value along the schema's properties, records and array items; undefined when none.
 */
function arrayForObject(schema: Schema, value: unknown, path: string): string | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  if (Array.isArray(value)) {
    if (schema.type === 'object') return path;
    if (schema.type !== 'array' || !schema.items) return undefined;
    for (let i = 0; i < value.length; i++) {
      const found = arrayForObject(schema.items as Schema, value[i], path ? `${path}.${i}` : String(i));
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (schema.type !== 'object') return undefined;
  const props = (schema.properties ?? {}) as Record<string, Schema>;
  const patterns = Object.values((schema.patternProperties ?? {}) as Record<string, Schema>);
  const extra = typeof schema.additionalProperties === 'object' ? (schema.additionalProperties as Schema) : undefined;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    const sub = props[k] ?? patterns[0] ?? extra;
    if (!sub) continue;
    const found = arrayForObject(sub, v, path ? `${path}.${k}` : k);
    if (found !== undefined) return found;
  }
  return undefined;
}

function fieldOf(path: string): string {
  return path.replace(/^\//, '').split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~')).join('.');
}

// ---- the check -------------------------------------------------------------------------------

/** The path of the first value nested deeper than maxDepth, or undefined; iterative, so any depth is safe to ask about. */
export function tooDeep(value: unknown, maxDepth: number = DEFAULT_LIMITS.maxDepth): string | undefined {
  const stack: [unknown, string[]][] = [[value, []]];
  while (stack.length) {
    const [v, path] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (path.length >= maxDepth) return path.join('.');
    for (const [k, child] of Object.entries(v as Record<string, unknown>)) stack.push([child, [...path, k]]);
  }
  return undefined;
}

interface Compiled {
  schema: TSchema;
  check: TypeCheck<TSchema>;
}
const compiled = new WeakMap<TSchema, Partial<Record<Where, Compiled>>>();

function strict(schema: TSchema, where: Where): Compiled {
  let byWhere = compiled.get(schema);
  if (!byWhere) compiled.set(schema, (byWhere = {}));
  let c = byWhere[where];
  if (!c) {
    const hardened = harden(schema, where);
    c = byWhere[where] = { schema: hardened, check: TypeCompiler.Compile(hardened) };
  }
  return c;
}

/**
 * Compile a route part's hardened check before its first request needs it (the server does this
 * for every route once it is up, a few at a time): the first request of each route otherwise paid
 * the compile, ~1-3 ms of the event loop (a fresh daemon's first pull, docs/image-transfer.md).
 */
export function prepareCheck(check: TypeCheck<TSchema>, where: Where): void {
  strict(check.Schema(), where);
}

function invalid(where: Where, field: string, what: string): Error {
  return new InvalidArgument(`invalid ${where}${field ? ` field "${field}"` : ''}: ${what}`, field ? { field } : undefined);
}

/**
 * The request part, checked against the route's schema hardened as above; returns it with
 * defaults applied (and, for query strings and path parameters, converted from strings).
 * `value` is the parsed JSON body (undefined when empty) or the raw strings of the wire.
 */
export function checkOrThrow(check: TypeCheck<TSchema> | undefined, value: unknown, where: Where): unknown {
  if (!check) return value;
  const { schema, check: hardened } = strict(check.Schema(), where);
  let input = value;
  let empty = false;
  if (where === 'request body') {
    if (input === undefined) {
      empty = true;
      input = {}; // an empty body is an empty object: fine where every field is optional, 400 where one is required
    } else if ((schema as Schema).type === 'object' && (input === null || typeof input !== 'object' || Array.isArray(input))) {
      throw new InvalidArgument(`invalid request body: must be a JSON object, got ${typeName(input)}`);
    }
    const deep = tooDeep(input);
    if (deep !== undefined) throw invalid(where, deep, `nested deeper than ${DEFAULT_LIMITS.maxDepth} levels`);
    // before defaults: Value.Default makes an empty array where an object belongs into {} (the fuzz found `labels: []` taken)
    const listed = arrayForObject(schema as Schema, input, '');
    if (listed !== undefined) throw invalid(where, listed, 'must be an object, got a list');
  } else if (input && typeof input === 'object') {
    const props = ((schema as Schema).properties ?? {}) as Record<string, Schema>;
    const converted: Record<string, unknown> = { ...(input as Record<string, unknown>) };
    for (const [k, v] of Object.entries(input as Record<string, string | string[]>)) {
      const p = props[k];
      if (!p) continue;
      try {
        converted[k] = fromWire(p, v);
      } catch (e) {
        if (e instanceof WireError) throw invalid(where, k, e.message);
        throw e;
      }
    }
    input = converted;
  }
  const withDefaults: unknown = Value.Default(schema, input);
  if (hardened.Check(withDefaults)) return withDefaults;
  const first = hardened.Errors(withDefaults).First();
  const field = first ? fieldOf(first.path) : '';
  const what = first ? describe(first) : 'does not match the schema';
  if (empty) throw new InvalidArgument(`request body required: ${field ? `field "${field}" ` : ''}${what}`, field ? { field } : undefined);
  throw invalid(where, field, what);
}

/**
 * Strings that end up together in one place the kernel bounds (argv and environment of one
 * process): their total length, over `max`, is a 400 naming the fields.
 */
export function checkTotalLength(fields: Record<string, readonly string[] | undefined>, max: number): void {
  let total = 0;
  for (const list of Object.values(fields)) for (const s of list ?? []) total += s.length + 1;
  if (total > max) {
    const names = Object.keys(fields).map((f) => `"${f}"`).join(', ');
    throw new InvalidArgument(`invalid request body fields ${names}: together at most ${max} characters, got ${total}`);
  }
}
