/**
 * Authentication and authorisation at the edge, once for every route.
 *
 * - A unix-socket request without a token is the local administrator (Docker's
 *   model: the socket is root-only, mode 0660). TCP needs a bearer token or API key.
 * - Resources of projects the caller cannot read do not exist for it (404, as
 *   Incus and OpenStack do); a caller that can see a project but lacks the role
 *   the route needs gets 403.
 */
import type { IncomingMessage } from 'node:http';
import { Internal, InvalidArgument, NotFound, PermissionDenied, Unauthenticated } from '../core/errors.js';
import type { Principal, PrincipalAccess } from '../control/identity/access.js';
import { atLeast } from '../control/identity/roles.js';
import type { Services } from '../control/services.js';
import type { Role } from '../store/records.js';
import type { ProjectSource, RequestAuth, Route, RouteAuth } from './route.js';
import type { ProjectScope } from '../control/identity/scope.js';

export type Transport = 'unix' | 'tcp';

/** A route that declares nothing: system administrators only (fail closed). */
const UNDECLARED: RouteAuth = { global: 'admin' };

function bearer(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  if (!h) return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(h);
  if (!m) throw new Unauthenticated('the Authorization header must be "Bearer <token>"');
  return m[1];
}

export async function authenticate(req: IncomingMessage, transport: Transport, services: Services): Promise<Principal | undefined> {
  const token = bearer(req);
  if (token !== undefined) return services.identity.authenticate(token);
  if (transport === 'unix') {
    return (await services.identity?.localAdmin(services.defaultProjectId)) ??
      { userId: null, name: 'local-admin', systemAdmin: true, defaultProjectId: services.defaultProjectId ?? null, via: 'socket', tokenId: null };
  }
  return undefined;
}

/** The part of a route's declaration that needs the request body (checked after the body is read). */
export function needsBody(route: Route): boolean {
  const a = route.auth;
  return !!a && 'project' in a && typeof a.project === 'object' && 'body' in a.project;
}

interface Request {
  params: Record<string, string>;
  rawQuery: Record<string, string | string[]>;
  body: unknown;
}

export async function authorize(route: Route, principal: Principal | undefined, services: Services, r: Request): Promise<RequestAuth> {
  const decl = route.auth ?? UNDECLARED;
  // a system administrator's role is everywhere: no grants to load
  let now: { principal: Principal | undefined; access: PrincipalAccess | undefined } = {
    principal,
    access: principal && !principal.systemAdmin ? await services.access?.forPrincipal(principal) : undefined,
  };
  const ctx = (projectId: string | undefined, resource?: RequestAuth['resource'], checked?: RequestAuth['checked']): RequestAuth => ({
    principal,
    projectId,
    ...(resource ? { resource } : {}),
    ...(checked ? { checked } : {}),
    project() {
      if (projectId === undefined) throw new Internal(`route ${route.operationId} has no project`);
      return projectId;
    },
    roleOn: (id) => (now.principal?.systemAdmin ? 'admin' : now.access?.roleOn(id)),
    canRead: (id) => !!now.principal && (now.principal.systemAdmin || !!now.access?.canRead(id)),
    readableProjects: () => (!now.principal ? [] : now.principal.systemAdmin ? undefined : (now.access?.readableProjects() ?? [])),
    renew(p, access) {
      now = { principal: p, access };
    },
  });
  if ('public' in decl) return ctx(undefined);
  if (!principal) throw new Unauthenticated('authentication required: log in (nimbus login) or send an API key as a bearer token');
  if ('authenticated' in decl) return ctx(undefined);
  if ('global' in decl) {
    if (!principal.systemAdmin) throw new PermissionDenied(`${route.operationId} needs a system administrator`);
    return ctx(undefined, undefined, { projectId: null, role: 'admin' });
  }
  const a = ctx(undefined);
  const target = await resolveTarget(decl.project, principal, services, r, (id) => a.canRead(id));
  if (target === undefined) return a; // all readable projects: the handler filters
  if (target !== null && !a.canRead(target.id)) throw new NotFound(`no such ${target.kind}: ${target.ref}`);
  const checkOn = target === null ? null : decl.on === 'parent' ? (await services.store.projects.get(target.id))?.parentId ?? null : target.id;
  const have: Role | undefined = checkOn === null ? (principal.systemAdmin ? 'admin' : undefined) : a.roleOn(checkOn);
  if (!atLeast(have, decl.role)) {
    const where = checkOn === null ? 'the system (root projects)' : `project "${await services.projects.path(checkOn)}"`;
    throw new PermissionDenied(`${route.operationId} needs the ${decl.role} role on ${where}${have ? `; you are ${have}` : ''}`);
  }
  return ctx(target?.id, target?.resource, { projectId: checkOn, role: decl.role });
}

/** undefined: every readable project (query-or-all without ?project=, query-list with ?project=*); null: a root (no parent) — system administrators only. */
async function resolveTarget(
  source: ProjectSource,
  principal: Principal,
  services: Services,
  r: Request,
  visible: (id: string) => boolean,
): Promise<{ id: string; kind: string; ref: string; resource?: RequestAuth['resource'] } | null | undefined> {
  const named = async (ref: string) => ({ id: (await services.projects.resolve(ref, visible)).id, kind: 'project', ref });
  if (source === 'query' || source === 'query-or-all' || source === 'query-list') {
    const q = r.rawQuery.project;
    const ref = Array.isArray(q) ? q[0] : q;
    if (ref === '*' && source === 'query-list') return undefined;
    if (ref) return named(ref);
    if (source === 'query-or-all') return undefined;
    if (!principal.defaultProjectId) throw new InvalidArgument('no project given and you have no default project: pass ?project= (nimbus --project P)');
    return { id: principal.defaultProjectId, kind: 'project', ref: principal.defaultProjectId };
  }
  if ('body' in source) {
    const v = r.body && typeof r.body === 'object' ? (r.body as Record<string, unknown>)[source.body] : undefined;
    if (v === undefined || v === null || v === '') return null;
    return named(String(v));
  }
  const value = r.params[source.param];
  if (value === undefined) throw new Internal(`route declares project from missing path parameter ${source.param}`);
  if (!source.owner) return named(value);
  // Names are unique per project: look the resource up in ?project= when given, else in every project the caller can read.
  const q = r.rawQuery.project;
  const projectRef = Array.isArray(q) ? q[0] : q;
  const scope: ProjectScope = projectRef && projectRef !== '*'
    ? { projectId: (await named(projectRef)).id }
    : { canRead: visible, preferProjectId: principal.defaultProjectId };
  const owner = await source.owner(services, value, scope);
  if (typeof owner === 'string') return { id: owner, kind: source.kind, ref: value };
  return { id: owner.projectId, kind: source.kind, ref: value, resource: { param: source.param, id: owner.id } };
}
