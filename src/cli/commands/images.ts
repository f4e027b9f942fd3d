import { createReadStream, statSync } from 'node:fs';
import type { ApiClient } from '../client.js';
import { UsageError, type CommandSpec } from '../args.js';
import { ago, humanSize, printJson, short, table } from '../output.js';
import { PullProgress } from '../progress.js';
import { clientOf } from './shared.js';

interface Operation {
  id: string;
  status: string;
  error: { code: string; message: string } | null;
  result: { id?: string; digest?: string } | null;
}
interface Image {
  id: string;
  digest: string;
  tags: string[];
  size: number;
  createdAt: string;
  config: { created?: string };
}

/** Start a pull and show its progress until the operation ends. */
export async function pullWithProgress(client: ApiClient, reference: string, creds?: { username: string; password: string }, quiet = false): Promise<Operation> {
  const op = await client.json<Operation>('POST', '/images/pull', { reference, ...(creds ?? {}) });
  const ac = new AbortController();
  const bar = new PullProgress();
  const watching = (async () => {
    if (quiet) return;
    for await (const ev of client.sse<{ action: string; attributes?: { progress?: { layers?: [] } } }>(`/events?type=operation&id=${op.id}`, ac.signal)) {
      if (ev.action === 'progress' && ev.attributes?.progress?.layers) bar.update(ev.attributes.progress.layers);
    }
  })().catch(() => undefined);
  let done = op;
  while (done.status === 'running' || done.status === 'pending') {
    done = await client.json<Operation>('GET', `/operations/${op.id}/wait?timeout=30`);
  }
  ac.abort();
  await watching;
  if (done.status !== 'succeeded') {
    throw Object.assign(new Error(`${done.error?.code ?? 'Failed'}: ${done.error?.message ?? 'pull failed'}`), { exitCode: 1 });
  }
  return done;
}

async function readPasswordFromStdin(): Promise<string> {
  let s = '';
  for await (const c of process.stdin as AsyncIterable<Buffer>) s += c.toString();
  return s.replace(/\r?\n$/, '');
}

export const imageCommands: CommandSpec[] = [
  {
    name: 'image pull', usage: 'NAME[:TAG|@DIGEST]', summary: 'Pull an image from a registry', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'username', short: 'u', type: 'string', value: 'USER', description: 'Registry user name' },
      { name: 'password-stdin', type: 'boolean', description: 'Read the registry password from standard input' },
      { name: 'quiet', short: 'q', type: 'boolean', description: 'Print only the image id' },
    ],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      let creds: { username: string; password: string } | undefined;
      if (opts.username) creds = { username: String(opts.username), password: opts['password-stdin'] ? await readPasswordFromStdin() : '' };
      const op = await pullWithProgress(client, args[0]!, creds, Boolean(opts.quiet));
      process.stdout.write(opts.quiet ? `${op.result?.id}\n` : `Pulled ${args[0]} (${op.result?.digest})\n`);
      return 0;
    },
  },
  {
    name: 'image ls', usage: '', summary: 'List images', maxArgs: 0,
    options: [{ name: 'quiet', short: 'q', type: 'boolean', description: 'Only show image ids' }],
    async run({ opts, global }) {
      const images = await clientOf(global).json<Image[]>('GET', '/images');
      if (global.output === 'json') return printJson(images), 0;
      if (opts.quiet) {
        process.stdout.write(images.map((i) => short(i.id) + '\n').join(''));
        return 0;
      }
      const rows: string[][] = [];
      for (const i of images) {
        const names = i.tags.length ? i.tags : ['<none>:<none>'];
        for (const t of names) {
          const at = t.lastIndexOf(':');
          rows.push([t.slice(0, at), t.slice(at + 1), short(i.id), ago(i.config.created ?? i.createdAt), humanSize(i.size)]);
        }
      }
      process.stdout.write(table(['REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE'], rows));
      return 0;
    },
  },
  {
    name: 'image inspect', usage: 'IMAGE [IMAGE...]', summary: 'Show an image in detail (JSON)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      const out = [];
      for (const a of args) out.push(await client.json('GET', `/images/${encodeURIComponent(a)}`));
      printJson(out);
      return 0;
    },
  },
  {
    name: 'image rm', usage: 'IMAGE [IMAGE...]', summary: 'Remove images (untag; delete when nothing uses them)', minArgs: 1,
    options: [{ name: 'force', short: 'f', type: 'boolean', description: 'Remove every tag of the image' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      let code = 0;
      for (const a of args) {
        try {
          const r = await client.json<{ untagged: string[]; deleted: string[] }>('DELETE', `/images/${encodeURIComponent(a)}?force=${Boolean(opts.force)}`);
          for (const u of r.untagged) process.stdout.write(`Untagged: ${u}\n`);
          for (const d of r.deleted) process.stdout.write(`Deleted: ${d}\n`);
        } catch (e) {
          process.stderr.write(`Error: ${(e as Error).message}\n`);
          code = 1;
        }
      }
      return code;
    },
  },
  {
    name: 'image import', usage: 'FILE', summary: 'Import an OCI image-layout tar or a `docker save` tar', minArgs: 1, maxArgs: 1, options: [],
    async run({ args, global }) {
      const file = args[0]!;
      try {
        statSync(file);
      } catch {
        throw new UsageError(`cannot read ${file}`);
      }
      const imgs = await clientOf(global).upload<{ name: string | null; image: Image }[]>('/images/import', createReadStream(file), 'application/x-tar');
      if (global.output === 'json') return printJson(imgs), 0;
      for (const i of imgs) process.stdout.write(i.name ? `Loaded image: ${i.name}\n` : `Loaded image ID: ${i.image.id}\n`);
      return 0;
    },
  },
  {
    name: 'image prune', usage: '', summary: 'Remove unused images and collect garbage', maxArgs: 0,
    options: [{ name: 'all', short: 'a', type: 'boolean', description: 'Remove every image no container uses, not only untagged ones' }],
    async run({ opts, global }) {
      const r = await clientOf(global).json<{ deleted: string[]; bytesFreed: number }>('POST', '/images/prune', { all: Boolean(opts.all) });
      for (const d of r.deleted) process.stdout.write(`Deleted: ${d}\n`);
      process.stdout.write(`Total reclaimed space: ${humanSize(r.bytesFreed)}\n`);
      return 0;
    },
  },
];

