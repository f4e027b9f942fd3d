import { createReadStream, statSync } from 'node:fs';
import type { ApiClient } from '../client.js';
import { OUTPUT_OPTION, UsageError, type CommandSpec } from '../args.js';
import { ago, humanSize, printJson, render, short, table } from '../output.js';
import { PullProgress, type PullProgressEvent } from '../progress.js';
import { clientOf, eachArg, operationEnded, succeeded } from './shared.js';

interface Operation {
  id: string;
  status: string;
  progress?: PullProgressEvent;
  error: { code: string; message: string } | null;
  result: { id?: string; digest?: string; reference?: string } | null;
}

interface Image {
  id: string;
  digest: string;
  tags: string[];
  size: number;
  createdAt: string;
  config: { created?: string };
}

const enc = encodeURIComponent;

interface DiskImage {
  name: string;
  digest: string;
  format: string;
  size: number;
  virtualSize: number;
  createdAt: string;
}

/**
 * Pull an image and show its progress on stderr until the operation ends.
 * The event stream is open before the pull starts, so no progress is missed;
 * the operation's end comes from /operations/{id}/wait. A failed pull throws
 * ApiError with the operation's error code.
 */
export async function pullWithProgress(client: ApiClient, reference: string, creds?: { username: string; password: string }, quiet = false): Promise<Operation> {
  const ac = new AbortController();
  const bar = new PullProgress(process.stderr);
  let opId: string | undefined;
  const early: { id: string; progress: PullProgressEvent }[] = [];
  const events = quiet ? undefined : await client.openSse<{ id: string; action: string; attributes?: { progress?: PullProgressEvent } }>('/events?type=operation', ac.signal).catch(() => undefined);
  const watching = (async () => {
    if (!events) return;
    for await (const ev of events) {
      if (ev.action !== 'progress' || !ev.attributes?.progress) continue;
      if (opId === undefined) early.push({ id: ev.id, progress: ev.attributes.progress });
      else if (ev.id === opId) bar.update(ev.attributes.progress);
    }
  })().catch(() => undefined);
  let op: Operation;
  try {
    op = await client.json<Operation>('POST', '/images/pull', { reference, ...(creds ?? {}) });
    opId = op.id;
    for (const e of early.splice(0)) if (e.id === opId) bar.update(e.progress);
    op = await operationEnded(client, op);
    // The operation's last progress: the final frame even if its event is still in flight.
    if (!quiet && op.progress?.layers) bar.update(op.progress);
  } finally {
    ac.abort();
    await watching;
    bar.finish();
  }
  return succeeded(op, 'pull');
}

async function readStdin(): Promise<string> {
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
      { name: 'quiet', short: 'q', type: 'boolean', description: 'No progress; print only the image id' },
    ],
    async run({ args, opts, global }) {
      if (opts['password-stdin'] && !opts.username) throw new UsageError('--password-stdin needs --username');
      let creds: { username: string; password: string } | undefined;
      if (opts.username !== undefined) creds = { username: String(opts.username), password: opts['password-stdin'] ? await readStdin() : '' };
      const op = await pullWithProgress(clientOf(global), args[0]!, creds, Boolean(opts.quiet));
      if (opts.quiet) process.stdout.write(`${op.result?.id ?? ''}\n`);
      else process.stdout.write(`Digest: ${op.result?.digest ?? '?'}\nStatus: Downloaded image for ${op.result?.reference ?? args[0]}\n`);
      return 0;
    },
  },
  {
    name: 'image ls', usage: '', summary: 'List images', maxArgs: 0,
    options: [{ name: 'quiet', short: 'q', type: 'boolean', description: 'Only print image ids' }, OUTPUT_OPTION],
    async run({ opts, global }) {
      const images = await clientOf(global).json<Image[]>('GET', '/images');
      if (opts.quiet && global.output !== 'json') {
        process.stdout.write([...new Set(images.map((i) => short(i.id)))].map((i) => `${i}\n`).join(''));
        return 0;
      }
      return render(global, images, (list) => {
        const rows: string[][] = [];
        for (const i of list) {
          for (const t of i.tags.length ? i.tags : ['<none>:<none>']) {
            // The tag is after the last ':' that follows the last '/' (a registry port is not a tag).
            const at = t.lastIndexOf(':') > t.lastIndexOf('/') ? t.lastIndexOf(':') : -1;
            rows.push([at === -1 ? t : t.slice(0, at), at === -1 ? '<none>' : t.slice(at + 1), short(i.id), ago(i.config.created ?? i.createdAt), humanSize(i.size)]);
          }
        }
        return table(['REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE'], rows);
      });
    },
  },
  {
    name: 'image inspect', usage: 'IMAGE [IMAGE...]', summary: 'Show images in detail (JSON)', minArgs: 1, options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const client = clientOf(global);
      const out: Image[] = [];
      for (const a of args) out.push(await client.json<Image>('GET', `/images/${enc(a)}`));
      if (global.output === 'table') {
        process.stdout.write(table(['IMAGE ID', 'TAGS', 'DIGEST', 'SIZE', 'CREATED'], out.map((i) => [short(i.id), i.tags.join(', '), i.digest, humanSize(i.size), ago(i.config.created ?? i.createdAt)])));
      } else printJson(out);
      return 0;
    },
  },
  {
    name: 'image rm', usage: 'IMAGE [IMAGE...]', summary: 'Remove images (untag; delete when no tag and no container is left)', minArgs: 1,
    options: [{ name: 'force', short: 'f', type: 'boolean', description: 'Remove every tag of the image' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      return eachArg(args, async (a) => {
        const r = await client.json<{ untagged: string[]; deleted: string[] }>('DELETE', `/images/${enc(a)}?force=${Boolean(opts.force)}`);
        for (const u of r.untagged) process.stdout.write(`Untagged: ${u}\n`);
        for (const d of r.deleted) process.stdout.write(`Deleted: ${d}\n`);
      }, false);
    },
  },
  {
    name: 'image import', usage: 'FILE', summary: 'Import an OCI image-layout tar or a `docker save` tar', minArgs: 1, maxArgs: 1, options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const file = args[0]!;
      try {
        if (!statSync(file).isFile()) throw new Error('not a file');
      } catch (e) {
        throw new UsageError(`cannot read ${file}: ${(e as Error).message}`);
      }
      const imgs = await clientOf(global).upload<{ name: string | null; image: Image }[]>('/images/import', createReadStream(file), 'application/x-tar');
      return render(global, imgs, (list) => list.map((i) => (i.name ? `Loaded image: ${i.name}\n` : `Loaded image ID: ${i.image.id}\n`)).join(''));
    },
  },
  {
    name: 'image import-disk', usage: 'NAME FILE',
    summary: 'Import a VM image: a disk (raw or qcow2; VMs get copy-on-write overlays of it: vm run --image NAME), or with --type a kernel or initrd (vm run --kernel NAME --initrd NAME)',
    minArgs: 2, maxArgs: 2,
    options: [{ name: 'type', type: 'string', value: 'TYPE', description: 'disk (default), kernel (a bzImage or ELF) or initrd (a cpio archive, compressed or not)' }, OUTPUT_OPTION],
    async run({ args, opts, global }) {
      const type = String(opts.type ?? 'disk');
      if (!['disk', 'kernel', 'initrd'].includes(type)) throw new UsageError(`--type must be disk, kernel or initrd, got "${type}"`);
      const [name, file] = args as [string, string];
      try {
        if (!statSync(file).isFile()) throw new Error('not a file');
      } catch (e) {
        throw new UsageError(`cannot read ${file}: ${(e as Error).message}`);
      }
      const d = await clientOf(global).upload<DiskImage>(`/disk-images?name=${enc(name)}&type=${type}`, createReadStream(file), 'application/octet-stream');
      return render(global, d, (x) =>
        x.format === 'kernel' || x.format === 'initrd'
          ? `Imported ${x.format} ${x.name}: ${humanSize(x.size)}, ${x.digest}\n`
          : `Imported disk image ${x.name}: ${x.format}, ${humanSize(x.virtualSize)} virtual, ${x.digest}\n`);
    },
  },
  {
    name: 'image disks', usage: '', summary: 'List VM disk images', maxArgs: 0, options: [OUTPUT_OPTION],
    async run({ global }) {
      const list = await clientOf(global).json<DiskImage[]>('GET', '/disk-images');
      return render(global, list, (l) => table(['NAME', 'FORMAT', 'VIRTUAL SIZE', 'SIZE', 'DIGEST', 'CREATED'], l.map((d) => [d.name, d.format, humanSize(d.virtualSize), humanSize(d.size), short(d.digest.replace(/^sha256:/, '')), ago(d.createdAt)])));
    },
  },
  {
    name: 'image rm-disk', usage: 'NAME [NAME...]', summary: "Remove disk images (refused while a VM's disk is backed by one)", minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (a) => {
        await client.json('DELETE', `/disk-images/${enc(a)}`);
      });
    },
  },
  {
    name: 'image prune', usage: '', summary: "Remove the project's dangling images (-a: every one its containers do not use); other projects' are untouched", maxArgs: 0,
    options: [{ name: 'all', short: 'a', type: 'boolean', description: 'Remove every image no container uses, not only untagged ones' }, OUTPUT_OPTION],
    async run({ opts, global }) {
      const r = await clientOf(global).json<{ deleted: string[]; bytesFreed: number }>('POST', '/images/prune', { all: Boolean(opts.all) });
      return render(global, r, (x) => `${x.deleted.map((d) => `Deleted: ${d}\n`).join('')}Total reclaimed space: ${humanSize(x.bytesFreed)}\n`);
    },
  },
];
