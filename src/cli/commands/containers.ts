import { readFileSync } from 'node:fs';
import { ApiError, type ApiClient } from '../client.js';
import {
  OUTPUT_OPTION, UsageError, parseEnvFile, parseLabels, parseRestart, parseSize, resolveEnv,
  type CommandContext, type CommandSpec, type OptionSpec,
} from '../args.js';
import { ago, humanMemory, printJson, render, short, statusText, table, truncate } from '../output.js';
import { pullWithProgress } from './images.js';
import { clientOf, eachArg, waitOperation } from './shared.js';
import { attachOnTerminal, attachWithPipes, execOnTerminal, localTerminalSize } from './exec-tty.js';
import { vmImage, vmStatusText, type Vm } from './vms.js';
import { mountsFromFlags } from './volumes.js';
import { InvalidArgument } from '../../core/errors.js';
import { parsePublishSpec, type PublishedPortSpec } from '../../core/port-ranges.js';
import { parseVolumesFrom } from '../../core/volumes-from.js';

type Instance = (Container & { type: 'container' }) | Vm;

interface Container {
  id: string;
  name: string;
  status: string;
  exitCode: number | null;
  oomKilled: boolean;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  config: { image: string; cmd?: string[]; entrypoint?: string[]; tty?: boolean; openStdin?: boolean; storageBytes?: number };
  warnings?: string[];
  /** ps -s: what its writable layer holds (absent: its host did not answer). */
  sizeRw?: number;
}

interface WaitResult {
  exitCode: number;
  oomKilled: boolean;
}

interface ContainerEvent {
  action: string;
  attributes?: { exitCode?: unknown };
}

const enc = encodeURIComponent;

export const CREATE_OPTIONS: OptionSpec[] = [
  { name: 'name', type: 'string', value: 'NAME', description: 'Container name' },
  { name: 'env', short: 'e', type: 'list', value: 'K=V', description: "Environment variable; K alone copies K's value from this shell" },
  { name: 'env-file', type: 'list', value: 'FILE', description: 'Read environment variables (K=V per line) from a file' },
  { name: 'workdir', short: 'w', type: 'string', value: 'DIR', description: 'Working directory inside the container' },
  { name: 'user', short: 'u', type: 'string', value: 'USER', description: 'User name or uid[:gid]' },
  { name: 'entrypoint', type: 'string', value: 'CMD', description: "Override the image's entrypoint (\"\" clears it)" },
  { name: 'memory', short: 'm', type: 'string', value: 'SIZE', description: 'Memory limit (64m, 1g, 512k, bytes); exceeding it OOM-kills' },
  { name: 'storage', type: 'string', value: 'SIZE', description: "What its writable layer may hold (16m to 16t; charged to the disk quota): writes past it fail with ENOSPC. Default: the daemon's (1g) in a project whose disk quota is limited, else unbounded" },
  { name: 'cpus', type: 'number', value: 'N', description: 'CPU limit in CPUs (e.g. 0.5)' },
  { name: 'pids-limit', type: 'number', integer: true, value: 'N', description: 'Maximum number of processes' },
  { name: 'restart', type: 'string', value: 'POLICY', description: 'Restart policy: no, on-failure[:N], always, unless-stopped', default: 'no' },
  { name: 'rm', type: 'boolean', description: 'Remove the container when it exits' },
  { name: 'tty', short: 't', type: 'boolean', description: 'The main process on a terminal (the size of this one; nimbus attach)' },
  { name: 'interactive', short: 'i', type: 'boolean', description: 'Keep its stdin open; with run -t: this terminal, raw, typed into it; run -i alone: this stdin piped to it (its end, the process\'s)' },
  { name: 'runtime', type: 'string', value: 'NAME', choices: ['runc', 'crun', 'vm'], description: 'runc or crun (default: the host default), or vm: a secure container in its own microVM' },
  { name: 'hostname', type: 'string', value: 'NAME', description: 'Container host name' },
  { name: 'label', short: 'l', type: 'list', value: 'K=V', description: 'Label' },
  { name: 'stop-signal', type: 'string', value: 'SIG', description: 'Signal that stops the container (default SIGTERM)' },
  { name: 'stop-timeout', type: 'number', integer: true, value: 'SECS', description: 'Seconds between the stop signal and SIGKILL' },
  { name: 'network', type: 'string', value: 'NET', description: "bridge (default: the project's own), none, host, container:NAME|ID, or a network's name" },
  { name: 'publish', short: 'p', type: 'list', value: '[IP:][HOSTPORT[-END]:]PORT[-END][/tcp|udp]', description: 'Publish a container port on the host (loopback included); without HOSTPORT on a free one the host chooses; ranges: 8000-8010:80-90 pairwise, 8000-8010:80 one free port of the range, 80-90 each on a free port (at most 256 a container)' },
  { name: 'publish-all', short: 'P', type: 'boolean', description: 'Publish every port the image exposes, each on a free host port' },
  { name: 'ip', type: 'string', value: 'ADDR', description: 'Fixed IPv4 address on the network' },
  { name: 'dns', type: 'list', value: 'ADDR', description: "Nameserver instead of the network's embedded DNS" },
  { name: 'add-host', type: 'list', value: 'NAME:IP', description: 'Add a line to /etc/hosts' },
  { name: 'link', type: 'list', value: 'NAME[:ALIAS]', description: 'Link to a running container: its address in /etc/hosts and ALIAS_* variables' },
  { name: 'network-alias', type: 'list', value: 'NAME', description: "Another name the network's DNS answers for this container" },
  { name: 'log-opt', type: 'list', value: 'KEY=VALUE', description: 'Log rotation: max-size=SIZE (default 10m), max-file=N (default 3), as docker' },
  { name: 'volume', short: 'v', type: 'list', value: 'NAME:/PATH[:ro][,nocopy]', description: 'Mount a named volume (made with 1 GiB if missing, then filled with the image\'s files at PATH unless nocopy), /PATH (an anonymous volume, likewise), or /HOST/PATH:/PATH (system administrators only)' },
  { name: 'mount', type: 'list', value: 'type=volume|bind|tmpfs,source=…,target=…[,readonly][,volume-nocopy]', description: 'Mount a volume, a host path or a tmpfs (Docker\'s --mount)' },
  { name: 'tmpfs', type: 'list', value: '/PATH[:size=64m,mode=1777]', description: 'Mount a tmpfs' },
  { name: 'volumes-from', type: 'list', value: 'CONTAINER[:ro|rw]', description: 'Mount the volumes and host paths of another container of the project at the same paths (read-only with :ro; not its tmpfs); runs on its host' },
  { name: 'health-cmd', type: 'string', value: 'CMD', description: 'Command (run by /bin/sh -c in the container) whose exit says it is healthy' },
  { name: 'health-interval', type: 'string', value: 'DURATION', description: 'Between health probes, e.g. 30s (default), 500ms, 1m' },
  { name: 'health-timeout', type: 'string', value: 'DURATION', description: 'A probe running longer fails (default 30s)' },
  { name: 'health-retries', type: 'number', integer: true, value: 'N', description: 'Failures in a row that make it unhealthy (default 3)' },
  { name: 'health-start-period', type: 'string', value: 'DURATION', description: 'Failures this soon after a start do not count (default 0s)' },
  ...PLACEMENT_OPTIONS(),
];

/** "30s", "500ms", "1m30s", "2h" as milliseconds (Go's durations, which docker takes). */
export function parseDurationMs(s: string, flag: string): number {
  const parts = /^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$/.test(s) ? [...s.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)] : [];
  if (!parts.length) throw new UsageError(`--${flag}: "${s}" is not a duration (e.g. 500ms, 30s, 1m30s)`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const;
  return Math.round(parts.reduce((a, m) => a + Number(m[1]) * unit[m[2] as keyof typeof unit], 0));
}

function healthcheckFromFlags(opts: Record<string, unknown>): Record<string, unknown> | undefined {
  const cmd = opts['health-cmd'] as string | undefined;
  const others = ['health-interval', 'health-timeout', 'health-retries', 'health-start-period'].filter((k) => opts[k] !== undefined);
  if (cmd === undefined) {
    if (others.length) throw new UsageError(`--${others[0]} needs --health-cmd`);
    return undefined;
  }
  const ms = (k: string) => (opts[k] === undefined ? undefined : parseDurationMs(String(opts[k]), k));
  const [interval, timeout, start] = [ms('health-interval'), ms('health-timeout'), ms('health-start-period')];
  return {
    test: ['CMD-SHELL', cmd],
    ...(interval !== undefined ? { intervalMs: interval } : {}),
    ...(timeout !== undefined ? { timeoutMs: timeout } : {}),
    ...(opts['health-retries'] !== undefined ? { retries: opts['health-retries'] } : {}),
    ...(start !== undefined ? { startPeriodMs: start } : {}),
  };
}

/** Where an instance may run (containers and VMs); the scheduler chooses among the hosts that pass. */
export function PLACEMENT_OPTIONS(): CommandSpec['options'] {
  return [
    { name: 'host', type: 'string', value: 'HOST', description: 'System administrators: run it on this host (nimbus host ls)' },
    { name: 'zone', type: 'string', value: 'ZONE', description: 'Only hosts of this zone' },
    { name: 'constraint', type: 'list', value: 'K=V', description: 'Only hosts with this label' },
    { name: 'group', type: 'string', value: 'GROUP', description: 'Server group of the project (its affinity or anti-affinity policy applies)' },
  ];
}

/** --host, --zone, --constraint k=v, --group → the create body's placement fields. */
export function placementBody(opts: CommandContext['opts']): Record<string, unknown> {
  const constraints: Record<string, string> = {};
  for (const c of (opts.constraint as string[] | undefined) ?? []) {
    const eq = c.indexOf('=');
    if (eq < 1) throw new UsageError(`invalid --constraint "${c}": expected KEY=VALUE`);
    constraints[c.slice(0, eq)] = c.slice(eq + 1);
  }
  return {
    ...(opts.host !== undefined ? { host: opts.host } : {}),
    ...(opts.zone !== undefined ? { zone: opts.zone } : {}),
    ...(Object.keys(constraints).length ? { constraints } : {}),
    ...(opts.group !== undefined ? { group: opts.group } : {}),
  };
}

/** --log-opt max-size=10m --log-opt max-file=3 → the create body's `log` (Docker's json-file/local keys). */
export function parseLogOpts(specs: string[]): { maxSizeBytes?: number; maxFiles?: number } | undefined {
  const out: { maxSizeBytes?: number; maxFiles?: number } = {};
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const [key, value] = eq < 0 ? [spec, ''] : [spec.slice(0, eq), spec.slice(eq + 1)];
    if (key === 'max-size') out.maxSizeBytes = parseSize(value);
    else if (key === 'max-file') {
      if (!/^\d+$/.test(value)) throw new UsageError(`invalid --log-opt "${spec}": max-file takes a whole number`);
      out.maxFiles = Number(value);
    } else throw new UsageError(`unknown --log-opt "${spec}": use max-size=SIZE or max-file=N`);
  }
  return specs.length ? out : undefined;
}

/**
 * -p [IP:][HOSTPORT[-END]:]CONTAINERPORT[-END][/tcp|udp], as docker takes it: no HOSTPORT (or an
 * empty one) is 0, the host chooses; a container range is one mapping per port; a host range
 * beside one container port, one port of it the host chooses (core/port-ranges.ts).
 */
export function parsePublish(spec: string): PublishedPortSpec[] {
  return usage(() => parsePublishSpec(spec));
}

/** A shared parser's refusal as a usage error (exit 2, with the usage line). */
function usage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (e) {
    if (e instanceof InvalidArgument) throw new UsageError(e.message);
    throw e;
  }
}

/** --link NAME[:ALIAS] */
export function parseLink(spec: string): { container: string; alias: string } {
  const [container, alias, extra] = spec.split(':');
  if (!container || extra !== undefined || alias === '') throw new UsageError(`invalid --link "${spec}": expected NAME[:ALIAS]`);
  return { container, alias: alias ?? container };
}

/** The POST /containers body for `run`/`create` options and IMAGE [CMD...]. */
export function createBody(opts: CommandContext['opts'], args: string[], env: NodeJS.ProcessEnv = process.env, readFile = (f: string) => readFileSync(f, 'utf8')): Record<string, unknown> {
  const [image, ...cmd] = args;
  const list = (k: string) => (opts[k] as string[] | undefined) ?? [];
  const envEntries: string[] = [];
  for (const f of opts['env-file'] as string[]) {
    let text: string;
    try {
      text = readFile(f);
    } catch (e) {
      throw new UsageError(`cannot read env file ${f}: ${(e as Error).message}`);
    }
    envEntries.push(...parseEnvFile(text));
  }
  envEntries.push(...(opts.env as string[]));
  const cpus = opts.cpus as number | undefined;
  if (cpus !== undefined && !(cpus > 0)) throw new UsageError(`--cpus must be more than 0, got ${cpus}`);
  const memory = opts.memory === undefined ? undefined : parseSize(String(opts.memory));
  const storage = opts.storage === undefined ? undefined : parseSize(String(opts.storage));
  const mounts = mountsFromFlags(opts);
  const volumesFrom = usage(() => parseVolumesFrom(list('volumes-from')));
  const healthcheck = healthcheckFromFlags(opts);
  if (memory !== undefined && memory < 1) throw new UsageError(`--memory must be more than 0`);
  for (const k of ['pids-limit', 'stop-timeout'] as const) {
    const v = opts[k] as number | undefined;
    if (v !== undefined && v < (k === 'pids-limit' ? 1 : 0)) throw new UsageError(`--${k} must be ${k === 'pids-limit' ? 'at least 1' : 'zero or more'}, got ${v}`);
  }
  return {
    image,
    ...(cmd.length ? { cmd } : {}),
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    env: resolveEnv(envEntries, env),
    ...(opts.workdir !== undefined ? { workdir: opts.workdir } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.entrypoint !== undefined ? { entrypoint: opts.entrypoint === '' ? [] : [String(opts.entrypoint)] } : {}),
    ...(memory !== undefined ? { memoryBytes: memory } : {}),
    ...(storage !== undefined ? { storageBytes: storage } : {}),
    ...(cpus !== undefined ? { cpus } : {}),
    ...(opts['pids-limit'] !== undefined ? { pidsLimit: opts['pids-limit'] } : {}),
    restart: parseRestart(String(opts.restart ?? 'no')),
    autoRemove: Boolean(opts.rm),
    ...(opts.runtime !== undefined ? { runtime: opts.runtime } : {}),
    ...(opts.hostname !== undefined ? { hostname: opts.hostname } : {}),
    labels: parseLabels(opts.label as string[]),
    ...(opts['stop-signal'] !== undefined ? { stopSignal: opts['stop-signal'] } : {}),
    ...(opts['stop-timeout'] !== undefined ? { stopTimeout: opts['stop-timeout'] } : {}),
    ...(opts.network !== undefined ? { network: opts.network } : {}),
    ...(list('publish').length ? { ports: list('publish').flatMap(parsePublish) } : {}),
    ...(opts['publish-all'] ? { publishAll: true } : {}),
    ...(opts.ip !== undefined ? { ip: opts.ip } : {}),
    ...(list('dns').length ? { dns: list('dns') } : {}),
    ...(list('add-host').length ? { extraHosts: list('add-host') } : {}),
    ...(list('link').length ? { links: list('link').map(parseLink) } : {}),
    ...(list('network-alias').length ? { aliases: list('network-alias') } : {}),
    ...(list('log-opt').length ? { log: parseLogOpts(list('log-opt')) } : {}),
    ...(mounts.length ? { mounts } : {}),
    ...(volumesFrom.length ? { volumesFrom } : {}),
    ...(healthcheck ? { healthcheck } : {}),
    ...(opts.tty ? { tty: true } : {}),
    ...(opts.interactive ? { openStdin: true } : {}),
    ...placementBody(opts),
  };
}

/** Tag an error with the exit code the CLI should end with. */
function withExit<E>(e: E, exitCode: number): E {
  return e instanceof Error ? Object.assign(e, { exitCode }) : (Object.assign(new Error(String(e)), { exitCode }) as E);
}

interface CreateOperation {
  id: string;
  kind: string;
  status: string;
  progress: { instances?: number; projects?: string[]; graceSeconds?: number };
  error: { code: string; message: string } | null;
  result: Container | null;
}

/**
 * POST /containers. When the project's lent capacity must first be reclaimed the answer is an
 * Operation (202): say what it waits for, then wait for it; its result is the container.
 */
async function postContainer(client: ApiClient, body: Record<string, unknown>): Promise<Container> {
  const r = await client.json<Container | CreateOperation>('POST', '/containers', body);
  if (!('kind' in r) || r.kind !== 'container.create') return r as Container;
  let op = r;
  const p = op.progress;
  process.stderr.write(
    `waiting for reclaim of ${p.instances ?? '?'} instance(s) in project ${(p.projects ?? ['?']).join(', ')}, grace ${p.graceSeconds ?? '?'}s (operation ${short(op.id)})\n`,
  );
  op = await waitOperation(client, op, 'create');
  if (!op.result) throw new ApiError(500, 'Internal', 'create succeeded without a container');
  return op.result;
}

/** Create, pulling the image first when it is not here (as docker run does). Failures exit 125. */
async function createContainer(client: ApiClient, body: Record<string, unknown>): Promise<Container> {
  try {
    try {
      return await postContainer(client, body);
    } catch (e) {
      if (!(e instanceof ApiError) || e.code !== 'NotFound' || !/image/i.test(e.message)) throw e;
      process.stderr.write(`Unable to find image '${String(body.image)}' locally\n`);
      await pullWithProgress(client, String(body.image));
      return await postContainer(client, body);
    }
  } catch (e) {
    // The runtime may already refuse the command at create time (runc create).
    throw e instanceof UsageError ? e : withExit(e, startFailureCode(e));
  }
}

function warn(c: Container): void {
  for (const w of c.warnings ?? []) process.stderr.write(`WARNING: ${w}\n`);
}

/** The exit code of a container that could not be started: 127 not found, 126 not executable, else 125 (docker). */
function startFailureCode(e: unknown): number {
  const msg = e instanceof Error ? e.message : String(e);
  if (e instanceof ApiError && e.code === 'NotFound' && /container/i.test(msg)) return 125;
  if (/executable file not found|no such file or directory|not found in \$?PATH/i.test(msg)) return 127;
  if (/permission denied|not executable|exec format error/i.test(msg)) return 126;
  return 125;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Start a container with its output attached and resolve with its exit code.
 * The event subscription, the log stream and the wait are all open BEFORE the
 * start, so neither output nor the exit code is lost, even with --rm: the
 * daemon has registered the log and event streams once their headers arrive,
 * and the container's `die` event carries the exit code should the wait
 * request lose the race with the removal.
 */
export async function attachAndRun(client: ApiClient, c: Container, autoRemove: boolean): Promise<number> {
  const id = enc(c.id);
  const ac = new AbortController();
  let resolveDied!: (code: number) => void;
  const died = new Promise<number>((r) => (resolveDied = r));
  const events = await client.openSse<ContainerEvent>(`/events?type=container&id=${id}`, ac.signal);
  const watching = (async () => {
    for await (const e of events) if (e.action === 'die' && typeof e.attributes?.exitCode === 'number') resolveDied(e.attributes.exitCode);
  })().catch(() => undefined);
  const logs = await client.openNdjson<{ stream: string; line: string; partial?: boolean }>('GET', `/containers/${id}/logs?follow=true`, undefined, ac.signal);
  const output = (async () => {
    for await (const rec of logs) (rec.stream === 'stderr' ? process.stderr : process.stdout).write(rec.partial ? rec.line : `${rec.line}\n`);
  })().catch(() => undefined);
  const waited = client.json<WaitResult>('POST', `/containers/${id}/wait?condition=${autoRemove ? 'removed' : 'not-running'}`, undefined, ac.signal)
    .then((r) => ({ ok: true as const, r }), (error: unknown) => ({ ok: false as const, error }));

  // Ctrl-C and SIGTERM go to the container; the third Ctrl-C leaves it running and exits.
  let interrupts = 0;
  let detach!: () => void;
  const detached = new Promise<'detached'>((r) => (detach = () => r('detached')));
  const forward = (sig: NodeJS.Signals) => () => {
    if (sig === 'SIGINT' && ++interrupts >= 3) return detach();
    void client.json('POST', `/containers/${id}/kill`, { signal: sig }).catch(() => undefined);
  };
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    try {
      await client.json('POST', `/containers/${id}/start`);
    } catch (e) {
      if (autoRemove) await client.json('DELETE', `/containers/${id}?force=true`).catch(() => undefined);
      throw withExit(e, startFailureCode(e));
    }
    const outcome = await Promise.race([waited, detached]);
    if (outcome === 'detached') {
      process.stderr.write(`nimbus: detached; container ${short(c.id)} keeps running\n`);
      return 130;
    }
    let code: number;
    if (outcome.ok) code = outcome.r.exitCode;
    else {
      // The wait lost the race with --rm's removal: the die event has the code.
      const fromEvent = await Promise.race([died, sleep(3000).then(() => undefined)]);
      if (fromEvent === undefined) throw outcome.error;
      code = fromEvent;
    }
    // Let the log stream drain (it ends when the container exits), but not forever (restart policies).
    await Promise.race([output, sleep(5000)]);
    return code;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    ac.abort();
    await watching;
  }
}

/**
 * Instances are one resource: a name that is no container's is tried as a VM's
 * (/vms has the same verbs). When neither has it, the container's error stands.
 */
async function orVm<T>(path: string, call: (path: string) => Promise<T>): Promise<T> {
  try {
    return await call(path);
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== 'NotFound' || !/^no such container/.test(e.message) || !path.startsWith('/containers/')) throw e;
    try {
      return await call(`/vms/${path.slice('/containers/'.length)}`);
    } catch (vmError) {
      if (vmError instanceof ApiError && vmError.code === 'NotFound') throw e;
      throw vmError;
    }
  }
}

/** Run the request for each id in turn, print the id on success; any failure makes the exit code 1. */
function forEach(path: (id: string, ctx: CommandContext) => string, body?: (ctx: CommandContext) => unknown, method = 'POST') {
  return async (ctx: CommandContext) => {
    const client = clientOf(ctx.global);
    return eachArg(ctx.args, async (id) => {
      await orVm(path(enc(id), ctx), (p) => client.json(method, p, body?.(ctx)));
    });
  };
}

const timeoutBody = (ctx: CommandContext) => (ctx.opts.time !== undefined ? { timeout: ctx.opts.time } : {});

function commandOf(c: Container): string {
  return [...(c.config.entrypoint ?? []), ...(c.config.cmd ?? [])].join(' ');
}

interface StatsSample {
  id: string;
  name: string;
  cpuUsageNs: number;
  memoryBytes: number;
  memoryLimitBytes?: number;
  pids: number;
  pidsLimit?: number;
  time: string;
}

/** CPU % between two samples: CPU time used over wall time elapsed (100% = one full CPU, as docker). */
export function cpuPercent(a: Pick<StatsSample, 'cpuUsageNs' | 'time'>, b: Pick<StatsSample, 'cpuUsageNs' | 'time'>): number {
  const wallNs = (Date.parse(b.time) - Date.parse(a.time)) * 1e6;
  return wallNs > 0 ? Math.max(0, ((b.cpuUsageNs - a.cpuUsageNs) / wallNs) * 100) : 0;
}

export const containerCommands: CommandSpec[] = [
  {
    name: 'run', usage: 'IMAGE [COMMAND] [ARG...]', summary: 'Create and start a container; without -d, stream its output and exit with its code',
    minArgs: 1, stopAtPositional: true,
    options: [{ name: 'detach', short: 'd', type: 'boolean', description: 'Run in the background and print the container id' }, ...CREATE_OPTIONS],
    async run(ctx) {
      const client = clientOf(ctx.global);
      if (ctx.opts.detach) {
        // one request: created and started by the daemon (a failed start removes an --rm one there)
        const c = await createContainer(client, { ...createBody(ctx.opts, ctx.args), start: true });
        warn(c);
        process.stdout.write(`${c.id}\n`);
        return 0;
      }
      const start = (c: Container) => async () => {
        try {
          await client.json('POST', `/containers/${enc(c.id)}/start`);
        } catch (e) {
          if (ctx.opts.rm) await client.json('DELETE', `/containers/${enc(c.id)}?force=true`).catch(() => undefined);
          throw withExit(e, startFailureCode(e));
        }
      };
      if (ctx.opts.interactive && !ctx.opts.tty) {
        // -i alone: this process's stdin piped to the main process (its end, the process's), no terminal
        const c = await createContainer(client, { ...createBody(ctx.opts, ctx.args), stdinOnce: true });
        warn(c);
        return attachWithPipes(client, c.id, { afterOpen: start(c) });
      }
      if (ctx.opts.tty) {
        // the main process's terminal: attached before the start (nothing it prints is missed), stdin ending with this attach (-i)
        const c = await createContainer(client, { ...createBody(ctx.opts, ctx.args), ...(ctx.opts.interactive ? { stdinOnce: true } : {}) });
        warn(c);
        const code = await attachOnTerminal(client, c.id, { input: Boolean(ctx.opts.interactive), afterOpen: start(c) });
        if (code === 'detached') {
          process.stderr.write(`\nnimbus: detached; container ${short(c.id)} keeps running\n`);
          return 0;
        }
        return code;
      }
      const c = await createContainer(client, createBody(ctx.opts, ctx.args));
      warn(c);
      return attachAndRun(client, c, Boolean(ctx.opts.rm));
    },
  },
  {
    name: 'attach', usage: 'CONTAINER', summary: 'Attach this terminal to a container\'s main process (made with -t; its input too when made with -i); ctrl-p ctrl-q detaches', minArgs: 1, maxArgs: 1,
    options: [{ name: 'no-stdin', type: 'boolean', description: 'Show its output only' }],
    async run(ctx) {
      const client = clientOf(ctx.global);
      const c = await client.json<Container>('GET', `/containers/${enc(ctx.args[0]!)}`);
      if (!c.config.tty) throw new UsageError(`container ${c.name} has no terminal (made without -t): nimbus logs -f follows its output`);
      const code = await attachOnTerminal(client, c.id, { input: Boolean(c.config.openStdin) && !ctx.opts['no-stdin'] });
      if (code === 'detached') {
        process.stderr.write(`\nnimbus: detached; container ${short(c.id)} keeps running\n`);
        return 0;
      }
      return code;
    },
  },
  {
    name: 'create', usage: 'IMAGE [COMMAND] [ARG...]', summary: 'Create a container without starting it (prints its id)', minArgs: 1, stopAtPositional: true,
    options: CREATE_OPTIONS,
    async run(ctx) {
      const c = await createContainer(clientOf(ctx.global), createBody(ctx.opts, ctx.args));
      warn(c);
      process.stdout.write(`${c.id}\n`);
      return 0;
    },
  },
  {
    name: 'start', usage: 'CONTAINER [CONTAINER...]', summary: 'Start containers', minArgs: 1,
    options: [{ name: 'attach', short: 'a', type: 'boolean', description: 'Stream the output and exit with the exit code (one container)' }],
    async run(ctx) {
      if (ctx.opts.attach) {
        if (ctx.args.length > 1) throw new UsageError('start -a takes one container');
        const client = clientOf(ctx.global);
        const c = await client.json<Container>('GET', `/containers/${enc(ctx.args[0]!)}`);
        return attachAndRun(client, c, false);
      }
      return forEach((id) => `/containers/${id}/start`)(ctx);
    },
  },
  {
    name: 'stop', usage: 'CONTAINER [CONTAINER...]', summary: 'Stop containers: stop signal, then SIGKILL after the timeout', minArgs: 1,
    options: [{ name: 'time', short: 't', type: 'number', integer: true, value: 'SECS', description: "Seconds to wait before SIGKILL (default: the container's, else 10)" }],
    run: forEach((id) => `/containers/${id}/stop`, timeoutBody),
  },
  {
    name: 'restart', usage: 'CONTAINER [CONTAINER...]', summary: 'Stop and start containers', minArgs: 1,
    options: [{ name: 'time', short: 't', type: 'number', integer: true, value: 'SECS', description: 'Seconds to wait before SIGKILL' }],
    run: forEach((id) => `/containers/${id}/restart`, timeoutBody),
  },
  {
    name: 'kill', usage: 'CONTAINER [CONTAINER...]', summary: 'Send a signal to containers', minArgs: 1,
    options: [{ name: 'signal', short: 's', type: 'string', value: 'SIG', description: 'Signal to send (name or number)', default: 'SIGKILL' }],
    run: forEach((id) => `/containers/${id}/kill`, (ctx) => ({ signal: ctx.opts.signal })),
  },
  { name: 'pause', usage: 'CONTAINER [CONTAINER...]', summary: 'Freeze every process of containers', minArgs: 1, options: [], run: forEach((id) => `/containers/${id}/pause`) },
  { name: 'unpause', usage: 'CONTAINER [CONTAINER...]', summary: 'Thaw paused containers', minArgs: 1, options: [], run: forEach((id) => `/containers/${id}/unpause`) },
  {
    name: 'top', usage: 'CONTAINER', summary: 'The processes of a running container (host pids, as ps -ef)', minArgs: 1, maxArgs: 1, options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const t = await clientOf(global).json<{ titles: string[]; processes: string[][] }>('GET', `/containers/${enc(args[0]!)}/top`);
      return render(global, t, (x) => table(x.titles, x.processes));
    },
  },
  {
    name: 'rename', usage: 'CONTAINER NEW_NAME', summary: 'Give a container another name (DNS answers the new one on its networks)', minArgs: 2, maxArgs: 2, options: [],
    async run(ctx) {
      await clientOf(ctx.global).json('POST', `/containers/${enc(ctx.args[0]!)}/rename`, { name: ctx.args[1] });
      return 0;
    },
  },
  {
    name: 'rm', usage: 'CONTAINER [CONTAINER...]', summary: 'Remove containers', minArgs: 1,
    options: [
      { name: 'force', short: 'f', type: 'boolean', description: 'Kill a running container first' },
      { name: 'volumes', short: 'v', type: 'boolean', description: 'Remove its anonymous volumes too (never named ones; one another container mounts stays)' },
    ],
    // ?volumes only when asked: a VM's removal (the same command) takes no such parameter
    run: forEach((id, ctx) => `/containers/${id}?force=${Boolean(ctx.opts.force)}${ctx.opts.volumes ? '&volumes=true' : ''}`, undefined, 'DELETE'),
  },
  {
    name: 'ps', usage: '', summary: 'List instances, containers and VMs (running ones unless -a)', maxArgs: 0,
    options: [
      { name: 'all', short: 'a', type: 'boolean', description: 'Show all containers, not only running ones' },
      { name: 'quiet', short: 'q', type: 'boolean', description: 'Only print container ids' },
      { name: 'no-trunc', type: 'boolean', description: 'Do not shorten ids and commands' },
      { name: 'size', short: 's', type: 'boolean', description: "Show what each container's writable layer holds (measured on its host)" },
      OUTPUT_OPTION,
    ],
    async run({ opts, global }) {
      const client = clientOf(global);
      const [containers, vms] = await Promise.all([
        client.json<Container[]>('GET', `/containers?all=${Boolean(opts.all)}${opts.size ? '&size=true' : ''}`),
        // a daemon without VMs (no /vms route) still lists its containers
        client.json<Vm[]>('GET', `/vms?all=${Boolean(opts.all)}`).catch((e: unknown) => {
          if (e instanceof ApiError && e.code === 'NotFound') return [] as Vm[];
          throw e;
        }),
      ]);
      const list: Instance[] = [...containers.map((c) => ({ ...c, type: 'container' as const })), ...vms]
        .sort((a, b) => b.createdAt.localeCompare(a.createdAt));
      const full = Boolean(opts['no-trunc']);
      const id = (s: string) => (full ? s : short(s));
      if (opts.quiet && global.output !== 'json') {
        process.stdout.write(list.map((c) => `${id(c.id)}\n`).join(''));
        return 0;
      }
      // -s: the writable layer, and its limit where it has one (--storage)
      const size = (c: Instance) => {
        if (c.type === 'vm') return '';
        const used = c.sizeRw === undefined ? '?' : humanMemory(c.sizeRw);
        return c.config.storageBytes ? `${used} / ${humanMemory(c.config.storageBytes)}` : used;
      };
      return render(global, list, (l) => table(
        ['INSTANCE ID', 'TYPE', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS', 'NAMES', ...(opts.size ? ['SIZE'] : [])],
        l.map((c) => {
          const image = c.type === 'vm' ? vmImage(c) : c.config.image;
          const command = c.type === 'vm' ? (c.config.append ?? '') : commandOf(c);
          const status = c.type === 'vm' ? vmStatusText(c) : statusText(c);
          return [id(c.id), c.type, full ? image : truncate(image, 40), JSON.stringify(full ? command : truncate(command, 20)), ago(c.createdAt), status, c.name, ...(opts.size ? [size(c)] : [])];
        }),
      ));
    },
  },
  {
    name: 'inspect', usage: 'NAME|ID [NAME|ID...]', summary: 'Show containers or VMs (or, failing that, images) in detail', minArgs: 1,
    options: [{ ...OUTPUT_OPTION, description: 'json (default) or table (a summary)' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const out: Record<string, unknown>[] = [];
      let code = 0;
      for (const a of args) {
        try {
          try {
            out.push(await orVm(`/containers/${enc(a)}`, (p) => client.json<Record<string, unknown>>('GET', p)));
          } catch (e) {
            if (!(e instanceof ApiError) || e.code !== 'NotFound') throw e;
            out.push(await client.json('GET', `/images/${enc(a)}`));
          }
        } catch (e) {
          if (!(e instanceof ApiError) || e.code !== 'NotFound') throw e;
          process.stderr.write(`Error: NotFound: no such container, VM or image: ${a}\n`);
          code = 1;
        }
      }
      if (opts.output !== 'table') printJson(out);
      else process.stdout.write(inspectTable(out));
      return code;
    },
  },
  {
    name: 'logs', usage: 'CONTAINER', summary: "Print a container's output (stdout to stdout, stderr to stderr)", minArgs: 1, maxArgs: 1,
    options: [
      { name: 'follow', short: 'f', type: 'boolean', description: 'Keep streaming until the container exits' },
      { name: 'tail', short: 'n', type: 'number', integer: true, value: 'N', description: 'Only the last N lines' },
      { name: 'timestamps', short: 't', type: 'boolean', description: 'Prefix each line with its time' },
    ],
    async run({ args, opts, global }) {
      if (opts.tail !== undefined && (opts.tail as number) < 0) throw new UsageError('--tail must be zero or more');
      const q = `follow=${Boolean(opts.follow)}${opts.tail !== undefined ? `&tail=${opts.tail}` : ''}`;
      const client = clientOf(global);
      const records = await orVm(`/containers/${enc(args[0]!)}/logs?${q}`, (p) => client.openNdjson<{ time: string; stream: string; line: string; partial?: boolean }>('GET', p));
      let atLineStart = { stdout: true, stderr: true };
      for await (const r of records) {
        const stream = r.stream === 'stderr' ? 'stderr' : 'stdout';
        const prefix = opts.timestamps && atLineStart[stream] ? `${r.time} ` : '';
        process[stream].write(`${prefix}${r.line}${r.partial ? '' : '\n'}`);
        atLineStart = { ...atLineStart, [stream]: !r.partial };
      }
      return 0;
    },
  },
  {
    name: 'exec', usage: 'CONTAINER COMMAND [ARG...]', summary: 'Run a command in a running container; exits with its code', minArgs: 2, stopAtPositional: true,
    options: [
      { name: 'env', short: 'e', type: 'list', value: 'K=V', description: "Environment variable; K alone copies K's value from this shell" },
      { name: 'workdir', short: 'w', type: 'string', value: 'DIR', description: 'Working directory' },
      { name: 'user', short: 'u', type: 'string', value: 'USER', description: 'User name or uid[:gid]' },
      { name: 'tty', short: 't', type: 'boolean', description: 'Run it on a terminal (the size of this one)' },
      { name: 'interactive', short: 'i', type: 'boolean', description: 'With -t: this terminal, raw, typed into the command (stdin must be a terminal)' },
    ],
    async run({ args, opts, global }) {
      const [id, ...cmd] = args;
      const env = resolveEnv(opts.env as string[]);
      if (opts.interactive && !opts.tty) throw new UsageError('-i needs -t here (input without a terminal is not carried yet)');
      if (opts.interactive) {
        return execOnTerminal(clientOf(global), id!, { args: cmd, ...(env.length ? { env } : {}), ...(opts.workdir !== undefined ? { workdir: opts.workdir as string } : {}), ...(opts.user !== undefined ? { user: opts.user as string } : {}) });
      }
      const body = {
        args: cmd, ...(env.length ? { env } : {}), ...(opts.workdir !== undefined ? { workdir: opts.workdir } : {}), ...(opts.user !== undefined ? { user: opts.user } : {}),
        ...(opts.tty ? { tty: localTerminalSize() } : {}),
      };
      let exitCode: number | undefined;
      for await (const f of await clientOf(global).openNdjson<{ stream?: string; data?: string; exitCode?: number }>('POST', `/containers/${enc(id!)}/exec`, body)) {
        if (f.data !== undefined) (f.stream === 'stderr' ? process.stderr : process.stdout).write(Buffer.from(f.data, 'base64'));
        if (f.exitCode !== undefined) exitCode = f.exitCode;
      }
      if (exitCode === undefined) {
        process.stderr.write('Error: the exec stream ended without an exit code\n');
        return 1;
      }
      return exitCode < 0 ? 126 : exitCode;
    },
  },
  {
    name: 'stats', usage: '[CONTAINER...]', summary: 'Live CPU %, memory and pids of running containers',
    options: [{ name: 'no-stream', type: 'boolean', description: 'Print one sample and exit' }, OUTPUT_OPTION],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const ids = args.length ? args : (await client.json<Container[]>('GET', '/containers')).map((c) => c.id);
      const sample = async () => {
        const settled = await Promise.allSettled(ids.map((i) => client.json<StatsSample>('GET', `/containers/${enc(i)}/stats`)));
        return settled.map((s, i) => {
          if (s.status === 'fulfilled') return s.value;
          // Named explicitly and not there: that is an error; gone since the listing: skip it.
          if (args.length) throw s.reason;
          return { id: ids[i]!, gone: true as const };
        });
      };
      let prev = await sample();
      for (;;) {
        await sleep(opts['no-stream'] ? 500 : 1000);
        const cur = await sample();
        const rows = cur.flatMap((s, i) => {
          const a = prev[i];
          if ('gone' in s || !a || 'gone' in a) return [];
          return [{ ...s, cpuPercent: Number(cpuPercent(a, s).toFixed(2)) }];
        });
        prev = cur;
        if (global.output === 'json') process.stdout.write(JSON.stringify(rows) + '\n');
        else {
          if (!opts['no-stream'] && process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H');
          process.stdout.write(table(['CONTAINER ID', 'NAME', 'CPU %', 'MEM USAGE / LIMIT', 'MEM %', 'PIDS'], rows.map((s) => [
            short(s.id), s.name, `${s.cpuPercent.toFixed(2)}%`,
            `${humanMemory(s.memoryBytes)} / ${s.memoryLimitBytes ? humanMemory(s.memoryLimitBytes) : 'unlimited'}`,
            s.memoryLimitBytes ? `${((100 * s.memoryBytes) / s.memoryLimitBytes).toFixed(2)}%` : '--',
            String(s.pids),
          ])));
        }
        if (opts['no-stream']) return 0;
      }
    },
  },
  {
    name: 'wait', usage: 'CONTAINER [CONTAINER...]', summary: 'Block until containers stop, then print their exit codes', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (id) => {
        const r = await client.json<WaitResult>('POST', `/containers/${enc(id)}/wait`);
        process.stdout.write(`${r.exitCode}\n`);
      }, false);
    },
  },
];

/** `inspect -o table`: the scalar fields of each object, one per line. */
function inspectTable(objs: Record<string, unknown>[]): string {
  return objs.map((o) => table(['FIELD', 'VALUE'], Object.entries(o)
    .filter(([, v]) => v === null || typeof v !== 'object' || Array.isArray(v))
    .map(([k, v]) => [k, Array.isArray(v) ? v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(', ') : String(v)]))).join('\n');
}
