/**
 * `nimbus move CONTAINER [--to HOST]`: a container to another host, cold (POST
 * /containers/{id}/move, an Operation container.move). Its phases are printed on stderr as the
 * operation reports them; the result (the hosts, the time it took, the bytes carried) on stdout.
 */
import { OUTPUT_OPTION, UsageError, type CommandSpec } from '../args.js';
import { render } from '../output.js';
import { clientOf, succeeded, type OperationState } from './shared.js';

interface MoveOperation extends OperationState {
  progress: { phase?: string; layerBytes?: number; volume?: string; volumeBytes?: number; logBytes?: number } | null;
  result: MoveResult | null;
}

export interface MoveResult {
  name: string;
  from: string;
  to: string;
  restarted: boolean;
  totalMs: number;
  downtimeMs: number;
  layer: { bytes: number; entries: number };
  volumes: Array<{ name: string; bytes: number }>;
  /** Absent from a control plane before the log moved with containers. */
  log?: { bytes: number; files: number; skipped?: string };
  /** Moved live (--live): the checkpoint's size and the dump's and restore's times. */
  live?: { checkpointBytes: number; checkpointMs: number; restoreMs: number };
}

const kib = (n: number) => (n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1024 * 1024)).toFixed(1)} MiB`);

/** One line a person reads after a move. */
export function moveSummary(r: MoveResult): string {
  const vols = r.volumes.length ? `; volumes ${r.volumes.map((v) => `${v.name} ${kib(v.bytes)}`).join(', ')}` : '';
  const log = !r.log ? '' : r.log.skipped ? `; log left behind (${r.log.skipped})` : `; log ${kib(r.log.bytes)} (${r.log.files} file${r.log.files === 1 ? '' : 's'})`;
  const live = r.live ? ` live: checkpoint ${kib(r.live.checkpointBytes)} in ${r.live.checkpointMs} ms, restored in ${r.live.restoreMs} ms;` : '';
  return `${r.name}: moved ${r.from} → ${r.to} in ${r.totalMs} ms${r.restarted ? ` (down ${r.downtimeMs} ms)` : ''};${live} writable layer ${kib(r.layer.bytes)}${vols}${log}\n`;
}

interface EvacuatedInstance { kind: string; name: string; state: string; to?: string; mode?: string; reason?: string }
interface EvacuateOperation extends OperationState {
  progress: { instances?: EvacuatedInstance[] } | null;
}

/** The instances of an evacuation, one line each. */
function evacuationLines(p: EvacuateOperation['progress']): string[] {
  return (p?.instances ?? []).map((i) => `${i.kind} ${i.name}: ${i.state}${i.to ? ` → ${i.to}` : ''}${i.mode ? ` (${i.mode})` : ''}${i.reason ? ` (${i.reason})` : ''}`);
}

/** The plan of `host evacuate --dry-run`: what would go where and how, one line each. */
export function evacuationPlanText(host: string, instances: EvacuatedInstance[]): string {
  if (!instances.length) return `${host}: nothing to move\n`;
  const lines = instances.map((i) => (i.state === 'skipped'
    ? `${i.kind} ${i.name}: would stay (${i.reason ?? 'skipped'})`
    : `${i.kind} ${i.name}: would move ${i.mode ?? ''} → ${i.to}${i.reason ? ` (${i.reason})` : ''}`));
  return `${host}: the plan now (nothing changed; the host is not disabled, so a real evacuation may choose differently)\n${lines.map((l) => `  ${l}\n`).join('')}`;
}

export const moveCommands: CommandSpec[] = [
  {
    name: 'move', usage: 'CONTAINER',
    summary: 'Move a container to another host: cold (stopped, carried with its writable layer and volumes, started there again) or --live (CRIU)',
    minArgs: 1, maxArgs: 1,
    options: [
      { name: 'to', type: 'string', value: 'HOST', description: 'System administrators: the destination host (nimbus host ls); default: the scheduler picks another host' },
      {
        name: 'live', type: 'boolean',
        description: 'Live move: its processes are checkpointed with CRIU at the source and restored at the destination with their memory, open files, '
          + 'pipes and listening sockets, at the same address and MAC (a cold move stops it and starts it again there: its processes restart, its files stay). '
          + 'Refused (with the reason) for a container not running, on crun, with a terminal or stdin, with established TCP connections, '
          + 'or between hosts without a working CRIU (nimbus host ls; docs/overlay.md, "Moving containers")',
      },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const name = args[0]!;
      if (opts.to !== undefined && typeof opts.to !== 'string') throw new UsageError('--to takes a host name');
      const client = clientOf(global);
      let op = await client.json<MoveOperation>('POST', `/containers/${encodeURIComponent(name)}/move`, {
        ...(opts.to !== undefined ? { to: opts.to } : {}), ...(opts.live ? { live: true } : {}),
      });
      const talk = global.output !== 'json';
      let said = '';
      const say = (o: MoveOperation) => {
        const p = o.progress ?? {};
        if (!talk || !p.phase) return;
        const line = `${p.phase}${p.phase === 'copying-layer' && p.layerBytes ? ` ${kib(p.layerBytes)}` : ''}${p.phase === 'copying-volumes' && p.volume ? ` ${p.volume} ${kib(p.volumeBytes ?? 0)}` : ''}${p.phase === 'copying-log' && p.logBytes ? ` ${kib(p.logBytes)}` : ''}`;
        if (line !== said) process.stderr.write(`${name}: ${line}\n`);
        said = line;
      };
      if (talk) process.stderr.write(`moving ${name}${opts.to !== undefined ? ` to ${String(opts.to)}` : ''} (${opts.live ? 'live' : 'cold'})...\n`);
      while (op.status === 'running' || op.status === 'pending') {
        say(op);
        op = await client.json<MoveOperation>('GET', `/operations/${encodeURIComponent(op.id)}/wait?timeout=1`);
      }
      const done = succeeded(op, 'move');
      return render(global, done.result!, moveSummary);
    },
  },
  {
    name: 'host evacuate', usage: 'HOST',
    summary: 'Disable a host, live-migrate its running VMs and move its containers (live with CRIU where they can, cold otherwise) elsewhere, one at a time, reporting each',
    minArgs: 1, maxArgs: 1,
    options: [
      { name: 'dry-run', type: 'boolean', description: 'Show what would move where and how (live or cold, and why), changing nothing' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      if (opts['dry-run']) {
        const plan = await client.json<{ host: string; instances: EvacuatedInstance[] }>('GET', `/hosts/${encodeURIComponent(args[0]!)}/evacuation-plan`);
        return render(global, plan, (p) => evacuationPlanText(p.host, p.instances));
      }
      let op = await client.json<EvacuateOperation>('POST', `/hosts/${encodeURIComponent(args[0]!)}/evacuate`, {});
      const talk = global.output !== 'json';
      const said = new Set<string>();
      const say = (o: EvacuateOperation) => {
        for (const line of evacuationLines(o.progress)) if (talk && !said.has(line)) {
          said.add(line);
          process.stderr.write(`${line}\n`);
        }
      };
      while (op.status === 'running' || op.status === 'pending') {
        say(op);
        op = await client.json<EvacuateOperation>('GET', `/operations/${encodeURIComponent(op.id)}/wait?timeout=1`);
      }
      say(op);
      const done = succeeded(op, 'evacuation');
      return render(global, done.progress ?? {}, (p) => `${args[0]}: evacuated (${(p.instances ?? []).length} instance(s))\n`);
    },
  },
];
