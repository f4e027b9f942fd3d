/**
 * `nimbus vm ...`: VMs over the REST API (/vms). The instance-wide verbs
 * (ps, stop, kill, rm, pause, unpause, inspect, logs) also reach VMs: see
 * containers.ts, which falls back to /vms when a name is not a container's.
 */
import { resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { type ApiClient } from '../client.js';
import { OUTPUT_OPTION, UsageError, parseSize, type CommandContext, type CommandSpec, type OptionSpec } from '../args.js';
import { ago, printJson, render, short, statusText, table, truncate } from '../output.js';
import { clientOf, eachArg, waitOperation } from './shared.js';
import { PLACEMENT_OPTIONS, placementBody } from './containers.js';

export interface Vm {
  id: string;
  name: string;
  type: 'vm';
  status: string;
  exitCode: number | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  savedAt: string | null;
  config: { cpus: number; memoryMiB: number; kernel?: string; initrd?: string; append?: string; disk?: string; pin?: number[]; template?: string };
  /** The agent (host) it lives on; absent from daemons before agents. */
  agent?: string;
}

/** What `vm migrate` prints: the operation's result. */
export interface MigrationResult {
  id: string;
  from: string;
  to: string;
  totalMs: number;
  downtimeMs: number;
  qemuDowntimeMs: number;
  bytes: number;
  iterations: number;
  /** Disk bytes mirrored (a VM with a local disk); absent from older daemons. */
  diskBytes?: number;
  /** Bytes mirrored per block volume that moved with it (absent without volumes). */
  volumeBytes?: Record<string, number>;
  maxDowntimeMs: number;
  /** The streams went over TLS; absent from older daemons. */
  tls?: boolean;
}

const volumesMoved = (v: Record<string, number> | undefined): string => {
  const n = v ? Object.keys(v).length : 0;
  if (!n) return '';
  const mib = Object.values(v!).reduce((a, b) => a + b, 0) / (1024 * 1024);
  return `; ${n} volume${n === 1 ? '' : 's'} ${mib.toFixed(1)} MiB`;
};

/** One line a person reads after a migration. */
export function migrationSummary(name: string, r: MigrationResult): string {
  const mib = (r.bytes / (1024 * 1024)).toFixed(1);
  return `${name}: migrated ${r.from} → ${r.to} in ${r.totalMs} ms; downtime ${r.downtimeMs} ms (QEMU: ${r.qemuDowntimeMs} ms, limit ${r.maxDowntimeMs} ms); ${mib} MiB in ${r.iterations} RAM pass${r.iterations === 1 ? '' : 'es'}${r.diskBytes ? `; disk ${(r.diskBytes / (1024 * 1024)).toFixed(1)} MiB` : ''}${volumesMoved(r.volumeBytes)}${r.tls === undefined ? '' : r.tls ? '; over TLS' : '; in clear'}\n`;
}

interface Operation {
  id: string;
  status: string;
  error: { code: string; message: string } | null;
  result: { ms?: number; bytes?: number } | null;
}

const enc = encodeURIComponent;

/** "0-2,5" → [0, 1, 2, 5] (the cpuset list format). */
export function parseCpuList(s: string): number[] {
  const out: number[] = [];
  for (const part of s.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new UsageError(`invalid CPU list "${s}": use e.g. 0-1,3`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new UsageError(`invalid CPU range "${part}"`);
    for (let c = a; c <= b; c++) out.push(c);
  }
  return out;
}

const CREATE_OPTIONS: OptionSpec[] = [
  { name: 'name', type: 'string', value: 'NAME', description: 'VM name (unique across containers and VMs); also accepted as the argument' },
  { name: 'cpus', type: 'number', integer: true, value: 'N', description: 'vCPUs (default 1)' },
  { name: 'max-cpus', type: 'number', integer: true, value: 'N', description: 'Room to add vCPUs while it runs (vm resize --cpus, hot-plug) up to N' },
  { name: 'memory', short: 'm', type: 'string', value: 'SIZE', description: 'Guest memory (256m, 1g; default 256m)' },
  { name: 'kernel', type: 'string', value: 'NAME', description: 'Boot this kernel image directly (image import-disk --type kernel; with --initrd and --append). A path (with a /) names a host file: system administrators only, in a directory the operator allowed (nimbusd --vm-host-dir)' },
  { name: 'initrd', type: 'string', value: 'NAME', description: 'Initial ramdisk image for --kernel (image import-disk --type initrd), or an allowed host path' },
  { name: 'append', type: 'string', value: 'ARGS', description: 'Kernel command line for --kernel' },
  { name: 'disk', type: 'string', value: 'FILE', description: 'System administrators: boot from a host disk file (raw or qcow2) in a directory the operator allowed; the VM writes to its own overlay. Others use --image' },
  { name: 'pin', type: 'string', value: 'CPULIST', description: 'System administrators only: host CPUs for the vCPU threads, e.g. 0-1 (vCPU i on the i-th, round robin); others leave the choice to the host' },
  { name: 'network', type: 'list', value: 'NET', description: 'A virtio-net NIC on this network (repeatable: eth0, eth1, ...); "bridge" is the project\'s default' },
  { name: 'image', type: 'string', value: 'NAME', description: 'Root disk: a copy-on-write overlay of this disk image (nimbus image import-disk)' },
  { name: 'boot-volume', type: 'string', value: 'VOLUME', description: 'Boot from this block volume (volume create --type block): attached read-write, kept when the VM is removed; the VM runs on its host' },
  { name: 'agent', type: 'string', value: 'AGENT', description: 'The older name of --host' },
  { name: 'ha', type: 'boolean', description: 'High availability: rebuilt on another host from its images (a fresh disk) when its host dies while it runs' },
  ...PLACEMENT_OPTIONS(),
];

/** An image's name as it is; a path (anything with a '/') made absolute. */
const imageOrPath = (v: string): string => (v.includes('/') ? resolve(v) : v);

/** The POST /vms body from `vm create|run` options and an optional NAME argument. */
export function vmCreateBody(opts: CommandContext['opts'], args: string[]): Record<string, unknown> {
  if (args[0] !== undefined && opts.name !== undefined && args[0] !== opts.name) throw new UsageError('give the name once: --name NAME or NAME');
  const name = (opts.name as string | undefined) ?? args[0];
  if (!opts.kernel && !opts.disk && !opts.image && !opts['boot-volume']) throw new UsageError('a VM needs --kernel FILE (direct boot), --image NAME (a disk image), --boot-volume VOLUME or --disk FILE');
  if ([opts.disk, opts.image, opts['boot-volume']].filter((x) => x !== undefined).length > 1) throw new UsageError('--image, --disk and --boot-volume each name the root disk: give one');
  if (!opts.kernel && (opts.initrd !== undefined || opts.append !== undefined)) throw new UsageError('--initrd and --append need --kernel');
  const cpus = opts.cpus as number | undefined;
  if (cpus !== undefined && cpus < 1) throw new UsageError(`--cpus must be at least 1, got ${cpus}`);
  let memoryMiB: number | undefined;
  if (opts.memory !== undefined) {
    const bytes = parseSize(String(opts.memory));
    if (bytes < 16 * 1024 * 1024) throw new UsageError('--memory must be at least 16m');
    memoryMiB = Math.ceil(bytes / (1024 * 1024));
  }
  return {
    ...(name !== undefined ? { name } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(opts['max-cpus'] !== undefined ? { maxCpus: opts['max-cpus'] } : {}),
    ...(memoryMiB !== undefined ? { memoryMiB } : {}),
    // a value with a '/' is a host file, opened by the daemon on its host: relative paths mean this shell's directory
    ...(opts.kernel !== undefined ? { kernel: imageOrPath(String(opts.kernel)) } : {}),
    ...(opts.initrd !== undefined ? { initrd: imageOrPath(String(opts.initrd)) } : {}),
    ...(opts.append !== undefined ? { append: opts.append } : {}),
    ...(opts.disk !== undefined ? { disk: resolve(String(opts.disk)) } : {}),
    ...(opts.pin !== undefined ? { pin: parseCpuList(String(opts.pin)) } : {}),
    ...(((opts.network as string[] | undefined) ?? []).length ? { networks: opts.network } : {}),
    ...(opts.image !== undefined ? { image: opts.image } : {}),
    ...(opts['boot-volume'] !== undefined ? { bootVolume: opts['boot-volume'] } : {}),
    ...(opts.agent !== undefined ? { agent: opts.agent } : {}),
    ...(opts.ha ? { ha: true } : {}),
    ...placementBody(opts),
  };
}

/** The table's IMAGE column for a VM: its disk image or its kernel. */
export function vmImage(v: Pick<Vm, 'config'>): string {
  const base = (p: string) => p.slice(p.lastIndexOf('/') + 1);
  if (v.config.template) return `template:${short(v.config.template)}`;
  const c = v.config as Vm['config'] & { diskImage?: { name: string }; kernelImage?: { name: string } };
  if (c.diskImage) return c.diskImage.name;
  if (c.kernelImage) return `kernel:${c.kernelImage.name}`;
  return c.disk ? base(c.disk) : c.kernel ? `kernel:${base(c.kernel)}` : '';
}

/** The STATUS column: container wording where it fits, "Saved …" and "Stopped (N) …" for VM states. */
export function vmStatusText(v: Vm, now = Date.now()): string {
  if (v.status === 'stopped') return `Stopped (${v.exitCode ?? '?'}) ${ago(v.finishedAt, now)}`.trimEnd();
  if (v.status === 'saved') return `Saved ${ago(v.savedAt, now)}`.trimEnd();
  return statusText(v, now);
}

/** Run the request for each VM in turn, print the name as given on success; any failure makes the exit code 1. */
function forEachVm(path: (id: string, ctx: CommandContext) => string, body?: (ctx: CommandContext) => unknown, method = 'POST') {
  return async (ctx: CommandContext) => {
    const client = clientOf(ctx.global);
    return eachArg(ctx.args, async (id) => {
      await client.json(method, path(enc(id), ctx), body?.(ctx));
    });
  };
}

/** save/restore: each is an Operation the CLI waits for. */
function viaOperation(verb: 'save' | 'restore') {
  return async (ctx: CommandContext) => {
    const client = clientOf(ctx.global);
    return eachArg(ctx.args, async (id) => {
      const op = await waitOperation(client, await client.json<Operation>('POST', `/vms/${enc(id)}/${verb}`));
      const r = op.result ?? {};
      const size = r.bytes !== undefined ? `, ${(r.bytes / (1024 * 1024)).toFixed(1)} MiB` : '';
      process.stderr.write(`${verb === 'save' ? 'saved' : 'restored'} in ${r.ms ?? '?'} ms${size}\n`);
    });
  };
}

/** The byte that detaches from the console (Ctrl-], as telnet and virsh). */
const DETACH = 0x1d;

async function consoleSession(client: ApiClient, id: string): Promise<number> {
  const input = new PassThrough();
  const ac = new AbortController();
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  let detached = false;
  const detach = () => {
    detached = true;
    ac.abort();
  };
  // Not a terminal: once input ends, leave when the guest has been quiet for a second.
  let quietTimer: NodeJS.Timeout | undefined;
  let inputEnded = false;
  const armQuiet = () => {
    if (!inputEnded) return;
    clearTimeout(quietTimer);
    quietTimer = setTimeout(detach, 1000);
  };
  const onData = (b: Buffer) => {
    const i = b.indexOf(DETACH);
    if (i >= 0) {
      if (i > 0) input.write(b.subarray(0, i));
      detach();
      return;
    }
    input.write(b);
  };
  const onEnd = () => {
    inputEnded = true;
    armQuiet();
  };
  const frames = await client.openDuplexNdjson<{ data: string }>(`/vms/${enc(id)}/console`, input, 'application/octet-stream', ac.signal);
  if (tty) {
    stdin.setRawMode(true);
    process.stderr.write('Connected to the serial console; Ctrl-] detaches.\r\n');
  }
  stdin.on('data', onData);
  stdin.once('end', onEnd);
  stdin.resume();
  try {
    for await (const f of frames) {
      process.stdout.write(Buffer.from(f.data, 'base64'));
      armQuiet();
    }
  } catch (e) {
    if (!detached) throw e;
  } finally {
    clearTimeout(quietTimer);
    stdin.off('data', onData);
    stdin.off('end', onEnd);
    if (tty) stdin.setRawMode(false);
    stdin.pause();
    input.end();
  }
  if (tty) process.stderr.write(detached ? '\r\nDetached.\r\n' : '\r\nThe VM has stopped.\r\n');
  return 0;
}

type InspectedVm = Vm & { host: { accel: string; qemuPid?: number; pinning: { vcpu: number; hostCpus: number[] }[]; rootDisk?: string } | null };

/** `vm inspect -o table`: the facts a person looks for first. */
function inspectSummary(v: InspectedVm): string {
  return table(['FIELD', 'VALUE'], [
    ['id', v.id], ['name', v.name], ['status', vmStatusText(v)], ['agent', v.agent ?? '-'],
    ['cpus', String(v.config.cpus)], ['memory', `${v.config.memoryMiB} MiB`], ['image', vmImage(v)],
    ['accelerator', v.host?.accel ?? '-'], ['qemu pid', v.host?.qemuPid !== undefined ? String(v.host.qemuPid) : '-'],
    ['pinning', v.host?.pinning.map((p) => `vcpu${p.vcpu}→${p.hostCpus.join(',')}`).join(' ') || '-'],
    ['root disk', v.host?.rootDisk ?? '-'],
  ]);
}

function vmTable(list: Vm[], full: boolean): string {
  const id = (s: string) => (full ? s : short(s));
  return table(
    ['VM ID', 'NAME', 'STATUS', 'AGENT', 'CPUS', 'MEMORY', 'IMAGE', 'CREATED'],
    list.map((v) => [id(v.id), v.name, vmStatusText(v), v.agent ?? '-', String(v.config.cpus), `${v.config.memoryMiB}MiB`, truncate(vmImage(v), 40), ago(v.createdAt)]),
  );
}

export const vmCommands: CommandSpec[] = [
  {
    name: 'vm create', usage: '[NAME]', summary: 'Create a VM without starting it (prints its id)', maxArgs: 1, options: CREATE_OPTIONS,
    async run(ctx) {
      const v = await clientOf(ctx.global).json<Vm>('POST', '/vms', vmCreateBody(ctx.opts, ctx.args));
      process.stdout.write(`${v.id}\n`);
      return 0;
    },
  },
  {
    name: 'vm run', usage: '[NAME]', summary: 'Create and boot a VM (prints its id; see vm logs and vm console)', maxArgs: 1, options: CREATE_OPTIONS,
    async run(ctx) {
      const client = clientOf(ctx.global);
      const v = await client.json<Vm>('POST', '/vms', vmCreateBody(ctx.opts, ctx.args));
      try {
        await client.json('POST', `/vms/${enc(v.id)}/start`);
      } catch (e) {
        // a VM that cannot boot is not left behind by run
        await client.json('DELETE', `/vms/${enc(v.id)}?force=true`).catch(() => undefined);
        throw Object.assign(e instanceof Error ? e : new Error(String(e)), { exitCode: 125 });
      }
      process.stdout.write(`${v.id}\n`);
      return 0;
    },
  },
  {
    name: 'vm clone', usage: 'TEMPLATE', summary: 'Create a VM from a saved one used as a template; vm restore starts it without a boot',
    minArgs: 1, maxArgs: 1, options: [{ name: 'name', type: 'string', value: 'NAME', description: 'Name of the new VM' }],
    async run({ args, opts, global }) {
      const v = await clientOf(global).json<Vm>('POST', `/vms/${enc(args[0]!)}/clone`, opts.name !== undefined ? { name: opts.name } : {});
      process.stdout.write(`${v.id}\n`);
      return 0;
    },
  },
  {
    name: 'vm ls', usage: '', summary: 'List VMs (running and paused ones unless -a)', maxArgs: 0,
    options: [
      { name: 'all', short: 'a', type: 'boolean', description: 'Show all VMs' },
      { name: 'quiet', short: 'q', type: 'boolean', description: 'Only print VM ids' },
      { name: 'no-trunc', type: 'boolean', description: 'Do not shorten ids' },
      OUTPUT_OPTION,
    ],
    async run({ opts, global }) {
      const list = await clientOf(global).json<Vm[]>('GET', `/vms?all=${Boolean(opts.all)}`);
      if (opts.quiet && global.output !== 'json') {
        process.stdout.write(list.map((v) => `${opts['no-trunc'] ? v.id : short(v.id)}\n`).join(''));
        return 0;
      }
      return render(global, list, (l) => vmTable(l, Boolean(opts['no-trunc'])));
    },
  },
  {
    name: 'vm inspect', usage: 'VM [VM...]', summary: 'Show VMs in detail: record, accelerator, QEMU argv, vCPU pinning', minArgs: 1,
    options: [{ ...OUTPUT_OPTION, description: 'json (default) or table (a summary)' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const out: unknown[] = [];
      const code = await eachArg(args, async (a) => {
        out.push(await client.json('GET', `/vms/${enc(a)}`));
      }, false);
      if (opts.output === 'table') process.stdout.write((out as InspectedVm[]).map(inspectSummary).join('\n'));
      else printJson(out);
      return code;
    },
  },
  { name: 'vm start', usage: 'VM [VM...]', summary: 'Boot created or stopped VMs', minArgs: 1, options: [], run: forEachVm((id) => `/vms/${id}/start`) },
  {
    name: 'vm stop', usage: 'VM [VM...]', summary: 'Stop VMs: ACPI power button, then SIGKILL after the timeout', minArgs: 1,
    options: [{ name: 'time', short: 't', type: 'number', integer: true, value: 'SECS', description: 'Seconds to wait before SIGKILL (default 30)' }],
    run: forEachVm((id) => `/vms/${id}/stop`, (ctx) => (ctx.opts.time !== undefined ? { timeout: ctx.opts.time } : {})),
  },
  {
    name: 'vm kill', usage: 'VM [VM...]', summary: 'Signal QEMU (SIGKILL: hard power-off)', minArgs: 1,
    options: [{ name: 'signal', short: 's', type: 'string', value: 'SIG', description: 'Signal to send', default: 'SIGKILL' }],
    run: forEachVm((id) => `/vms/${id}/kill`, (ctx) => ({ signal: ctx.opts.signal })),
  },
  { name: 'vm pause', usage: 'VM [VM...]', summary: 'Stop the vCPUs of VMs', minArgs: 1, options: [], run: forEachVm((id) => `/vms/${id}/pause`) },
  { name: 'vm unpause', usage: 'VM [VM...]', summary: 'Resume the vCPUs of paused VMs', minArgs: 1, options: [], run: forEachVm((id) => `/vms/${id}/unpause`) },
  {
    name: 'vm rm', usage: 'VM [VM...]', summary: 'Remove VMs with their overlay disk, saved state and sockets', minArgs: 1,
    options: [{ name: 'force', short: 'f', type: 'boolean', description: 'Kill a running VM first' }],
    run: forEachVm((id, ctx) => `/vms/${id}?force=${Boolean(ctx.opts.force)}`, undefined, 'DELETE'),
  },
  {
    name: 'vm resize', usage: 'VM', summary: 'Resize a VM: while it runs, memory (balloon, up to its boot size) and more vCPUs (hot-plug, up to --max-cpus); anything while stopped', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'cpus', type: 'number', integer: true, value: 'N', description: 'vCPUs (running: more, up to its --max-cpus; stopped: any)' },
      { name: 'memory', short: 'm', type: 'string', value: 'SIZE', description: 'Memory, e.g. 192m (running: at most its boot size)' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      if (opts.cpus === undefined && opts.memory === undefined) throw new UsageError('vm resize needs --cpus or --memory');
      const body: Record<string, unknown> = {};
      if (opts.cpus !== undefined) body.cpus = opts.cpus;
      if (opts.memory !== undefined) {
        const bytes = parseSize(String(opts.memory));
        if (bytes < 16 * 1024 * 1024) throw new UsageError('--memory must be at least 16m');
        body.memoryMiB = Math.ceil(bytes / (1024 * 1024));
      }
      const v = await clientOf(global).json<Vm & { balloonMiB?: number }>('POST', `/vms/${enc(args[0]!)}/resize`, body);
      return render(global, v, (x) => `${x.name}: ${x.config.cpus} vCPUs, ${x.config.memoryMiB} MiB${x.balloonMiB !== undefined ? ` (guest has ${x.balloonMiB} MiB now)` : ''}\n`);
    },
  },
  {
    name: 'vm migrate', usage: 'VM', summary: 'Live-migrate a running VM to another agent; prints the measured downtime, total time, bytes and RAM passes',
    minArgs: 1, maxArgs: 1,
    options: [
      { name: 'to', type: 'string', value: 'AGENT', description: 'The destination agent (nimbus agent ls) (required)' },
      { name: 'max-downtime', type: 'number', integer: true, value: 'MS', description: 'Longest pause QEMU may plan for the last pass (default 300)' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      if (opts.to === undefined) throw new UsageError('vm migrate needs --to AGENT');
      const max = opts['max-downtime'] as number | undefined;
      if (max !== undefined && (max < 1 || max > 60000)) throw new UsageError('--max-downtime must be 1–60000 ms');
      const client = clientOf(global);
      const op = await client.json<Operation>('POST', `/vms/${enc(args[0]!)}/migrate`, { to: opts.to, ...(max !== undefined ? { maxDowntimeMs: max } : {}) });
      if (global.output !== 'json') process.stderr.write(`migrating ${args[0]} to ${String(opts.to)}...\n`);
      const done = await waitOperation(client, op, 'migration');
      return render(global, done.result as unknown as MigrationResult, (r) => migrationSummary(args[0]!, r));
    },
  },
  { name: 'vm save', usage: 'VM [VM...]', summary: 'Save the whole VM state to disk; the VM is then saved (QEMU ends)', minArgs: 1, options: [], run: viaOperation('save') },
  { name: 'vm restore', usage: 'VM [VM...]', summary: 'Bring saved VMs back, the guest continuing where it was', minArgs: 1, options: [], run: viaOperation('restore') },
  {
    name: 'vm logs', usage: 'VM', summary: "Print a VM's serial console output", minArgs: 1, maxArgs: 1,
    options: [
      { name: 'follow', short: 'f', type: 'boolean', description: 'Keep streaming until the VM stops' },
      { name: 'tail', short: 'n', type: 'number', integer: true, value: 'N', description: 'Only the last N lines' },
    ],
    async run({ args, opts, global }) {
      if (opts.tail !== undefined && (opts.tail as number) < 0) throw new UsageError('--tail must be zero or more');
      const q = `follow=${Boolean(opts.follow)}${opts.tail !== undefined ? `&tail=${opts.tail}` : ''}`;
      for await (const r of await clientOf(global).openNdjson<{ line: string; partial?: boolean }>('GET', `/vms/${enc(args[0]!)}/logs?${q}`)) {
        process.stdout.write(`${r.line}${r.partial ? '' : '\n'}`);
      }
      return 0;
    },
  },
  {
    name: 'vm console', usage: 'VM', summary: "Attach to a VM's serial console (Ctrl-] detaches)", minArgs: 1, maxArgs: 1, options: [],
    run: ({ args, global }) => consoleSession(clientOf(global), args[0]!),
  },
];
