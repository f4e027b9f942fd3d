/**
 * Routes are data: method, path, schemas and a thin handler. The server
 * validates with the same TypeBox schemas that generate /openapi.json.
 */
import type { IncomingMessage } from 'node:http';
import type { Static, TSchema } from '@sinclair/typebox';
import type { Services } from '../control/services.js';
import type { Principal, PrincipalAccess } from '../control/identity/access.js';
import type { Role } from '../store/records.js';
import type { ProjectScope } from '../control/identity/scope.js';

/** Whether a route reads or writes; documented in OpenAPI. Who may call it is `auth`. */
export type Access = 'public' | 'read' | 'write';

/** Where the edge finds the project a request acts on. */
export type ProjectSource =
  /** `?project=` (id, path or name); absent → the caller's default project. */
  | 'query'
  /** Listings: like 'query', and `?project=*` lists every project the caller can read (the handler filters with `auth.canRead`). */
  | 'query-list'
  /** `?project=` narrows to one project; absent → all, and the handler filters with `auth.canRead`. */
  | 'query-or-all'
  /** A body field naming the project; absent → none (a root), which only a system administrator may act on. */
  | { body: string }
  /**
   * A path parameter naming a resource; `owner` looks it up in `scope` (the `?project=` project, else every
   * project the caller can read) and returns its project id, or that and the resource's global id, which
   * then replaces the parameter so the handler acts on exactly what was authorised. It throws NotFound if
   * nothing in scope matches. Without `owner` the parameter names a project.
   */
  | { param: string; kind: string; owner?: (services: Services, value: string, scope: ProjectScope) => Promise<string | { projectId: string; id: string }> };

/**
 * What a route needs from the caller, enforced by the edge before the handler
 * runs. A route without one is refused to all but system administrators.
 */
export type RouteAuth =
  /** Anyone, even unauthenticated TCP callers. */
  | { public: true }
  /** Any authenticated caller; the handler acts on the caller's own things or filters by what it can read. */
  | { authenticated: true }
  /** System-wide administration. */
  | { global: 'admin' }
  /** At least `role` on the project (or, with on: 'parent', on its parent; a root's parent is the system). */
  | { role: Role; project: ProjectSource; on?: 'parent' };

/** What the edge established about the caller, for handlers. */
export interface RequestAuth {
  principal: Principal | undefined;
  /** The project the edge resolved and checked, for routes with `project`. */
  projectId: string | undefined;
  /** For routes whose path names a resource: the parameter and the resource's global id it was resolved to. */
  resource?: { param: string; id: string };
  /**
   * The role the edge required and on which project (null: the system's, as for a global route or a
   * root project); absent when the route needs none. A stream is held to it while it lasts (open-streams.ts).
   */
  checked?: { projectId: string | null; role: Role };
  /** projectId, or an error for routes that have none. */
  project(): string;
  roleOn(projectId: string): Role | undefined;
  canRead(projectId: string | null | undefined): boolean;
  /** Every project the caller may read, for a query to filter by; undefined: all (a system administrator). */
  readableProjects(): string[] | undefined;
  /** A stream's recheck: roleOn and canRead answer from the caller's access as it is now, not as it was at the open. */
  renew(principal: Principal, access: PrincipalAccess | undefined): void;
}

/** A streamed response: newline-delimited JSON or server-sent events. */
export interface StreamBody {
  kind: 'ndjson' | 'sse';
  source: AsyncIterable<unknown>;
}

export interface RouteResult<R> {
  status?: number;
  body?: R | StreamBody;
  /** Extra response headers (a paged list's Link and X-Total-Count). */
  headers?: Record<string, string>;
}

export interface RouteContext<P, Q, B> {
  params: P;
  query: Q;
  body: B;
  services: Services;
  req: IncomingMessage;
  auth: RequestAuth;
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
  /** Who may call it (see RouteAuth). Optional only so routes from parallel branches still compile; the access test demands it. */
  auth?: RouteAuth;
  params?: P;
  query?: Q;
  body?: B;
  /** JSON response schema; streaming routes describe the items they stream. */
  response: R;
  status?: number;
  streams?: 'ndjson' | 'sse';
  /** The body is a raw stream of this content type (read from ctx.req), not JSON. */
  rawBody?: string;
  /** Largest request body (413 beyond it). JSON bodies default to the edge's limit (4 MiB); raw bodies are unbounded unless set (then checked on Content-Length). */
  maxBodyBytes?: number;
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
