/**
 * The kinds of work a chaos round drives through the API while nimbusd is SIGKILLed
 * under it. Each kind loops until told to stop (the kill), says what request is in
 * flight (printed with the kill), and records every id the API answered with (so leaks
 * can be told apart from other daemons' state on the same host).
 */
import type { UnixClient } from '../bench/lib/daemon.js';
import { freePort } from '../src/agent/network/network-test-env.js';

export type WorkKind = 'create' | 'remove' | 'pull' | 'network' | 'vm' | 'migrate';
/**
 * The default kinds; 'vm' (QEMU boots, save/restore) and 'migrate' (live migrations between the
 * embedded agent and a `nimbusd agent` process) only with --vms: each round costs a boot or two.
 */
export const WORK_KINDS: readonly WorkKind[] = ['create', 'remove', 'pull', 'network'];
export const VM_KINDS: readonly WorkKind[] = ['vm', 'migrate'];
export const ALL_KINDS: readonly WorkKind[] = [...WORK_KINDS, ...VM_KINDS];

/** The test guest (scripts/fixtures/guest.ts): a kernel and initrd the daemon may boot by path. */
export interface VmGuest {
  kernel: string;
  initrd: string;
  append: string;
}

export interface WorkContext {
  client: UnixClient;
  /** A small image already pulled (busybox). */
  image: string;
  /** Images to pull in pull rounds (larger: a pull takes long enough to be killed in). */
  pullRefs: string[];
  guest?: VmGuest;
  /** Agents a migrate round moves VMs between (the embedded "local" and a second process). */
  agents?: string[];
  rand: () => number;
  ids: Set<string>;
  /** The request in flight, for the kill report. */
  inFlight: Set<string>;
  stopped: () => boolean;
}

interface Operation {
  id: string;
  status: string;
  error?: unknown;
}

async function call<T>(ctx: WorkContext, what: string, method: string, path: string, body?: unknown): Promise<T> {
  ctx.inFlight.add(what);
  try {
    const r = await ctx.client.request<T>(method, path, body);
    if (r.status >= 500) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
    const id = (r.body as { id?: unknown } | undefined)?.id;
    if (typeof id === 'string' && /^[0-9a-f]{12,}$/.test(id)) ctx.ids.add(id);
    const details = (r.body as { details?: { container?: unknown } } | undefined)?.details?.container;
    if (typeof details === 'string') ctx.ids.add(details);
    return r.body;
  } finally {
    ctx.inFlight.delete(what);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let seq = 0;
const name = (p: string) => `${p}${(++seq).toString(36)}`;

async function container(ctx: WorkContext, start: boolean, extra: Record<string, unknown> = {}): Promise<string | undefined> {
  const n = name('c');
  // some with limits, among them a writable layer of its own size (a loop-mounted filesystem the reconcile must not leak)
  const limits = ctx.rand() < 0.3 ? { memoryBytes: 64 * 1024 * 1024, cpus: 0.5, storageBytes: 32 * 1024 * 1024 } : {};
  const c = await call<{ id?: string }>(ctx, `create ${n}${start ? ' (start)' : ''}`, 'POST', '/containers', { image: ctx.image, name: n, cmd: ['sleep', '1000'], start, ...limits, ...extra });
  return c?.id;
}

async function createLoop(ctx: WorkContext): Promise<void> {
  while (!ctx.stopped()) {
    const extra: Record<string, unknown> = ctx.rand() < 0.2 ? { autoRemove: true } : {};
    // a published port: a DNAT rule in the daemon's table and a host-side listener
    if (ctx.rand() < 0.25) extra.ports = [{ hostIp: '127.0.0.1', hostPort: await freePort(), containerPort: 80 }];
    await container(ctx, ctx.rand() < 0.6, extra);
  }
}

async function removeLoop(ctx: WorkContext): Promise<void> {
  while (!ctx.stopped()) {
    const id = await container(ctx, ctx.rand() < 0.7);
    if (!id || ctx.stopped()) continue;
    if (ctx.rand() < 0.3) await call(ctx, `stop ${id.slice(0, 12)}`, 'POST', `/containers/${id}/stop`, { timeout: 1 });
    await call(ctx, `rm -f ${id.slice(0, 12)}`, 'DELETE', `/containers/${id}?force=true`);
  }
}

async function pullLoop(ctx: WorkContext, ref: string): Promise<void> {
  while (!ctx.stopped()) {
    const op = await call<Operation>(ctx, `pull ${ref}`, 'POST', '/images/pull', { reference: ref });
    for (let done = false; !done && !ctx.stopped(); ) {
      const o = await call<Operation>(ctx, `pull ${ref} (wait)`, 'GET', `/operations/${op.id}/wait?timeout=30`);
      done = o.status !== 'running' && o.status !== 'pending' && o.status !== 'queued';
    }
    if (ctx.stopped()) return;
    await call(ctx, `image rm ${ref}`, 'DELETE', `/images/${encodeURIComponent(ref)}?force=true`);
  }
}

async function networkLoop(ctx: WorkContext): Promise<void> {
  while (!ctx.stopped()) {
    const n = name('net');
    const net = await call<{ id?: string }>(ctx, `network create ${n}`, 'POST', '/networks', { name: n, driver: ctx.rand() < 0.3 ? 'route' : 'bridge' });
    if (!net?.id) continue;
    const a = await container(ctx, true, { network: n });
    const b = await container(ctx, ctx.rand() < 0.7);
    if (b) {
      await call(ctx, `network connect ${n} ${b.slice(0, 12)}`, 'POST', `/networks/${net.id}/connect`, { container: b });
      await call(ctx, `network disconnect ${n} ${b.slice(0, 12)}`, 'POST', `/networks/${net.id}/disconnect`, { container: b });
      await call(ctx, `rm -f ${b.slice(0, 12)}`, 'DELETE', `/containers/${b}?force=true`);
    }
    if (a) await call(ctx, `rm -f ${a.slice(0, 12)}`, 'DELETE', `/containers/${a}?force=true`);
    await call(ctx, `network rm ${n}`, 'DELETE', `/networks/${net.id}`);
  }
}

async function waitOp(ctx: WorkContext, what: string, op: Operation | undefined): Promise<void> {
  if (!op?.id) return;
  for (let done = false; !done && !ctx.stopped(); ) {
    const o = await call<Operation>(ctx, `${what} (wait)`, 'GET', `/operations/${op.id}/wait?timeout=30`);
    done = o.status !== 'running' && o.status !== 'pending' && o.status !== 'queued';
  }
}

/** create → start → (save → restore) → rm -f, some with a NIC on the default network (a tap). */
async function vmLoop(ctx: WorkContext): Promise<void> {
  const g = ctx.guest;
  if (!g) throw new Error('vm rounds need the test guest (--vms)');
  while (!ctx.stopped()) {
    const n = name('vm');
    const vm = await call<{ id?: string }>(ctx, `vm create ${n}`, 'POST', '/vms', {
      name: n, memoryMiB: 128, kernel: g.kernel, initrd: g.initrd, append: g.append, ...(ctx.rand() < 0.5 ? { networks: ['bridge'] } : {}),
    });
    if (!vm?.id) continue;
    const id = vm.id;
    await call(ctx, `vm start ${n}`, 'POST', `/vms/${id}/start`);
    await sleep(ctx.rand() * 400);
    if (ctx.rand() < 0.7) {
      await waitOp(ctx, `vm save ${n}`, await call<Operation>(ctx, `vm save ${n}`, 'POST', `/vms/${id}/save`));
      if (ctx.rand() < 0.5) await waitOp(ctx, `vm restore ${n}`, await call<Operation>(ctx, `vm restore ${n}`, 'POST', `/vms/${id}/restore`));
    }
    await call(ctx, `vm rm -f ${n}`, 'DELETE', `/vms/${id}?force=true`);
  }
}

/**
 * create on a random agent → start → live-migrate back and forth between the agents, now and
 * then rm -f and start over: the kill meets a migration (either half) most of the time.
 */
async function migrateLoop(ctx: WorkContext): Promise<void> {
  const g = ctx.guest;
  const agents = ctx.agents ?? [];
  if (!g || agents.length < 2) throw new Error('migrate rounds need the test guest and two agents');
  while (!ctx.stopped()) {
    const n = name('mig');
    let at = agents[Math.floor(ctx.rand() * agents.length)]!;
    const vm = await call<{ id?: string }>(ctx, `vm create ${n} on ${at}`, 'POST', '/vms', { name: n, memoryMiB: 128, agent: at, kernel: g.kernel, initrd: g.initrd, append: g.append });
    if (!vm?.id) continue;
    const id = vm.id;
    await call(ctx, `vm start ${n}`, 'POST', `/vms/${id}/start`);
    await sleep(ctx.rand() * 1000);
    // back and forth until the kill; now and then rm -f it and start over on a fresh VM
    while (!ctx.stopped()) {
      const to = agents.find((a) => a !== at)!;
      const what = `vm migrate ${n} ${at} → ${to}`;
      const op = await call<Operation>(ctx, what, 'POST', `/vms/${id}/migrate`, { to });
      if (!op?.id) throw new Error(`${what}: ${JSON.stringify(op)}${await whyEnded(ctx, id)}`);
      for (let done = false; !done && !ctx.stopped(); ) {
        const o = await call<Operation>(ctx, `${what} (wait)`, 'GET', `/operations/${op.id}/wait?timeout=30`);
        done = o.status !== 'running' && o.status !== 'pending' && o.status !== 'queued';
        if (done && o.status !== 'succeeded' && !ctx.stopped()) throw new Error(`${what}: ${o.status} ${JSON.stringify(o.error)}${await whyEnded(ctx, id)}`);
      }
      at = to;
      if (ctx.rand() < 0.15) break;
      await sleep(ctx.rand() * 300);
    }
    if (!ctx.stopped()) await call(ctx, `vm rm -f ${n}`, 'DELETE', `/vms/${id}?force=true`);
  }
}

/**
 * Why a VM a migration found stopped ended, as its host recorded it: a guest that reset right after
 * arriving is the TCG migration's corruption (docs/vms.md "Left"), not the kill's doing.
 */
async function whyEnded(ctx: WorkContext, id: string): Promise<string> {
  const v = await call<{ host?: { lifecycle?: string; endCause?: string }; exitCode?: number | null }>(ctx, `vm inspect ${id}`, 'GET', `/vms/${id}`).catch(() => undefined);
  const h = v?.host;
  return h?.lifecycle === 'stopped' ? ` (its host recorded it ended: ${h.endCause ?? 'no cause'}, exit ${v?.exitCode ?? '?'})` : '';
}

/** Runs the kind's loops (two at a time: concurrent requests are where the races are) until stopped. */
export async function runWork(kind: WorkKind, ctx: WorkContext): Promise<string[]> {
  const errors: string[] = [];
  const guard = async (fn: () => Promise<void>) => {
    while (!ctx.stopped()) {
      try {
        await fn();
      } catch (e) {
        // after the kill every request fails; before it, a failure is worth printing
        if (!ctx.stopped()) errors.push(e instanceof Error ? e.message : String(e));
        await sleep(50);
      }
    }
  };
  const loops: Record<WorkKind, (() => Promise<void>)[]> = {
    create: [() => createLoop(ctx), () => createLoop(ctx)],
    remove: [() => removeLoop(ctx), () => removeLoop(ctx)],
    pull: ctx.pullRefs.map((r) => () => pullLoop(ctx, r)),
    network: [() => networkLoop(ctx), () => createLoop(ctx)],
    vm: [() => vmLoop(ctx)],
    migrate: [() => migrateLoop(ctx)],
  };
  await Promise.all(loops[kind].map(guard));
  return errors;
}
