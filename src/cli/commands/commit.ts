/**
 * `nimbus commit`, `nimbus export` and `nimbus image import-rootfs`, as `docker commit`,
 * `docker export` and `docker import`, over POST /containers/{id}/commit, GET
 * /containers/{id}/export (the tar in NDJSON frames) and POST /images/import-rootfs (the tarball
 * as the body).
 */
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { OUTPUT_OPTION, UsageError, type CommandSpec, type OptionSpec } from '../args.js';
import { render } from '../output.js';
import { clientOf } from './shared.js';

const enc = encodeURIComponent;

interface Image { id: string; tags: string[] }

const CHANGE_OPTION: OptionSpec = {
  name: 'change', short: 'c', type: 'list', value: 'INSTRUCTION',
  description: 'A Dockerfile instruction applied to the image config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME or STOPSIGNAL (e.g. -c \'CMD ["app"]\' -c \'ENV MODE=prod\')',
};

/** The tar's bytes, from the frames. */
async function* tarBytes(frames: AsyncIterable<{ data?: string }>): AsyncGenerator<Buffer> {
  for await (const f of frames) if (f.data !== undefined) yield Buffer.from(f.data, 'base64');
}

const list = (v: unknown): string[] => (Array.isArray(v) ? (v as string[]) : []);

export const commitCommands: CommandSpec[] = [
  {
    name: 'commit', usage: 'CONTAINER [REPO[:TAG]]',
    summary: "Make an image of a container's changes: its image's layers plus one layer of what it wrote and deleted, with its config (edited by -c); a running container is paused while its layer is read",
    minArgs: 1, maxArgs: 2,
    options: [
      CHANGE_OPTION,
      { name: 'message', short: 'm', type: 'string', value: 'TEXT', description: 'The commit message (image inspect\'s Comment, the history entry\'s comment)' },
      { name: 'author', short: 'a', type: 'string', value: 'NAME', description: 'The author (e.g. "Jane Doe <jane@example.com>")' },
      { name: 'pause', short: 'p', type: 'boolean', default: true, description: 'Pause a running container while its layer is read (--pause=false: read it as it runs)' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const body = {
        ...(args[1] ? { reference: args[1] } : {}),
        ...(list(opts.change).length ? { changes: list(opts.change) } : {}),
        ...(typeof opts.message === 'string' ? { comment: opts.message } : {}),
        ...(typeof opts.author === 'string' ? { author: opts.author } : {}),
        pause: opts.pause !== false,
      };
      const img = await clientOf(global).json<Image>('POST', `/containers/${enc(args[0]!)}/commit`, body);
      return render(global, img, (i) => `${i.id}\n`);
    },
  },
  {
    name: 'export', usage: 'CONTAINER',
    summary: "Write a container's whole filesystem (its image and its changes merged, as its processes see it; volumes and other mounts not included) as a tar, running or stopped",
    minArgs: 1, maxArgs: 1,
    options: [{ name: 'output', short: 'o', type: 'string', value: 'FILE', description: 'Write the tar to FILE (- or none: stdout, which must not be a terminal)' }],
    async run({ args, opts, global }) {
      const out = typeof opts.output === 'string' ? opts.output : '-';
      if (out === '-' && process.stdout.isTTY) throw new UsageError('refusing to write a tar to a terminal: give -o FILE or redirect stdout');
      const frames = await clientOf(global).openNdjson<{ data?: string }>('GET', `/containers/${enc(args[0]!)}/export`);
      if (out === '-') {
        await pipeline(Readable.from(tarBytes(frames)), process.stdout);
        return 0;
      }
      try {
        await pipeline(Readable.from(tarBytes(frames)), createWriteStream(out, { mode: 0o600 }));
      } catch (e) {
        // a cut stream leaves no half archive behind
        await rm(out, { force: true });
        throw e;
      }
      return 0;
    },
  },
  {
    name: 'image import-rootfs', usage: 'FILE|- [REPO[:TAG]]',
    summary: 'Make a one-layer image from a root filesystem tarball, plain or gzip (docker import; - reads stdin): its entries are checked as any image layer\'s, its config comes from -c',
    minArgs: 1, maxArgs: 2,
    options: [
      CHANGE_OPTION,
      { name: 'message', short: 'm', type: 'string', value: 'TEXT', description: 'The history comment (default "Imported from -")' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const file = args[0]!;
      if (file !== '-') {
        try {
          if (!statSync(file).isFile()) throw new Error('not a file');
        } catch (e) {
          throw new UsageError(`cannot read ${file}: ${(e as Error).message}`);
        }
      }
      const q = new URLSearchParams();
      if (args[1]) q.set('reference', args[1]);
      for (const c of list(opts.change)) q.append('changes', c);
      if (typeof opts.message === 'string') q.set('message', opts.message);
      const query = q.toString();
      const img = await clientOf(global).upload<Image>(`/images/import-rootfs${query ? `?${query}` : ''}`, file === '-' ? process.stdin : createReadStream(file), 'application/x-tar');
      return render(global, img, (i) => `${i.id}\n`);
    },
  },
];
