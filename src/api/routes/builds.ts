/** POST /images/build: a Dockerfile build of the request body (a context tar) in the caller's project (docs/builds.md). */
import { Type } from '@sinclair/typebox';
import { InvalidArgument, Unavailable } from '../../core/errors.js';
import { MAX_BUILD_CONTEXT_BYTES } from '../../control/images/build-service.js';
import { route } from '../route.js';
import { Operation } from '../schemas.js';

const OneOrMore = (s: ReturnType<typeof Type.String>, maxItems: number) => Type.Optional(Type.Union([s, Type.Array(s, { maxItems })]));
const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** "K=V" pairs (buildarg=, label=) into a map; a pair without "=" is refused. */
export function keyValues(pairs: string[], what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new InvalidArgument(`${what} must be KEY=VALUE, got ${JSON.stringify(p.slice(0, 100))}`);
    const k = p.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_.-]*$/.test(k)) throw new InvalidArgument(`${what}: ${JSON.stringify(k.slice(0, 100))} is not a valid name`);
    out[k] = p.slice(eq + 1);
  }
  return out;
}

export const buildRoutes = [
  route({
    method: 'POST', path: '/images/build', operationId: 'buildImage', tag: 'images', access: 'write',
    auth: { role: 'member', project: 'query' },
    summary: 'Build an image from a Dockerfile (request body: the build context as a tar); returns an Operation (202) whose progress carries the build output',
    status: 202, rawBody: 'application/x-tar', maxBodyBytes: MAX_BUILD_CONTEXT_BYTES,
    query: Type.Object({
      tag: OneOrMore(Type.String({ minLength: 1, maxLength: 1024 }), 16),
      dockerfile: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
      target: Type.Optional(Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$' })),
      buildarg: OneOrMore(Type.String({ minLength: 2, maxLength: 64 * 1024 }), 256),
      label: OneOrMore(Type.String({ minLength: 2, maxLength: 4096 }), 256),
      network: Type.Optional(Type.Union([Type.Literal('none'), Type.Literal('host')])),
      cpus: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 64 })),
      memory: Type.Optional(Type.Integer({ minimum: 64 * 1024 * 1024, description: 'bytes' })),
      nocache: Type.Optional(Type.Boolean({ description: 'Run every step again, past the project\'s layer cache (its results are still cached)' })),
    }),
    response: Operation,
    handler: async ({ query, services, req, auth }) => {
      if (!services.builds) throw new Unavailable('this daemon does not build images');
      const op = await services.builds.start({
        projectId: auth.project(),
        tags: list(query.tag),
        ...(query.dockerfile ? { dockerfile: query.dockerfile } : {}),
        buildArgs: keyValues(list(query.buildarg), 'buildarg'),
        labels: keyValues(list(query.label), 'label'),
        ...(query.target ? { target: query.target } : {}),
        ...(query.network ? { network: query.network } : {}),
        mayUseHostNetwork: auth.principal?.systemAdmin === true,
        resources: { ...(query.cpus !== undefined ? { cpus: query.cpus } : {}), ...(query.memory !== undefined ? { memoryBytes: query.memory } : {}) },
        ...(query.nocache ? { noCache: true } : {}),
      }, req);
      return { status: 202, body: op };
    },
  }),
];
