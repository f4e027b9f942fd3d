/** /openapi.json generated from the route table's own schemas. */
import type { TSchema } from '@sinclair/typebox';
import type { Route } from './route.js';
import { HTTP_STATUS } from '../core/http-status.js';
import { ErrorBody } from './schemas.js';
import { harden } from './validate.js';

function strip(schema: TSchema): Record<string, unknown> {
  // TypeBox schemas are JSON Schema plus symbol-keyed metadata, which JSON drops.
  return JSON.parse(JSON.stringify(schema)) as Record<string, unknown>;
}

function parameters(schema: TSchema | undefined, where: 'path' | 'query') {
  if (!schema) return [];
  // Documented as enforced: the route's schema with validate.ts's defaults.
  const s = strip(harden(schema, where === 'path' ? 'path parameter' : 'query parameter')) as { properties?: Record<string, Record<string, unknown>>; required?: string[] };
  return Object.entries(s.properties ?? {}).map(([name, prop]) => ({
    name,
    in: where,
    required: where === 'path' || (s.required ?? []).includes(name),
    schema: prop,
    ...(typeof prop.description === 'string' ? { description: prop.description } : {}),
  }));
}

/** The route's auth declaration as JSON (owner functions dropped). */
function authOf(r: Route): unknown {
  return r.auth ? JSON.parse(JSON.stringify(r.auth)) : { global: 'admin', undeclared: true };
}

/** Routes that take their project from the query string accept ?project= (id, path or name). */
function projectParameter(r: Route) {
  const a = r.auth;
  if (!a || !('project' in a) || (a.project !== 'query' && a.project !== 'query-or-all' && a.project !== 'query-list')) return [];
  if (r.query && JSON.stringify(r.query).includes('"project"')) return [];
  const description =
    a.project === 'query' ? "Project id, path or name (default: the caller's default project)"
    : a.project === 'query-list' ? "Project id, path or name (default: the caller's default project); * for every project the caller can read"
    : 'Only this project (default: every project the caller can read)';
  return [{ name: 'project', in: 'query', required: false, schema: { type: 'string' }, description }];
}

export function buildOpenApi(routes: Route[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const errorStatuses = [...new Set(Object.values(HTTP_STATUS))].sort();
  for (const r of routes) {
    const status = String(r.status ?? 200);
    const content = r.streams
      ? { [r.streams === 'sse' ? 'text/event-stream' : 'application/x-ndjson']: { schema: strip(r.response) } }
      : { 'application/json': { schema: strip(r.response) } };
    const responses: Record<string, unknown> = {
      [status]: status === '204' ? { description: 'No content' } : { description: r.summary, content },
    };
    for (const s of errorStatuses) {
      responses[String(s)] = { description: 'Error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
    }
    const op: Record<string, unknown> = {
      operationId: r.operationId,
      summary: r.summary,
      tags: [r.tag],
      'x-nimbus-access': r.access,
      'x-nimbus-auth': authOf(r),
      parameters: [...parameters(r.params, 'path'), ...parameters(r.query, 'query'), ...projectParameter(r)],
      responses,
    };
    if (r.body) op.requestBody = { required: true, content: { 'application/json': { schema: strip(harden(r.body, 'request body')) } } };
    if (r.rawBody) op.requestBody = { required: true, content: { [r.rawBody]: { schema: { type: 'string', format: 'binary' } } } };
    (paths[r.path] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.0.3',
    info: { title: 'Nimbus API', version, description: 'Containers, images and operations on a Nimbus host.' },
    paths,
    components: { schemas: { Error: strip(ErrorBody) } },
  };
}
