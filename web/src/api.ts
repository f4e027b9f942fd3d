/**
 * The dashboard's only way to the server: the public REST API, same origin, a bearer token.
 * Nothing here knows more than a `curl` user would; the server authorises every call.
 */

const TOKEN_KEY = 'nimbus.token';

export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export interface Whoami {
  user: string;
  systemAdmin: boolean;
  via: string;
  defaultProject: string | null;
  roles: { project: string; role: string }[];
}

export interface Project { id: string; name: string; path: string; parentId: string | null }

export type InstanceKind = 'container' | 'vm';

/** Containers and VMs in one shape for the list. */
export interface Instance {
  kind: InstanceKind;
  id: string;
  name: string;
  projectId: string;
  status: string;
  image: string;
  cpus: number | undefined;
  memoryMiB: number | undefined;
  host: string;
  createdAt: string;
}

export interface NimbusEvent {
  seq: number;
  time: string;
  type: string;
  action: string;
  id: string;
  projectId?: string;
  attributes?: Record<string, unknown>;
}

export interface LogLine { time: string; stream: 'stdout' | 'stderr'; line: string }

export interface ResourceFigures {
  hard: number; used: number; reserved: number; allocated: number; free: number;
  lent: number; borrowed: number; pool: number; lendingLimit: number; borrowingLimit: number;
}
export interface QuotaView {
  id: string;
  resources: Record<string, ResourceFigures>;
  pools: { id: string; owner: string; capacity: Record<string, number>; used: Record<string, number>; members: { project: string; weight: number }[] }[];
  memberOf: string[];
}
export interface Loan { lenderPath: string; borrowerPath: string; resource: string; amount: number; instance?: string }
export interface Explanation { admitted: boolean; reason: string; decidedBy: { projectPath: string; resource?: string }; loans: Loan[] }

export interface Host {
  name: string; local: boolean; state: string; reason?: string; zone: string; disabled: boolean; disabledReason?: string; lastSeenAt?: string;
  cpus?: number; memoryBytes?: number; diskBytes?: number;
  allocationRatios: { cpu: number; memory: number; disk: number };
  allocated?: { vcpus: number; memoryBytes: number; diskBytes: number; instances: number };
  vms: number; containers?: number;
}

export function storedToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called when the server says the token is no longer good (expired, revoked). */
let onUnauthenticated: () => void = () => undefined;
export function whenLoggedOut(fn: () => void): void {
  onUnauthenticated = fn;
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const token = storedToken();
  return { ...(token ? { authorization: `Bearer ${token}` } : {}), ...extra };
}

async function failure(res: Response): Promise<ApiError> {
  let code = 'Unknown';
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch {
    // not JSON: keep the status line
  }
  if (res.status === 401) {
    setToken(null);
    onUnauthenticated();
  }
  return new ApiError(res.status, code, message);
}

export async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: headers(body === undefined ? {} : { 'content-type': 'application/json' }),
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    ...(signal ? { signal } : {}),
  });
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const q = (project: string) => `project=${encodeURIComponent(project)}`;

export async function login(user: string, password: string): Promise<void> {
  const r = await call<{ token: string }>('POST', '/auth/login', { user, password });
  setToken(r.token);
}

export async function logout(): Promise<void> {
  try {
    await call('POST', '/auth/logout');
  } finally {
    setToken(null);
  }
}

/** Reads a streamed response line by line (NDJSON or SSE) until it ends or signal aborts. */
async function* lines(path: string, signal: AbortSignal, onOpen?: () => void): AsyncGenerator<string> {
  const res = await fetch(path, { headers: headers(), signal });
  if (!res.ok || !res.body) throw await failure(res);
  onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        yield buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
      }
    }
    if (buffered) yield buffered;
  } finally {
    reader.releaseLock();
  }
}

/** NDJSON records of a streamed response (logs with follow=true). */
export async function* ndjson<T>(path: string, signal: AbortSignal): AsyncGenerator<T> {
  for await (const line of lines(path, signal)) if (line.trim()) yield JSON.parse(line) as T;
}

/**
 * The event stream (SSE over fetch: EventSource cannot send the Authorization header).
 * Reconnects after a drop, asking for what it missed with ?since=.
 */
export function followEvents(onEvent: (e: NimbusEvent) => void, signal: AbortSignal, onConnected?: () => void): Promise<void> {
  return eventStream('', undefined, onEvent, signal, { ...(onConnected ? { onConnected } : {}), stopOn: [401] });
}

/**
 * The stream behind followEvents: from `since` (absent: from now), narrowed by
 * `query`; after a drop it asks for what it missed with ?since= (not a poll: one long request at
 * a time). Ends when `signal` aborts or the API answers a status in `stopOn`.
 */
async function eventStream(
  query: string, since: number | undefined, onEvent: (e: NimbusEvent) => void, signal: AbortSignal,
  opts: { onConnected?: () => void; stopOn: readonly number[] },
): Promise<void> {
  while (!signal.aborted) {
    try {
      const q = [query, since !== undefined ? `since=${since}` : ''].filter(Boolean).join('&');
      // connected once the headers are in: the stream itself is silent until something happens
      for await (const line of lines(`/events${q ? `?${q}` : ''}`, signal, opts.onConnected)) {
        if (!line.startsWith('data: ')) continue;
        const e = JSON.parse(line.slice(6)) as NimbusEvent;
        since = e.seq;
        onEvent(e);
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && opts.stopOn.includes(e.status)) return;
    }
    // the server went away: try again shortly
    await new Promise((r) => setTimeout(r, 2000));
  }
}

interface ContainerRecord {
  id: string; name: string; projectId: string; status: string; createdAt: string; host?: string;
  config: { image?: string; cpus?: number; memoryBytes?: number };
}
interface VmRecord {
  id: string; name: string; projectId: string; status: string; createdAt: string; agent: string;
  config: { cpus?: number; memoryMiB?: number; image?: string; kernel?: string; diskImage?: { name?: string } };
}

export const fromContainer = (c: ContainerRecord): Instance => ({
  kind: 'container', id: c.id, name: c.name, projectId: c.projectId, status: c.status, image: c.config.image ?? '',
  cpus: c.config.cpus, memoryMiB: c.config.memoryBytes === undefined ? undefined : Math.round(c.config.memoryBytes / 1048576),
  host: c.host ?? '', createdAt: c.createdAt,
});

export const fromVm = (v: VmRecord): Instance => ({
  kind: 'vm', id: v.id, name: v.name, projectId: v.projectId, status: v.status,
  image: v.config.image ?? v.config.diskImage?.name ?? v.config.kernel ?? '', cpus: v.config.cpus ?? 1, memoryMiB: v.config.memoryMiB,
  host: v.agent, createdAt: v.createdAt,
});

export async function listInstances(project: string, signal?: AbortSignal): Promise<Instance[]> {
  const [cs, vs] = await Promise.all([
    call<ContainerRecord[]>('GET', `/containers?all=true&${q(project)}`, undefined, signal),
    call<VmRecord[]>('GET', `/vms?all=true&${q(project)}`, undefined, signal),
  ]);
  return [...cs.map(fromContainer), ...vs.map(fromVm)];
}

/** One instance again after an event about it; undefined when it is gone. */
export async function fetchInstance(kind: InstanceKind, id: string): Promise<Instance | undefined> {
  try {
    return kind === 'container' ? fromContainer(await call<ContainerRecord>('GET', `/containers/${id}`)) : fromVm(await call<VmRecord>('GET', `/vms/${id}`));
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return undefined;
    throw e;
  }
}

export type Action = 'start' | 'stop' | 'restart' | 'pause' | 'unpause' | 'remove';

export async function act(i: Pick<Instance, 'kind' | 'id'>, action: Action): Promise<void> {
  const base = `/${i.kind === 'container' ? 'containers' : 'vms'}/${encodeURIComponent(i.id)}`;
  if (action === 'remove') await call('DELETE', `${base}?force=true`);
  else await call('POST', `${base}/${action}`, action === 'stop' || action === 'restart' ? {} : undefined);
}

/** Shared by every view's error line: the API's message, else the exception's text. */
export const messageOf = (e: unknown): string => (e instanceof ApiError ? e.message : String(e));

export interface DiskImage { projectId: string; name: string; format: 'raw' | 'qcow2' | 'kernel' | 'initrd'; size: number; virtualSize: number; createdAt: string }
export interface Network {
  id: string; name: string; projectId: string; driver: string; subnet: string; gateway: string; internal: boolean; builtin: boolean; createdAt: string;
  containers?: { id: string; name: string; address: string; ifName: string }[];
}
export interface ImageRecord { id: string; digest: string; projectId: string; tags: string[]; size: number; createdAt: string }
export interface Operation {
  id: string; kind: string; projectId: string; status: 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled'; target: string;
  progress: Record<string, unknown>; result: unknown; error: { code: string; message: string } | null; createdAt: string; updatedAt: string;
}
/** A pull's progress as the image service reports it on its operation (src/cli/progress.ts reads the same). */
export interface PullProgress { phase?: string; bytesDone?: number; bytesTotal?: number; layers?: { digest: string; status?: string; bytesDone?: number; bytesTotal?: number }[] }

export interface UsageTotals {
  instanceSeconds: number; cpuSeconds: number | null; memoryGiBHours: number; diskGiBHours: number | null;
  networkRxBytes: number | null; networkTxBytes: number | null;
}
export interface UsageReport {
  since: string | null; until: string | null; periodSeconds: number;
  projects: { id: string; name: string; parentId: string | null; own: UsageTotals; total: UsageTotals }[];
  series?: ({ start: string; projectId: string } & UsageTotals)[];
}
export interface AuditEntry { seq: number; at: number; kind: string; project: string; instance?: string; operation?: string; reason: string; data?: Record<string, unknown> }
export interface Grant { user: string; project: string; role: string; createdAt: string; inheritedFrom?: string | null }
export interface ApiKey { name: string; createdAt: string; expiresAt: string | null }

/**
 * Pull an image with its progress, as `nimbus image pull` does: the operation events' stream is
 * open before the pull starts (nothing missed), the end comes from /operations/{id}/wait.
 */
export async function pullImage(project: string, reference: string, onProgress: (p: PullProgress) => void): Promise<Operation> {
  const ac = new AbortController();
  let opId: string | undefined;
  const early: { id: string; progress: PullProgress }[] = [];
  let opened!: () => void;
  const open = new Promise<void>((r) => (opened = r));
  const watching = (async () => {
    for await (const line of lines('/events?type=operation', ac.signal, opened)) {
      if (!line.startsWith('data: ')) continue;
      const e = JSON.parse(line.slice(6)) as NimbusEvent;
      const progress = e.attributes?.progress as PullProgress | undefined;
      if (e.action !== 'progress' || !progress) continue;
      if (opId === undefined) early.push({ id: e.id, progress });
      else if (e.id === opId) onProgress(progress);
    }
  })().catch(() => opened());
  try {
    await open;
    let op = await call<Operation>('POST', `/images/pull?${q(project)}`, { reference });
    opId = op.id;
    for (const e of early.splice(0)) if (e.id === opId) onProgress(e.progress);
    while (op.status === 'pending' || op.status === 'running') op = await call<Operation>('GET', `/operations/${encodeURIComponent(op.id)}/wait?timeout=60`);
    if (op.progress) onProgress(op.progress as PullProgress);
    if (op.status !== 'succeeded') throw new ApiError(500, op.error?.code ?? 'Failed', op.error?.message ?? `pull ${op.status}`);
    return op;
  } finally {
    ac.abort();
    await watching;
  }
}
