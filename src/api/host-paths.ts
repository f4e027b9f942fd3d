/**
 * Fields that may name a file on a host. A tenant must never reach the host's files through
 * the API, so such a field is declared in its route's schema (`[HOST_PATH]: true`) and the edge
 * refuses a host path in it (a value starting with '/') to everyone but system administrators,
 * before the handler runs. The services check again (defence in depth) and the agent accepts only
 * files inside the roots the operator allowed (src/agent/drivers/vm/host-files.ts).
 *
 * test/host-paths.test.ts walks every route's schemas: a string field whose name suggests a file
 * must be declared here or listed there as reviewed, so a new one cannot slip in unmarked.
 */
import type { TSchema } from '@sinclair/typebox';
import { PermissionDenied } from '../core/errors.js';
import type { Route } from './route.js';
import type { Principal } from '../control/identity/access.js';

/** The schema keyword marking a field that may carry a host path. */
export const HOST_PATH = 'x-nimbus-host-path';

/** Dotted paths ("a.b", "list[]", "map{}") of the fields of a schema whose own schema matches. */
export function fieldsWhere(schema: TSchema | undefined, match: (s: TSchema & Record<string, unknown>) => boolean, prefix = ''): string[] {
  if (!schema || typeof schema !== 'object') return [];
  const s = schema as TSchema & Record<string, unknown>;
  const out: string[] = [];
  if (match(s)) out.push(prefix);
  if (s.properties && typeof s.properties === 'object') {
    for (const [k, v] of Object.entries(s.properties as Record<string, TSchema>)) out.push(...fieldsWhere(v, match, prefix ? `${prefix}.${k}` : k));
  }
  if (s.items && typeof s.items === 'object') out.push(...fieldsWhere(s.items as TSchema, match, `${prefix}[]`));
  for (const key of ['anyOf', 'allOf', 'oneOf'] as const) {
    if (Array.isArray(s[key])) for (const v of s[key] as TSchema[]) out.push(...fieldsWhere(v, match, prefix));
  }
  if (s.patternProperties && typeof s.patternProperties === 'object') {
    for (const v of Object.values(s.patternProperties as Record<string, TSchema>)) out.push(...fieldsWhere(v, match, `${prefix}{}`));
  }
  return [...new Set(out)];
}

/** Dotted paths of the host-path fields in a schema. */
export function hostPathFields(schema: TSchema | undefined): string[] {
  return fieldsWhere(schema, (s) => s[HOST_PATH] === true);
}

/** The values found at a dotted field path ("a.b", "list[]", "map{}"). */
function valuesAt(value: unknown, path: string): unknown[] {
  if (path === '') return [value];
  const m = /^([^.[{]+|\[\]|\{\})(?:\.)?(.*)$/.exec(path);
  if (!m) return [];
  const [, head, rest] = m as unknown as [string, string, string];
  if (head === '[]') return Array.isArray(value) ? value.flatMap((v) => valuesAt(v, rest)) : [];
  if (head === '{}') return value && typeof value === 'object' ? Object.values(value).flatMap((v) => valuesAt(v, rest)) : [];
  if (!value || typeof value !== 'object' || Array.isArray(value)) return [];
  const next = (value as Record<string, unknown>)[head];
  return next === undefined ? [] : valuesAt(next, rest);
}

/** Refuses (403) a host path in a declared field unless the caller is a system administrator. */
export function refuseHostPaths(route: Route, parts: { params?: unknown; query?: unknown; body?: unknown }, principal: Principal | undefined): void {
  if (principal?.systemAdmin) return;
  for (const [where, schema, value] of [['path parameter', route.params, parts.params], ['query parameter', route.query, parts.query], ['request body field', route.body, parts.body]] as const) {
    for (const field of hostPathFields(schema)) {
      for (const v of valuesAt(value, field)) {
        if (typeof v === 'string' && v.startsWith('/')) {
          throw new PermissionDenied(`${where} "${field}": host paths are for system administrators; use an image of the image service`);
        }
      }
    }
  }
}
