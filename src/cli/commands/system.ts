import type { CommandSpec } from '../args.js';
import { printJson, table, ago } from '../output.js';
import { clientOf } from './shared.js';

export const systemCommands: CommandSpec[] = [
  {
    name: 'info', usage: '', summary: 'Show facts about the host and daemon', maxArgs: 0, options: [],
    async run({ global }) {
      const info = await clientOf(global).json<Record<string, unknown> & { agent: Record<string, unknown>; containers: Record<string, number> }>('GET', '/info');
      if (global.output === 'json') return printJson(info), 0;
      const a = info.agent as { runtimes: { name: string; usable: boolean; reason?: string; default?: boolean }[]; snapshotter: string; cgroupLayout: string; kernel: string; cpus: number; memoryBytes: number };
      const lines = [
        `Server version: ${String(info.version)}`,
        `Home: ${String(info.home)}`,
        `Containers: ${info.containers.total} (running ${info.containers.running}, paused ${info.containers.paused}, exited ${info.containers.exited})`,
        `Images: ${String(info.images)}`,
        `Snapshotter: ${a.snapshotter}`,
        `Cgroups: ${a.cgroupLayout}`,
        `Runtimes: ${a.runtimes.map((r) => `${r.name}${r.default ? ' (default)' : ''}${r.usable ? '' : ` (unusable: ${r.reason})`}`).join(', ')}`,
        `Kernel: ${a.kernel}`,
        `CPUs: ${a.cpus}`,
        `Memory: ${(a.memoryBytes / 1024 ** 3).toFixed(1)} GiB`,
      ];
      process.stdout.write(lines.join('\n') + '\n');
      return 0;
    },
  },
  {
    name: 'version', usage: '', summary: 'Show client and daemon versions', maxArgs: 0, options: [],
    async run({ global }) {
      const v = await clientOf(global).json<{ version: string; apiVersion: string; node: string }>('GET', '/version');
      if (global.output === 'json') return printJson({ client: { version: '0.1.0' }, server: v }), 0;
      process.stdout.write(`Client: 0.1.0\nServer: ${v.version} (API ${v.apiVersion}, Node ${v.node})\n`);
      return 0;
    },
  },
  {
    name: 'events', usage: '', summary: 'Stream state changes as they happen', maxArgs: 0,
    options: [
      { name: 'type', type: 'list', value: 'TYPE', description: 'Only events of this type (container, image, operation)' },
      { name: 'since', type: 'number', value: 'SEQ', description: 'Replay buffered events after this sequence number' },
    ],
    async run({ opts, global }) {
      const q = [...(opts.type as string[]).map((t) => `type=${encodeURIComponent(t)}`), ...(opts.since !== undefined ? [`since=${opts.since}`] : [])].join('&');
      for await (const e of clientOf(global).sse<{ time: string; type: string; action: string; id: string; attributes?: Record<string, unknown> }>(`/events${q ? `?${q}` : ''}`)) {
        if (global.output === 'json') process.stdout.write(JSON.stringify(e) + '\n');
        else process.stdout.write(`${e.time} ${e.type} ${e.action} ${e.id}${e.attributes?.name ? ` (name=${String(e.attributes.name)})` : ''}\n`);
      }
      return 0;
    },
  },
  {
    name: 'operation ls', usage: '', summary: 'List recent operations', maxArgs: 0, options: [],
    async run({ global }) {
      const ops = await clientOf(global).json<{ id: string; kind: string; status: string; target: string; createdAt: string }[]>('GET', '/operations');
      if (global.output === 'json') return printJson(ops), 0;
      process.stdout.write(table(['ID', 'KIND', 'STATUS', 'TARGET', 'CREATED'], ops.map((o) => [o.id.slice(0, 12), o.kind, o.status, o.target, ago(o.createdAt)])));
      return 0;
    },
  },
  {
    name: 'operation show', usage: 'ID', summary: 'Show an operation (JSON)', minArgs: 1, maxArgs: 1, options: [],
    async run({ args, global }) {
      printJson(await clientOf(global).json('GET', `/operations/${encodeURIComponent(args[0]!)}`));
      return 0;
    },
  },
  {
    name: 'operation wait', usage: 'ID', summary: 'Wait for an operation to end; exit 1 if it failed', minArgs: 1, maxArgs: 1, options: [],
    async run({ args, global }) {
      let op: { status: string; error: { message: string } | null };
      do op = await clientOf(global).json('GET', `/operations/${encodeURIComponent(args[0]!)}/wait?timeout=60`);
      while (op.status === 'running' || op.status === 'pending');
      printJson(op);
      return op.status === 'succeeded' ? 0 : 1;
    },
  },
];
