import { readFileSync } from 'node:fs';
import { ApiError, type ApiClient } from '../client.js';
import { parseRestart, parseSize, type CommandContext, type CommandSpec, type OptionSpec } from '../args.js';
import { ago, humanMemory, printJson, short, statusText, table, truncate } from '../output.js';
import { pullWithProgress } from './images.js';
import { clientOf } from './shared.js';

interface Container {
  id: string;
  name: string;
  status: string;
  exitCode: number | null;
  oomKilled: boolean;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  config: { image: string; cmd?: string[]; entrypoint?: string[] };
  warnings: string[];
}

const CREATE_OPTIONS: OptionSpec[] = [
  { name: 'name', type: 'string', value: 'NAME', description: 'Container name' },
  { name: 'env', short: 'e', type: 'list', value: 'K=V', description: 'Environment variable (K alone copies it from this shell)' },
  { name: 'env-file', type: 'list', value: 'FILE', description: 'Read environment variables from a file' },
  { name: 'workdir', short: 'w', type: 'string', value: 'DIR', description: 'Working directory inside the container' },
  { name: 'user', short: 'u', type: 'string', value: 'USER', description: 'User name or uid[:gid]' },
  { name: 'entrypoint', type: 'string', value: 'CMD', description: "Override the image's entrypoint" },
  { name: 'memory', short: 'm', type: 'string', value: 'SIZE', description: 'Memory limit (e.g. 64m, 1g); exceeding it OOM-kills' },
  { name: 'cpus', type: 'number', value: 'N', description: 'CPU limit in CPUs (e.g. 0.5)' },
  { name: 'pids-limit', type: 'number', value: 'N', description: 'Maximum number of processes' },
  { name: 'restart', type: 'string', value: 'POLICY', description: 'no, on-failure[:N], always, unless-stopped', default: 'no' },
  { name: 'rm', type: 'boolean', description: 'Remove the container when it exits' },
  { name: 'runtime', type: 'string', value: 'NAME', description: 'OCI runtime: runc or crun (default: the host default)' },
  { name: 'hostname', type: 'string', value: 'NAME', description: 'Container host name' },
  { name: 'label', short: 'l', type: 'list', value: 'K=V', description: 'Label' },
  { name: 'stop-signal', type: 'string', value: 'SIG', description: 'Signal to stop the container' },
  { name: 'stop-timeout', type: 'number', value: 'SECS', description: 'Seconds before SIGKILL on stop' },
];

function envList(ctx: CommandContext): string[] {
  const out: string[] = [];
  for (const f of ctx.opts['env-file'] as string[]) {
    for (const line of readFileSync(f, 'utf8').split('\n')) {
      const t = line.trim();
      if (t && !t.startsWith('#')) out.push(t);
    }
  }
  for (const e of ctx.opts.env as string[]) {
    out.push(e.includes('=') ? e : process.env[e] !== undefined ? `${e}=${process.env[e]}` : e);
  }
  return out;
}

function createBody(ctx: CommandContext): Record<string, unknown> {
  const [image, ...cmd] = ctx.args;
  const o = ctx.opts;
  const labels: Record<string, string> = {};
  for (const l of o.label as string[]) {
    const eq = l.indexOf('=');
    labels[eq === -1 ? l : l.slice(0, eq)] = eq === -1 ? '' : l.slice(eq + 1);
  }
  return {
    image,
    ...(cmd.length ? { cmd } : {}),
    ...(o.name ? { name: o.name } : {}),
    env: envList(ctx),
    ...(o.workdir ? { workdir: o.workdir } : {}),
    ...(o.user ? { user: o.user } : {}),
    ...(o.entrypoint !== undefined ? { entrypoint: o.entrypoint === '' ? [] : [String(o.entrypoint)] } : {}),
    ...(o.memory ? { memoryBytes: parseSize(String(o.memory)) } : {}),
    ...(o.cpus !== undefined ? { cpus: o.cpus } : {}),
    ...(o['pids-limit'] !== undefined ? { pidsLimit: o['pids-limit'] } : {}),
    restart: parseRestart(String(o.restart)),
    autoRemove: Boolean(o.rm),
    ...(o.runtime ? { runtime: o.runtime } : {}),
    ...(o.hostname ? { hostname: o.hostname } : {}),
    labels,
    ...(o['stop-signal'] ? { stopSignal: o['stop-signal'] } : {}),
    ...(o['stop-timeout'] !== undefined ? { stopTimeout: o['stop-timeout'] } : {}),
  };
}

/** Create, pulling the image first when it is not here (as docker run does). */
async function createContainer(client: ApiClient, body: Record<string, unknown>): Promise<Container> {
  try {
    return await client.json<Container>('POST', '/containers', body);
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== 'NotFound' || !/no such image/.test(e.message)) throw e;
    process.stderr.write(`Unable to find image '${String(body.image)}' locally\n`);
    await pullWithProgress(client, String(body.image));
    return client.json<Container>('POST', '/containers', body);
  }
}

function warn(c: Container) {
  for (const w of c.warnings) process.stderr.write(`WARNING: ${w}\n`);
}

/** Each id in turn; failures are reported and make the exit code 1. */
function forEach(verb: string, path: (id: string, ctx: CommandContext) => string, body?: (ctx: CommandContext) => unknown, method = 'POST') {
  return async (ctx: CommandContext) => {
    const client = clientOf(ctx.global);
    let code = 0;
    for (const id of ctx.args) {
      try {
        await client.json(method, path(encodeURIComponent(id), ctx), body?.(ctx));
        process.stdout.write(`${id}\n`);
      } catch (e) {
        process.stderr.write(`Error: cannot ${verb} ${id}: ${(e as Error).message}\n`);
        code = 1;
      }
    }
    return code;
  };
}

async function attachAndRun(client: ApiClient, c: Container, autoRemove: boolean): Promise<number> {
  const id = c.id;
  // Open the output stream and the wait before starting, so nothing is missed even with --rm.
  const exited = client.json<{ exitCode: number; oomKilled: boolean }>('POST', `/containers/${id}/wait?condition=${autoRemove ? 'removed' : 'not-running'}`);
  const output = (async () => {
    for await (const rec of client.ndjson<{ stream: string; line: string; partial?: boolean }>('GET', `/containers/${id}/logs?follow=true`)) {
      (rec.stream === 'stderr' ? process.stderr : process.stdout).write(rec.partial ? rec.line : `${rec.line}\n`);
    }
  })();
  const forward = (sig: NodeJS.Signals) => () => void client.json('POST', `/containers/${id}/kill`, { signal: sig }).catch(() => undefined);
  const onInt = forward('SIGINT');
  const onTerm = forward('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    await client.json('POST', `/containers/${id}/start`);
    const result = await exited;
    await output.catch(() => undefined);
    return result.exitCode;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

export const containerCommands: CommandSpec[] = [
  {
    name: 'run', usage: 'IMAGE [COMMAND] [ARG...]', summary: 'Create and start a container; without -d, stream its output and exit with its code',
    minArgs: 1, stopAtPositional: true,
    options: [{ name: 'detach', short: 'd', type: 'boolean', description: 'Run in the background and print the container id' }, ...CREATE_OPTIONS],
    async run(ctx) {
      const client = clientOf(ctx.global);
      let c: Container;
      try {
        c = await createContainer(client, createBody(ctx));
      } catch (e) {
        throw Object.assign(e as Error, { exitCode: 125 });
      }
      warn(c);
      if (ctx.opts.detach) {
        await client.json('POST', `/containers/${c.id}/start`);
        process.stdout.write(`${c.id}\n`);
        return 0;
      }
      return attachAndRun(client, c, Boolean(ctx.opts.rm));
    },
  },
  {
    name: 'create', usage: 'IMAGE [COMMAND] [ARG...]', summary: 'Create a container without starting it', minArgs: 1, stopAtPositional: true,
    options: CREATE_OPTIONS,
    async run(ctx) {
      const c = await createContainer(clientOf(ctx.global), createBody(ctx));
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
        const client = clientOf(ctx.global);
        return attachAndRun(client, await client.json<Container>('GET', `/containers/${encodeURIComponent(ctx.args[0]!)}`), false);
      }
      return forEach('start', (id) => `/containers/${id}/start`)(ctx);
    },
  },
  {
    name: 'stop', usage: 'CONTAINER [CONTAINER...]', summary: 'Stop containers: stop signal, then SIGKILL after the timeout', minArgs: 1,
    options: [{ name: 'time', short: 't', type: 'number', value: 'SECS', description: 'Seconds to wait before SIGKILL (default: the container\'s, else 10)' }],
    run: forEach('stop', (id) => `/containers/${id}/stop`, (ctx) => (ctx.opts.time !== undefined ? { timeout: ctx.opts.time } : {})),
  },
  {
    name: 'restart', usage: 'CONTAINER [CONTAINER...]', summary: 'Stop and start containers', minArgs: 1,
    options: [{ name: 'time', short: 't', type: 'number', value: 'SECS', description: 'Seconds to wait before SIGKILL' }],
    run: forEach('restart', (id) => `/containers/${id}/restart`, (ctx) => (ctx.opts.time !== undefined ? { timeout: ctx.opts.time } : {})),
  },
  {
    name: 'kill', usage: 'CONTAINER [CONTAINER...]', summary: 'Send a signal to containers', minArgs: 1,
    options: [{ name: 'signal', short: 's', type: 'string', value: 'SIG', description: 'Signal to send', default: 'SIGKILL' }],
    run: forEach('kill', (id) => `/containers/${id}/kill`, (ctx) => ({ signal: ctx.opts.signal })),
  },
  { name: 'pause', usage: 'CONTAINER [CONTAINER...]', summary: 'Freeze all processes of containers', minArgs: 1, options: [], run: forEach('pause', (id) => `/containers/${id}/pause`) },
  { name: 'unpause', usage: 'CONTAINER [CONTAINER...]', summary: 'Thaw paused containers', minArgs: 1, options: [], run: forEach('unpause', (id) => `/containers/${id}/unpause`) },
  {
    name: 'rm', usage: 'CONTAINER [CONTAINER...]', summary: 'Remove containers', minArgs: 1,
    options: [{ name: 'force', short: 'f', type: 'boolean', description: 'Kill a running container first' }],
    run: forEach('remove', (id, ctx) => `/containers/${id}?force=${Boolean(ctx.opts.force)}`, undefined, 'DELETE'),
  },
  {
    name: 'ps', usage: '', summary: 'List containers', maxArgs: 0,
    options: [
      { name: 'all', short: 'a', type: 'boolean', description: 'Show all containers, not only running ones' },
      { name: 'quiet', short: 'q', type: 'boolean', description: 'Only show ids' },
    ],
    async run({ opts, global }) {
      const list = await clientOf(global).json<Container[]>('GET', `/containers?all=${Boolean(opts.all)}`);
      if (global.output === 'json') return printJson(list), 0;
      if (opts.quiet) {
        process.stdout.write(list.map((c) => `${short(c.id)}\n`).join(''));
        return 0;
      }
      const rows = list.map((c) => [
        short(c.id), truncate(c.config.image, 40), truncate(JSON.stringify([...(c.config.entrypoint ?? []), ...(c.config.cmd ?? [])].join(' ')), 24),
        ago(c.createdAt), statusText(c), c.name,
      ]);
      process.stdout.write(table(['CONTAINER ID', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS', 'NAMES'], rows));
      return 0;
    },
  },
  {
    name: 'inspect', usage: 'NAME|ID [NAME|ID...]', summary: 'Show containers (or images) in detail (JSON)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      const out: unknown[] = [];
      for (const a of args) {
        try {
          out.push(await client.json('GET', `/containers/${encodeURIComponent(a)}`));
        } catch (e) {
          if (!(e instanceof ApiError) || e.code !== 'NotFound') throw e;
          out.push(await client.json('GET', `/images/${encodeURIComponent(a)}`));
        }
      }
      printJson(out);
      return 0;
    },
  },
  {
    name: 'logs', usage: 'CONTAINER', summary: "Print a container's output", minArgs: 1, maxArgs: 1,
    options: [
      { name: 'follow', short: 'f', type: 'boolean', description: 'Keep streaming until the container exits' },
      { name: 'tail', short: 'n', type: 'number', value: 'N', description: 'Only the last N lines' },
      { name: 'timestamps', short: 't', type: 'boolean', description: 'Prefix each line with its time' },
    ],
    async run({ args, opts, global }) {
      const q = `follow=${Boolean(opts.follow)}${opts.tail !== undefined ? `&tail=${opts.tail}` : ''}`;
      for await (const r of clientOf(global).ndjson<{ time: string; stream: string; line: string; partial?: boolean }>('GET', `/containers/${encodeURIComponent(args[0]!)}/logs?${q}`)) {
        (r.stream === 'stderr' ? process.stderr : process.stdout).write(`${opts.timestamps ? `${r.time} ` : ''}${r.line}${r.partial ? '' : '\n'}`);
      }
      return 0;
    },
  },
  {
    name: 'exec', usage: 'CONTAINER COMMAND [ARG...]', summary: 'Run a command in a running container; exits with its code', minArgs: 2, stopAtPositional: true,
    options: [
      { name: 'env', short: 'e', type: 'list', value: 'K=V', description: 'Environment variable' },
      { name: 'workdir', short: 'w', type: 'string', value: 'DIR', description: 'Working directory' },
      { name: 'user', short: 'u', type: 'string', value: 'USER', description: 'User name or uid[:gid]' },
    ],
    async run({ args, opts, global }) {
      const [id, ...cmd] = args;
      let exitCode = 126;
      const body = { args: cmd, ...((opts.env as string[]).length ? { env: opts.env } : {}), ...(opts.workdir ? { workdir: opts.workdir } : {}), ...(opts.user ? { user: opts.user } : {}) };
      for await (const f of clientOf(global).ndjson<{ stream?: string; data?: string; exitCode?: number }>('POST', `/containers/${encodeURIComponent(id!)}/exec`, body)) {
        if (f.data !== undefined) (f.stream === 'stderr' ? process.stderr : process.stdout).write(Buffer.from(f.data, 'base64'));
        if (f.exitCode !== undefined) exitCode = f.exitCode;
      }
      return exitCode;
    },
  },
  {
    name: 'stats', usage: '[CONTAINER...]', summary: 'CPU, memory and pids of running containers',
    options: [{ name: 'no-stream', type: 'boolean', description: 'Print one sample and exit' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const ids = args.length ? args : (await client.json<Container[]>('GET', '/containers')).map((c) => c.id);
      type S = { id: string; name: string; cpuUsageNs: number; memoryBytes: number; memoryLimitBytes?: number; pids: number; time: string };
      const sample = async () => Promise.all(ids.map((i) => client.json<S>('GET', `/containers/${encodeURIComponent(i)}/stats`)));
      for (;;) {
        const a = await sample();
        await new Promise((r) => setTimeout(r, 500));
        const b = await sample();
        if (global.output === 'json') printJson(b);
        else {
          const rows = b.map((s, i) => {
            const prev = a[i]!;
            const dt = (Date.parse(s.time) - Date.parse(prev.time)) * 1e6;
            const cpu = dt > 0 ? ((s.cpuUsageNs - prev.cpuUsageNs) / dt) * 100 : 0;
            return [short(s.id), s.name, `${cpu.toFixed(2)}%`, `${humanMemory(s.memoryBytes)} / ${s.memoryLimitBytes ? humanMemory(s.memoryLimitBytes) : 'unlimited'}`, String(s.pids)];
          });
          if (!opts['no-stream'] && process.stdout.isTTY) process.stdout.write('\x1b[2J\x1b[H');
          process.stdout.write(table(['CONTAINER ID', 'NAME', 'CPU %', 'MEM USAGE / LIMIT', 'PIDS'], rows));
        }
        if (opts['no-stream']) return 0;
      }
    },
  },
  {
    name: 'wait', usage: 'CONTAINER [CONTAINER...]', summary: 'Block until containers stop, then print their exit codes', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      for (const id of args) {
        const r = await client.json<{ exitCode: number }>('POST', `/containers/${encodeURIComponent(id)}/wait`);
        process.stdout.write(`${r.exitCode}\n`);
      }
      return 0;
    },
  },
];

