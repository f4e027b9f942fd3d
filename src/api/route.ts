/**
 * Routes are data: method, path, schemas and a thin handler. The server
 * validates with the same TypeBox schemas that generate /openapi.json.
 */
import type { IncomingMessage } from 'node:http';
import type { Static, TSchema } from '@sinclair/typebox';
import type { Services } from '../control/services.js';

/** What a route needs from the caller; enforced at the edge (tenancy adds roles). */
export type Access = 'public' | 'read' | 'write';

/** A streamed response: newline-delimited JSON or server-sent events. */
export interface StreamBody {
  kind: 'ndjson' | 'sse';
  source: AsyncIterable<unknown>;
}

export interface RouteResult<R> {
  status?: number;
  body?: R | StreamBody;
}

export interface RouteContext<P, Q, B> {
  params: P;
  query: Q;
  body: B;
  services: Services;
  req: IncomingMessage;
  /** Aborted when the client goes away. */
  signal: AbortSignal;
}

export interface Route<P extends TSchema = TSchema, Q extends TSchema = TSchema, B extends TSchema = TSchema, R extends TSchema = TSchema> {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string; // "/containers/{id}"
  operationId: string;
  summary: string;
  tag: string;
  access: Access;
  params?: P;
  query?: Q;
  body?: B;
  /** JSON response schema; streaming routes describe the items they stream. */
  response: R;
  status?: number;
  streams?: 'ndjson' | 'sse';
  /** The body is a raw stream of this content type (read from ctx.req), not JSON. */
  rawBody?: string;
  handler(ctx: RouteContext<Static<P>, Static<Q>, Static<B>>): Promise<RouteResult<Static<R>> | Static<R>> | RouteResult<Static<R>> | Static<R>;
}

export function route<P extends TSchema, Q extends TSchema, B extends TSchema, R extends TSchema>(
  r: Route<P, Q, B, R>,
): Route {
  return r as unknown as Route;
}

export function stream(kind: StreamBody['kind'], source: AsyncIterable<unknown>): RouteResult<never> {
  return { body: { kind, source } as never };
}

export function isStreamBody(b: unknown): b is StreamBody {
  return typeof b === 'object' && b !== null && 'kind' in b && 'source' in b &&
    ((b as StreamBody).kind === 'ndjson' || (b as StreamBody).kind === 'sse');
}
