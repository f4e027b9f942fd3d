import { OUTPUT_OPTION, UsageError, type CommandSpec } from '../args.js';
import { readFileSync } from 'node:fs';
import { ago, printJson, render, table } from '../output.js';
import { clientOf } from './shared.js';

interface EmbeddedAgentInfo {
  runtimes: { name: string; usable: boolean; reason?: string; default?: boolean }[]; snapshotter: string; cgroupLayout: string; kernel: string; cpus: number; memoryBytes: number;
  warmPool?: { perImage: number; maxImages: number; ready: number; hotImages: number; hits: number; handoffs?: number; misses: number; sizing?: { target: number; budgetBytes: number; usedBytes: number } };
  vm?: { accelerator: string; reason: string };
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

function embeddedAgentLines(a: EmbeddedAgentInfo): string[] {
  const w = a.warmPool;
  return [
    ...(a.vm ? [`VM accelerator: ${a.vm.accelerator} (${a.vm.reason})`] : []),
    `Snapshotter: ${a.snapshotter}`,
    `Cgroups: ${a.cgroupLayout}`,
    `Runtimes: ${a.runtimes.map((r) => `${r.name}${r.default ? ' (default)' : ''}${r.usable ? '' : ` (unusable: ${r.reason})`}`).join(', ')}`,
    `Warm pool: ${!w ? 'none' : w.perImage === 0 ? 'off' : `${w.ready} ready for ${w.hotImages} image(s), at least ${w.perImage} per image (hits ${w.hits}${w.handoffs ? `, ${w.handoffs} of them still being made` : ''}, misses ${w.misses})${w.sizing ? `; target ${w.sizing.target}, ${mib(w.sizing.usedBytes)} of a ${mib(w.sizing.budgetBytes)} budget` : ''}`}`,
    `Kernel: ${a.kernel}`,
    `CPUs: ${a.cpus}`,
    `Memory: ${(a.memoryBytes / 1024 ** 3).toFixed(1)} GiB`,
  ];
}

/** `--filter project=P,kind=container --filter instance=web` as query parameters (Docker's keys type and id are accepted too). */
export function eventFilters(filters: readonly string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const part of filters.flatMap((f) => f.split(','))) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq).trim();
    const value = eq < 0 ? '' : part.slice(eq + 1).trim();
    const param = ({ project: 'project', kind: 'kind', type: 'kind', instance: 'instance', id: 'instance', container: 'instance', vm: 'instance' } as Record<string, string>)[key];
    if (!param || value === '') throw new UsageError(`--filter takes project=P, kind=TYPE or instance=ID, got "${part}"`);
    out.push([param, value]);
  }
  return out;
}

interface ReplicaRow { id: string; hostname: string; pid: number; startedAt: number; lastSeen: number; apiUrl: string | null; live: boolean; leader: boolean }

export const systemCommands: CommandSpec[] = [
  {
    name: 'replicas', usage: '', summary: 'List the control-plane processes sharing the store, and the leader (administrators)', maxArgs: 0, options: [OUTPUT_OPTION],
    async run({ global }) {
      const r = await clientOf(global).json<{ self: string; leader: string | null; replicas: ReplicaRow[] }>('GET', '/replicas');
      if (global.output === 'json') return printJson(r), 0;
      process.stdout.write(table(
        ['ID', 'ROLE', 'STATE', 'HOST', 'PID', 'API', 'STARTED', 'SEEN'],
        r.replicas.map((x) => [
          x.id + (x.id === r.self ? ' (this one)' : ''), x.leader ? 'leader' : 'follower', x.live ? 'live' : 'gone', x.hostname, String(x.pid), x.apiUrl ?? '-',
          ago(new Date(x.startedAt).toISOString()), ago(new Date(x.lastSeen).toISOString()),
        ]),
      ));
      return 0;
    },
  },
  {
    name: 'info', usage: '', summary: 'Show facts about the host and daemon', maxArgs: 0, options: [OUTPUT_OPTION],
    async run({ global }) {
      const info = await clientOf(global).json<Record<string, unknown> & { agent: EmbeddedAgentInfo | null; containers: Record<string, number> }>('GET', '/info');
      if (global.output === 'json') return printJson(info), 0;
      const a = info.agent;
      const vms = info.vms as Record<string, number> | undefined;
      const lines = [
        `Server version: ${String(info.version)}`,
        `Home: ${String(info.home)}`,
        `Containers: ${info.containers.total} (running ${info.containers.running}, paused ${info.containers.paused}, exited ${info.containers.exited})`,
        ...(info.containers.memoryDefaultBytes !== undefined
          ? [`Container memory default: ${info.containers.memoryDefaultBytes ? `${Math.round(info.containers.memoryDefaultBytes / 2 ** 20)} MiB where a project's memory is limited; unlimited (best effort) elsewhere` : 'none (unsized containers are charged nothing)'}`]
          : []),
        ...(info.containers.storageDefaultBytes !== undefined
          ? [`Container storage default: ${info.containers.storageDefaultBytes ? `a writable layer of ${Math.round(info.containers.storageDefaultBytes / 2 ** 20)} MiB where a project's disk is limited; unbounded elsewhere` : 'none (writable layers are unbounded unless sized)'}`]
          : []),
        ...(vms ? [`VMs: ${vms.total} (running ${vms.running}, paused ${vms.paused}, saved ${vms.saved}, stopped ${vms.stopped})`] : []),
        `Images: ${String(info.images)}`,
        ...(a ? embeddedAgentLines(a) : ['Embedded agent: none (--no-agent; the hosts are `nimbus host ls`)']),
      ];
      process.stdout.write(lines.join('\n') + '\n');
      return 0;
    },
  },
  {
    name: 'version', usage: '', summary: 'Show client and daemon versions', maxArgs: 0, options: [OUTPUT_OPTION],
    async run({ global }) {
      const v = await clientOf(global).json<{ version: string; apiVersion: string; node: string }>('GET', '/version');
      if (global.output === 'json') return printJson({ client: { version: clientVersion() }, server: v }), 0;
      process.stdout.write(`Client: ${clientVersion()}\nServer: ${v.version} (API ${v.apiVersion}, Node ${v.node})\n`);
      return 0;
    },
  },
  {
    name: 'events', usage: '', summary: 'Stream state changes as they happen', maxArgs: 0,
    options: [
      { name: 'type', type: 'list', value: 'TYPE', description: 'Only events of this type (container, image, operation)' },
      { name: 'id', type: 'string', value: 'ID', description: 'Only events about this object (container, image or operation id)' },
      { name: 'since', type: 'number', integer: true, value: 'SEQ', description: 'Replay buffered events after this sequence number' },
      { name: 'filter', short: 'f', type: 'list', value: 'KEY=VALUE', description: 'project=P (and its descendants), kind=TYPE, instance=ID|NAME; comma-separated or repeated (kinds add up)' },
      OUTPUT_OPTION,
    ],
    async run({ opts, global }) {
      const q = new URLSearchParams();
      for (const t of opts.type as string[]) q.append('type', t);
      if (opts.id !== undefined) q.set('id', String(opts.id));
      if (opts.since !== undefined) q.set('since', String(opts.since));
      for (const [key, value] of eventFilters(opts.filter as string[])) q.append(key, value);
      const qs = q.toString();
      for await (const e of clientOf(global).sse<{ time: string; type: string; action: string; id: string; projectId?: string; actor?: string; attributes?: Record<string, unknown> }>(`/events${qs ? `?${qs}` : ''}`)) {
        if (global.output === 'json') process.stdout.write(JSON.stringify(e) + '\n');
        else {
          const attrs = [e.attributes?.name ? `name=${String(e.attributes.name)}` : '', e.projectId ? `project=${e.projectId}` : '', e.actor ? `actor=${e.actor}` : ''].filter(Boolean);
          process.stdout.write(`${e.time} ${e.type} ${e.action} ${e.id}${attrs.length ? ` (${attrs.join(', ')})` : ''}\n`);
        }
      }
      return 0;
    },
  },
  {
    name: 'operation ls', usage: '', summary: 'List recent operations', maxArgs: 0, options: [OUTPUT_OPTION],
    async run({ global }) {
      const ops = await clientOf(global).json<{ id: string; kind: string; status: string; target: string; createdAt: string }[]>('GET', '/operations');
      if (global.output === 'json') return printJson(ops), 0;
      process.stdout.write(table(['ID', 'KIND', 'STATUS', 'TARGET', 'CREATED'], ops.map((o) => [o.id.slice(0, 12), o.kind, o.status, o.target, ago(o.createdAt)])));
      return 0;
    },
  },
  {
    name: 'operation show', usage: 'ID', summary: 'Show an operation and its progress', minArgs: 1, maxArgs: 1, options: [OUTPUT_OPTION],
    async run({ args, global }) {
      return render(global, await clientOf(global).json<OperationView>('GET', `/operations/${encodeURIComponent(args[0]!)}`), operationText);
    },
  },
  {
    name: 'operation wait', usage: 'ID', summary: 'Wait for an operation to end; exit 1 if it failed', minArgs: 1, maxArgs: 1,
    options: [{ name: 'timeout', short: 't', type: 'number', value: 'SECS', description: 'Give up after this many seconds (exit 1); default: wait for ever' }, OUTPUT_OPTION],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const deadline = opts.timeout === undefined ? Infinity : Date.now() + (opts.timeout as number) * 1000;
      let op: OperationView;
      for (;;) {
        const left = Math.max(0, Math.min(60, (deadline - Date.now()) / 1000));
        op = await client.json<OperationView>('GET', `/operations/${encodeURIComponent(args[0]!)}/wait?timeout=${Number.isFinite(left) ? left.toFixed(1) : 60}`);
        if ((op.status !== 'running' && op.status !== 'pending') || Date.now() >= deadline) break;
      }
      render(global, op, operationText);
      return op.status === 'succeeded' ? 0 : 1;
    },
  },
];

interface OperationView {
  id: string;
  kind: string;
  status: string;
  target: string;
  progress: Record<string, unknown>;
  result: unknown;
  error: { code: string; message: string } | null;
  createdAt: string;
  updatedAt: string;
}

function operationText(op: OperationView): string {
  const rows = [
    ['ID', op.id], ['KIND', op.kind], ['TARGET', op.target], ['STATUS', op.status],
    ...(typeof op.progress.phase === 'string' ? [['PHASE', op.progress.phase]] : []),
    ...(op.error ? [['ERROR', `${op.error.code}: ${op.error.message}`]] : []),
    ...(op.result !== null && op.result !== undefined ? [['RESULT', JSON.stringify(op.result)]] : []),
    ['CREATED', ago(op.createdAt)], ['UPDATED', ago(op.updatedAt)],
  ];
  const w = Math.max(...rows.map((r) => r[0]!.length));
  return rows.map(([k, v]) => `${k!.padEnd(w)}   ${v}\n`).join('');
}

/** This client's version, from the package.json above this file (src/cli or dist/src/cli). */
function clientVersion(): string {
  for (const rel of ['../../../package.json', '../../../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'nimbus' && pkg.version) return pkg.version;
    } catch {
      // try the next candidate
    }
  }
  return 'unknown';
}
