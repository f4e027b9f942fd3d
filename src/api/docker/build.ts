/**
 * POST /build: the legacy builder's protocol (docker CLI 20.10 with DOCKER_BUILDKIT=0) over
 * Nimbus's builds (control/images/build-service.ts, buildah on the host). The body is the context
 * tar (gzip accepted); the answer streams JSON lines: {"stream":"Step 1/3 : FROM …\n"}, the
 * builder's output, then {"aux":{"ID":…}}, "Successfully built …", "Successfully tagged …", or an
 * {"errorDetail":…,"error":…} line. rm/forcerm are accepted and moot (every build removes its
 * containers); nocache runs every step again, past the project's layer cache.
 */
import type { IncomingMessage } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { createGunzip } from 'node:zlib';
import { InvalidArgument, PayloadTooLarge, PermissionDenied } from '../../core/errors.js';
import { atLeast } from '../../control/identity/roles.js';
import { StepNumbering } from '../../core/build-output.js';
import { MAX_BUILD_CONTEXT_BYTES, type BuildProgressDoc } from '../../control/images/build-service.js';
import type { OperationRecord } from '../../store/records.js';
import { familiarName } from './mapping.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';

const POLL_MS = 150;

/** A JSON object of string values from a query parameter (buildargs, labels); null values (an unset --build-arg) are left out. */
function stringMap(raw: string | null, what: string): Record<string, string> {
  if (!raw) return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new InvalidArgument(`${what} is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgument(`${what} must be a JSON object`);
  const out: Record<string, string> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (x === null) continue;
    if (typeof x !== 'string') throw new InvalidArgument(`${what}: ${k.slice(0, 100)} must be a string`);
    out[k] = x;
  }
  return out;
}

/** X-Registry-Config: base64 JSON of the CLI's credentials by registry (the FROM images' pulls use them). */
export function registryConfig(header: string | undefined): Record<string, { username: string; password: string }> {
  if (!header) return {};
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(header.replace(/-/g, '+').replace(/_/g, '/'), 'base64').toString('utf8'));
  } catch {
    throw new InvalidArgument('X-Registry-Config is not base64 JSON');
  }
  const out: Record<string, { username: string; password: string }> = {};
  if (typeof doc !== 'object' || doc === null) return out;
  for (const [registry, c] of Object.entries(doc as Record<string, { username?: unknown; password?: unknown }>)) {
    if (c && typeof c.username === 'string' && c.username) out[registry.replace(/^https?:\/\//, '').replace(/\/.*$/, '')] = { username: c.username, password: typeof c.password === 'string' ? c.password : '' };
  }
  return out;
}

/** The body, gunzipped when it is gzip (docker build --compress), as chunks. */
async function* contextBody(req: IncomingMessage): AsyncGenerator<Uint8Array> {
  const len = Number(req.headers['content-length']);
  if (Number.isFinite(len) && len > MAX_BUILD_CONTEXT_BYTES) throw new PayloadTooLarge(`the build context is larger than ${MAX_BUILD_CONTEXT_BYTES} bytes`);
  const it = (req as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  const first = await it.next();
  if (first.done) return;
  const rest = (async function* () {
    yield first.value;
    for (;;) {
      const n = await it.next();
      if (n.done) return;
      yield n.value;
    }
  })();
  if (first.value[0] !== 0x1f || first.value[1] !== 0x8b) {
    yield* rest;
    return;
  }
  const gunzip = createGunzip();
  const feed = (async () => {
    for await (const c of rest) if (!gunzip.write(c)) await new Promise((r) => gunzip.once('drain', r));
    gunzip.end();
  })().catch((e: unknown) => gunzip.destroy(e as Error));
  yield* gunzip as AsyncIterable<Buffer>;
  await feed;
}

/**
 * The body read and dropped (at most DRAIN_BYTES), then the refusal: the CLI is still sending the
 * context when a refusal comes, and one that arrives before its upload ends is a broken pipe to it
 * ("connection broken"), not the refusal.
 */
async function refuseAfterDrain(req: IncomingMessage, e: unknown): Promise<never> {
  let n = 0;
  try {
    for await (const c of req as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > DRAIN_BYTES) break;
    }
  } catch {
    /* the client went: the refusal has nobody to reach anyway */
  }
  throw e;
}
const DRAIN_BYTES = 64 * 1024 * 1024;

async function build(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, req, res, project, auth } = ctx;
  // the route is open to readers at the edge so that this refusal can wait for the upload's end
  const role = auth.roleOn(project);
  if (!atLeast(role, 'member')) {
    await refuseAfterDrain(req, new PermissionDenied(`image build needs the member role on project "${await services.projects.path(project)}"${role ? `; you are ${role}` : ''}`));
  }
  try {
    return await startBuild(ctx);
  } catch (e) {
    if (!res.headersSent && !req.complete) await refuseAfterDrain(req, e);
    throw e;
  }
}

async function startBuild(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, query, req, res, project, signal, auth } = ctx;
  if (!services.builds) throw new InvalidArgument('this daemon does not build images');
  const networkmode = query.get('networkmode') ?? '';
  if (!['', 'default', 'none', 'host'].includes(networkmode)) throw new InvalidArgument(`networkmode ${networkmode.slice(0, 64)} is not supported for builds (none, or host for administrators)`);
  const memory = Number(query.get('memory') ?? 0);
  const cpuQuota = Number(query.get('cpuquota') ?? 0);
  const cpuPeriod = Number(query.get('cpuperiod') ?? 0) || 100_000;
  const quiet = query.get('q') === '1' || query.get('q') === 'true';
  const op = await services.builds.start({
    projectId: project,
    tags: query.getAll('t').filter(Boolean),
    ...(query.get('dockerfile') ? { dockerfile: query.get('dockerfile')! } : {}),
    buildArgs: stringMap(query.get('buildargs'), 'buildargs'),
    labels: stringMap(query.get('labels'), 'labels'),
    ...(query.get('target') ? { target: query.get('target')! } : {}),
    network: networkmode === 'host' ? 'host' : 'none',
    mayUseHostNetwork: auth.principal?.systemAdmin === true,
    resources: { ...(memory > 0 ? { memoryBytes: memory } : {}), ...(cpuQuota > 0 ? { cpus: cpuQuota / cpuPeriod } : {}) },
    credentials: registryConfig(req.headers['x-registry-config'] as string | undefined),
    ...(query.get('nocache') === '1' || query.get('nocache') === 'true' ? { noCache: true } : {}),
  }, contextBody(req));
  res.writeHead(200, { 'content-type': 'application/json' });
  const line = (doc: unknown) => res.write(JSON.stringify(doc) + '\n');
  let steps: StepNumbering | undefined;
  let sent = 0; // lines shown so far, counted from the build's first
  let cur: OperationRecord = op;
  for (;;) {
    const p = cur.progress as Partial<BuildProgressDoc> & { totalSteps?: number };
    steps ??= p.totalSteps !== undefined ? new StepNumbering(p.totalSteps) : undefined;
    const lines = p.lines ?? [];
    const dropped = p.dropped ?? 0;
    if (steps) {
      for (let i = Math.max(0, sent - dropped); i < lines.length; i++) {
        const shown = steps.docker(lines[i]!);
        if (shown !== undefined && !quiet) line({ stream: `${shown}\n` });
      }
      sent = dropped + lines.length;
    }
    if (cur.status !== 'pending' && cur.status !== 'running') break;
    if (signal.aborted) return HANDLED; // the build goes on; its outcome is the operation's
    await sleep(POLL_MS);
    cur = await services.operations.get(op.id);
  }
  if (cur.status !== 'succeeded') {
    const message = cur.error?.message ?? `build ${cur.status}`;
    res.end(JSON.stringify({ errorDetail: { message }, error: message }) + '\n');
    return HANDLED;
  }
  const result = cur.result as { digest: string; tags: string[] };
  line({ aux: { ID: result.digest } });
  // docker build -q prints what the stream says: the image's id alone
  if (quiet) line({ stream: `${result.digest}\n` });
  else {
    line({ stream: `Successfully built ${result.digest.replace(/^sha256:/, '').slice(0, 12)}\n` });
    for (const t of result.tags) line({ stream: `Successfully tagged ${familiarName(t)}\n` });
  }
  res.end();
  return HANDLED;
}

export const buildRoutes: DockerRoute[] = [{ method: 'POST', pattern: /^\/build$/, name: 'image build', access: 'reader', handler: build }];
