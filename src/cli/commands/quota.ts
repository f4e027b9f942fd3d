import { UsageError, parseSize, type CommandSpec } from '../args.js';
import { printJson, table } from '../output.js';
import { clientOf } from './shared.js';
import { currentProject } from './identity.js';

const UNLIMITED = 2 ** 40;
const RESOURCES = ['instances', 'cpus', 'memory', 'networks', 'volumes', 'disk'] as const;
type Vector = Partial<Record<(typeof RESOURCES)[number], number>>;

/** "cpus=2", "memory=512m", "disk=10g" (memory and disk in MiB; sizes accepted) → vector. */
function vectorOf(pairs: string[], what: string): Vector | undefined {
  if (!pairs.length) return undefined;
  const v: Vector = {};
  for (const p of pairs) {
    const [k, raw] = p.split('=');
    if (!k || raw === undefined || !(RESOURCES as readonly string[]).includes(k)) {
      throw new UsageError(`${what} takes RESOURCE=AMOUNT with RESOURCE one of ${RESOURCES.join(', ')}, got "${p}"`);
    }
    v[k as keyof Vector] = k === 'memory' || k === 'disk' ? memoryMiB(raw) : wholeNumber(raw, k);
  }
  return v;
}
/** MiB from "512m" or plain MiB; "unlimited" as the ledger has it for a root nobody limited. */
const memoryMiB = (s: string) => (s === 'unlimited' ? UNLIMITED : /^\d+$/.test(s) ? Number(s) : Math.ceil(parseSize(s) / (1024 * 1024)));
/** --container-memory: MiB, 0 for none, null for "inherit". */
/** A per-project container default: a size (MiB), 0 (none) or "inherit" (null: the parent's). */
const containerDefault = (s: string) => (s === 'inherit' ? null : s === '0' ? 0 : memoryMiB(s));
function wholeNumber(s: string, what: string): number {
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`${what} must be a whole number, got "${s}"`);
  return n;
}

interface Figures { hard: number; used: number; reserved: number; allocated: number; free: number; lent: number; borrowed: number; pool: number }
const fmt = (n: number, r: string) => (n >= UNLIMITED ? 'unlimited' : r === 'memory' || r === 'disk' ? `${n}MiB` : String(n));

export const quotaCommands: CommandSpec[] = [
  {
    name: 'quota show', usage: '[PROJECT]', summary: "A project's ledger: hard, used, reserved, allocated, free, lent, borrowed", maxArgs: 1, options: [],
    async run({ args, global }) {
      const view = await clientOf(global).json<{ resources: Record<string, Figures>; containerMemoryDefault?: number | null; containerStorageDefault?: number | null; unsizedContainerMemory?: number; unsizedContainerStorage?: number }>('GET', `/quota/${encodeURIComponent(args[0] ?? (await currentProject(global)))}`);
      if (global.output === 'json') return printJson(view), 0;
      const cols = ['hard', 'used', 'reserved', 'allocated', 'free', 'lent', 'borrowed', 'pool'] as const;
      const rows = Object.entries(view.resources).map(([r, f]) => [r, ...cols.map((c) => fmt(f[c], r))]);
      process.stdout.write(table(['RESOURCE', ...cols.map((c) => c.toUpperCase())], rows));
      if (view.unsizedContainerMemory !== undefined) {
        const own = view.containerMemoryDefault === null || view.containerMemoryDefault === undefined ? 'inherited' : 'set here';
        process.stdout.write(`a container without --memory: ${view.unsizedContainerMemory ? `${view.unsizedContainerMemory}MiB (${own})` : 'unlimited, best effort'}\n`);
      }
      if (view.unsizedContainerStorage !== undefined) {
        const own = view.containerStorageDefault === null || view.containerStorageDefault === undefined ? 'inherited' : 'set here';
        process.stdout.write(`a container without --storage: ${view.unsizedContainerStorage ? `a writable layer of ${view.unsizedContainerStorage}MiB, charged to disk (${own})` : 'an unbounded writable layer'}\n`);
      }
      return 0;
    },
  },
  {
    name: 'quota set', usage: 'PROJECT', summary: "Change a project's limits", minArgs: 1, maxArgs: 1,
    options: [
      { name: 'instances', type: 'number', value: 'N', description: 'Hard limit on instances' },
      { name: 'cpus', type: 'number', value: 'N', description: 'Hard limit on CPUs' },
      { name: 'memory', type: 'string', value: 'SIZE', description: 'Hard limit on memory (e.g. 8g; plain numbers are MiB; "unlimited" on a root project). Where it is limited, a container created without --memory is given and charged nimbusd --container-memory-default (512m unless set)' },
      { name: 'networks', type: 'number', value: 'N', description: 'Hard limit on networks' },
      { name: 'volumes', type: 'number', value: 'N', description: 'Hard limit on named volumes' },
      { name: 'disk', type: 'string', value: 'SIZE', description: "Hard limit on the size of named volumes and containers' writable layers together (e.g. 100g; plain numbers are MiB; unlimited)" },
      { name: 'reserved', type: 'list', value: 'RES=N', description: 'Held for this project, never lent' },
      { name: 'lendable', type: 'list', value: 'RES=N', description: 'How much idle capacity siblings may borrow' },
      { name: 'borrow-limit', type: 'list', value: 'RES=N', description: 'How much this project may borrow from siblings' },
      { name: 'grace', type: 'number', value: 'SECS', description: 'Grace period before reclaimed instances are evicted' },
      { name: 'container-memory', type: 'string', value: 'SIZE', description: 'What a container created without --memory is given here while memory is limited (e.g. 256m; 0: none, best effort; "inherit": the parent\'s, up to the daemon\'s 512m)' },
      { name: 'container-storage', type: 'string', value: 'SIZE', description: 'What the writable layer of a container created without --storage may hold here while disk is limited, charged to disk (e.g. 10g, at least 16m; 0: none, unbounded; "inherit": the parent\'s, up to the daemon\'s 1g)' },
    ],
    async run({ args, opts, global }) {
      const hard: Vector = {};
      for (const r of ['instances', 'cpus', 'networks', 'volumes'] as const) if (opts[r] !== undefined) hard[r] = wholeNumber(String(opts[r]), r);
      if (opts.memory !== undefined) hard.memory = memoryMiB(String(opts.memory));
      if (opts.disk !== undefined) hard.disk = memoryMiB(String(opts.disk));
      const body = {
        ...(Object.keys(hard).length ? { hard } : {}),
        ...(vectorOf(opts.reserved as string[], '--reserved') ? { reserved: vectorOf(opts.reserved as string[], '--reserved') } : {}),
        ...(vectorOf(opts.lendable as string[], '--lendable') ? { lendingLimit: vectorOf(opts.lendable as string[], '--lendable') } : {}),
        ...(vectorOf(opts['borrow-limit'] as string[], '--borrow-limit') ? { borrowingLimit: vectorOf(opts['borrow-limit'] as string[], '--borrow-limit') } : {}),
        ...(opts.grace !== undefined ? { gracePeriodMs: wholeNumber(String(opts.grace), 'grace') * 1000 } : {}),
        ...(opts['container-memory'] !== undefined ? { containerMemoryDefault: containerDefault(String(opts['container-memory'])) } : {}),
        ...(opts['container-storage'] !== undefined ? { containerStorageDefault: containerDefault(String(opts['container-storage'])) } : {}),
      };
      if (!Object.keys(body).length) throw new UsageError('nothing to change: give at least one limit');
      const view = await clientOf(global).json('PUT', `/quota/${encodeURIComponent(args[0]!)}`, body);
      if (global.output === 'json') printJson(view);
      return 0;
    },
  },
  {
    name: 'quota explain', usage: '', summary: 'Would a request be admitted, and why? Changes nothing.', maxArgs: 0,
    options: [
      { name: 'project', type: 'string', value: 'P', description: 'Project (default: --project before the command, else your default project)' },
      { name: 'instances', type: 'number', value: 'N', description: 'Instances', default: 1 },
      { name: 'cpus', type: 'number', value: 'N', description: 'CPUs' },
      { name: 'memory', type: 'string', value: 'SIZE', description: 'Memory (e.g. 8g)' },
    ],
    async run({ opts, global }) {
      const body: Vector = { instances: wholeNumber(String(opts.instances), 'instances') };
      if (opts.cpus !== undefined) body.cpus = Math.ceil(Number(opts.cpus));
      if (opts.memory !== undefined) body.memory = memoryMiB(String(opts.memory));
      const d = await clientOf(global).json<Explained>(
        'POST', `/quota/${encodeURIComponent(typeof opts.project === 'string' ? opts.project : await currentProject(global))}/explain`, body,
      );
      if (global.output === 'json') return printJson(d), 0;
      process.stdout.write(renderExplain(d, Date.now()));
      return d.admitted ? 0 : 1;
    },
  },
  {
    name: 'quota audit', usage: '', summary: 'Admits, rejects, loans, returns and reclaims with their reasons', maxArgs: 0,
    options: [{ name: 'project', type: 'string', value: 'P', description: 'Only this project' }],
    async run({ opts, global }) {
      const q = opts.project ? `?project=${encodeURIComponent(String(opts.project))}` : '';
      const entries = await clientOf(global).json<{ seq: number; at: number; kind: string; project: string; instance?: string; reason: string }[]>('GET', `/quota-audit${q}`);
      if (global.output === 'json') return printJson(entries), 0;
      process.stdout.write(table(['SEQ', 'TIME', 'KIND', 'PROJECT', 'INSTANCE', 'REASON'], entries.map((e) => [
        String(e.seq), new Date(e.at).toISOString(), e.kind, e.project.slice(0, 12), (e.instance ?? '').slice(0, 12), e.reason,
      ])));
      return 0;
    },
  },
  {
    name: 'quota pool create', usage: 'PROJECT NAME', summary: "Share part of PROJECT's free capacity among chosen children, by weight", minArgs: 2, maxArgs: 2,
    options: [
      { name: 'capacity', type: 'list', value: 'RES=N', description: 'Capacity set aside (memory accepts sizes)' },
      { name: 'member', type: 'list', value: 'CHILD=WEIGHT', description: 'A direct child and its weight' },
    ],
    async run({ args, opts, global }) {
      const capacity = vectorOf(opts.capacity as string[], '--capacity');
      const weights = weightsOf(opts.member as string[]);
      if (!capacity || !weights) throw new UsageError('a pool needs --capacity and at least one --member');
      const pool = await clientOf(global).json('POST', `/quota/${encodeURIComponent(args[0]!)}/pools`, { name: args[1], capacity, weights });
      if (global.output === 'json') printJson(pool);
      return 0;
    },
  },
  {
    name: 'quota pool set', usage: 'PROJECT NAME', summary: "Change a pool's capacity or members", minArgs: 2, maxArgs: 2,
    options: [
      { name: 'capacity', type: 'list', value: 'RES=N', description: 'New capacity' },
      { name: 'member', type: 'list', value: 'CHILD=WEIGHT', description: 'The new member list (replaces the old one)' },
    ],
    async run({ args, opts, global }) {
      const capacity = vectorOf(opts.capacity as string[], '--capacity');
      const weights = weightsOf(opts.member as string[]);
      if (!capacity && !weights) throw new UsageError('nothing to change: give --capacity or --member');
      const pool = await clientOf(global).json('PUT', `/quota/${encodeURIComponent(args[0]!)}/pools/${encodeURIComponent(args[1]!)}`, {
        ...(capacity ? { capacity } : {}), ...(weights ? { weights } : {}),
      });
      if (global.output === 'json') printJson(pool);
      return 0;
    },
  },
  {
    name: 'quota pool ls', usage: '[PROJECT]', summary: "The pools a project owns: capacity, use, members' weights and deserved shares", maxArgs: 1, options: [],
    async run({ args, global }) {
      const view = await clientOf(global).json<{ pools: { id: string; capacity: Vector; used: Vector; members: { project: string; weight: number; deserved: Vector; used: Vector }[] }[] }>(
        'GET', `/quota/${encodeURIComponent(args[0] ?? (await currentProject(global)))}`);
      if (global.output === 'json') return printJson(view.pools), 0;
      const v = (x: Vector) => Object.entries(x).map(([k, n]) => `${k}=${n}`).join(',') || '-';
      process.stdout.write(table(['POOL', 'CAPACITY', 'USED', 'MEMBER', 'WEIGHT', 'DESERVED', 'MEMBER USED'], view.pools.flatMap((p) =>
        p.members.map((m, i) => [i === 0 ? p.id.split('/').pop()! : '', i === 0 ? v(p.capacity) : '', i === 0 ? v(p.used) : '', m.project.slice(0, 12), String(m.weight), v(m.deserved), v(m.used)]))));
      return 0;
    },
  },
  {
    name: 'quota loans', usage: '[PROJECT]', summary: 'Active loans a project made to or took from its siblings', maxArgs: 1, options: [],
    async run({ args, global }) {
      const loans = await clientOf(global).json<{ lenderPath: string; borrowerPath: string; resource: string; amount: number; instance: string; at: number }[]>(
        'GET', `/quota/${encodeURIComponent(args[0] ?? (await currentProject(global)))}/loans`);
      if (global.output === 'json') return printJson(loans), 0;
      process.stdout.write(table(['LENDER', 'BORROWER', 'RESOURCE', 'AMOUNT', 'INSTANCE', 'SINCE'], loans.map((l) => [
        l.lenderPath, l.borrowerPath, l.resource, String(l.amount), l.instance.slice(0, 12), new Date(l.at).toISOString(),
      ])));
      return 0;
    },
  },
];

/** "team-a=2" → { "team-a": 2 }. */
function weightsOf(pairs: string[]): Record<string, number> | undefined {
  if (!pairs.length) return undefined;
  const out: Record<string, number> = {};
  for (const p of pairs) {
    const eq = p.lastIndexOf('=');
    const w = Number(p.slice(eq + 1));
    if (eq <= 0 || !(w > 0)) throw new UsageError(`--member takes CHILD=WEIGHT with a positive weight, got "${p}"`);
    out[p.slice(0, eq)] = w;
  }
  return out;
}

interface Explained {
  admitted: boolean;
  reason: string;
  decidedBy: { project: string; projectPath?: string; resource: string; line: string };
  loans: { lenderPath?: string; lender: string; borrowerPath?: string; borrower: string; resource: string; amount: number }[];
  poolCharges?: { pool: string; poolName?: string; resource: string; amount: number }[];
  reclaim?: {
    sufficient: boolean;
    remaining: Vector;
    victims: { instance: string; name?: string; project: string; projectPath?: string; action: string; frees: Vector; deadline: number }[];
  };
}

const vectorText = (v: Vector) => Object.entries(v).filter(([, n]) => n).map(([k, n]) => `${k}=${n}`).join(',') || '-';

/** The decision, the ledger line that made it, then the loans, pool charges and reclaim it involves, as tables. */
export function renderExplain(d: Explained, now: number): string {
  const out: string[] = [];
  const reclaimable = !d.admitted && d.reclaim?.sufficient === true && d.reclaim.victims.length > 0;
  out.push(`${d.admitted ? 'admitted' : reclaimable ? 'needs a reclaim' : 'rejected'}: ${d.reason}`);
  out.push(`decided by: the "${d.decidedBy.line}" line of ${d.decidedBy.resource} on project ${d.decidedBy.projectPath ?? d.decidedBy.project}`);
  if (d.loans.length) {
    out.push('', 'loans that would be made:');
    out.push(table(['LENDER', 'BORROWER', 'RESOURCE', 'AMOUNT'],
      d.loans.map((l) => [l.lenderPath ?? l.lender, l.borrowerPath ?? l.borrower, l.resource, String(l.amount)])).trimEnd());
  }
  if (d.poolCharges?.length) {
    out.push('', 'charged to shared pools:');
    out.push(table(['POOL', 'RESOURCE', 'AMOUNT'], d.poolCharges.map((c) => [c.poolName ?? c.pool, c.resource, String(c.amount)])).trimEnd());
  }
  if (d.reclaim && d.reclaim.victims.length) {
    out.push('', d.reclaim.sufficient
      ? `instances that would be reclaimed (${d.reclaim.victims.length}), each after its grace period:`
      : `even reclaiming these ${d.reclaim.victims.length} instance(s) would leave ${vectorText(d.reclaim.remaining)} short:`);
    out.push(table(['INSTANCE', 'NAME', 'PROJECT', 'ACTION', 'FREES', 'GRACE ENDS'], d.reclaim.victims.map((v) => [
      v.instance.slice(0, 12), v.name ?? '', v.projectPath ?? v.project, v.action, vectorText(v.frees),
      v.deadline <= now ? 'now' : `in ${Math.ceil((v.deadline - now) / 1000)}s`,
    ])).trimEnd());
  }
  return out.join('\n') + '\n';
}
