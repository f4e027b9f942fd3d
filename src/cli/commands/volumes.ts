/** nimbus volume create|ls|inspect|rm|prune, and the -v / --mount / --tmpfs syntax of nimbus run. */
import { OUTPUT_OPTION, UsageError, parseLabels, parseSize, type CommandSpec } from '../args.js';
import { ago, humanSize, printJson, render, table } from '../output.js';
import { clientOf, eachArg } from './shared.js';
import { ApiError } from '../client.js';
import type { MountInput } from '../../control/volumes/volume-service.js';
import type { VolumeView } from '../../control/volumes/volume-service.js';

const enc = encodeURIComponent;
const MiB = 1024 * 1024;

/** A size for a volume: rounded up to whole MiB (the unit the quota charges). */
function volumeSize(s: string): number {
  return Math.ceil(parseSize(s) / MiB) * MiB;
}

/** -v NAME:/path[:ro|rw][,nocopy] (a named volume) or -v /host/path:/path[:ro|rw] (a bind mount). */
export function parseVolumeFlag(spec: string): MountInput {
  const parts = spec.split(':');
  if (parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1]) {
    // -v /path: an anonymous volume (a random name; rm -v and --rm remove it with the container)
    if (parts.length === 1 && spec.startsWith('/')) return { type: 'volume', target: spec };
    throw new UsageError(`-v takes NAME:/path[:ro] or /host/path:/path[:ro], got "${spec}"`);
  }
  const [source, target, opts] = parts as [string, string, string | undefined];
  const options = opts === undefined ? [] : opts.split(',');
  for (const o of options) if (o !== 'ro' && o !== 'rw' && o !== 'nocopy') throw new UsageError(`-v ${spec}: the options are ro, rw and nocopy, got "${o}"`);
  if (!target.startsWith('/')) throw new UsageError(`-v ${spec}: the container path must be absolute`);
  const readonly = options.includes('ro') ? { readonly: true } : {};
  if (source.startsWith('/')) {
    if (options.includes('nocopy')) throw new UsageError(`-v ${spec}: nocopy is for volumes, not host paths`);
    return { type: 'bind', source, target, ...readonly };
  }
  // nocopy: a volume made now starts empty rather than with the image's files at the path
  return { type: 'volume', source, target, ...readonly, ...(options.includes('nocopy') ? { nocopy: true } : {}) };
}

/** --mount type=volume|bind|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…][,tmpfs-mode=…] (Docker's keys and aliases). */
export function parseMountFlag(spec: string): MountInput {
  const kv = new Map<string, string>();
  for (const field of spec.split(',')) {
    if (!field) continue;
    const i = field.indexOf('=');
    const k = (i < 0 ? field : field.slice(0, i)).trim().toLowerCase();
    const v = i < 0 ? 'true' : field.slice(i + 1);
    kv.set({ src: 'source', dst: 'target', destination: 'target', ro: 'readonly' }[k] ?? k, v);
  }
  const known = new Set(['type', 'source', 'target', 'readonly', 'volume-nocopy', 'tmpfs-size', 'tmpfs-mode']);
  for (const k of kv.keys()) if (!known.has(k)) throw new UsageError(`--mount ${spec}: "${k}" is not supported (type, source, target, readonly, volume-nocopy, tmpfs-size, tmpfs-mode)`);
  const type = kv.get('type') ?? 'volume';
  const target = kv.get('target');
  if (!target?.startsWith('/')) throw new UsageError(`--mount ${spec}: target=/path (absolute) is required`);
  const ro = kv.get('readonly');
  if (ro !== undefined && !['true', '1', 'false', '0'].includes(ro)) throw new UsageError(`--mount ${spec}: readonly takes true or false`);
  const readonly = ro === 'true' || ro === '1' ? { readonly: true } : {};
  const source = kv.get('source');
  if (type === 'tmpfs') {
    if (source) throw new UsageError(`--mount ${spec}: a tmpfs mount has no source`);
    const size = kv.get('tmpfs-size');
    const mode = kv.get('tmpfs-mode');
    if (mode !== undefined && !/^[0-7]{1,4}$/.test(mode)) throw new UsageError(`--mount ${spec}: tmpfs-mode is octal (e.g. 1777)`);
    return { type: 'tmpfs', target, ...(size !== undefined ? { sizeBytes: parseSize(size) } : {}), ...(mode !== undefined ? { mode: parseInt(mode, 8) } : {}) };
  }
  if (type !== 'volume' && type !== 'bind') throw new UsageError(`--mount ${spec}: type must be volume, bind or tmpfs`);
  const nc = kv.get('volume-nocopy');
  if (nc !== undefined && !['true', '1', 'false', '0'].includes(nc)) throw new UsageError(`--mount ${spec}: volume-nocopy takes true or false`);
  if (nc !== undefined && type !== 'volume') throw new UsageError(`--mount ${spec}: volume-nocopy is for type=volume`);
  const nocopy = nc === 'true' || nc === '1' ? { nocopy: true } : {};
  if (!source && type === 'volume') return { type, target, ...readonly, ...nocopy }; // an anonymous volume
  if (type === 'volume' && source) return { type, source, target, ...readonly, ...nocopy };
  if (!source) throw new UsageError(`--mount ${spec}: source= is required`);
  if (type === 'bind' && !source.startsWith('/')) throw new UsageError(`--mount ${spec}: a bind's source is an absolute host path`);
  return { type, source, target, ...readonly };
}

/** --tmpfs /path[:size=64m,mode=1777]. */
export function parseTmpfsFlag(spec: string): MountInput {
  const i = spec.indexOf(':');
  const target = i < 0 ? spec : spec.slice(0, i);
  if (!target.startsWith('/')) throw new UsageError(`--tmpfs ${spec}: the container path must be absolute`);
  let sizeBytes: number | undefined;
  let mode: number | undefined;
  for (const o of i < 0 ? [] : spec.slice(i + 1).split(',')) {
    if (!o) continue;
    const [k, v] = o.split('=');
    if (k === 'size' && v) sizeBytes = parseSize(v);
    else if (k === 'mode' && v && /^[0-7]{1,4}$/.test(v)) mode = parseInt(v, 8);
    else if (!['rw', 'noexec', 'nosuid', 'nodev'].includes(o)) throw new UsageError(`--tmpfs ${spec}: option "${o}" is not supported (size=, mode=)`);
  }
  return { type: 'tmpfs', target, ...(sizeBytes !== undefined ? { sizeBytes } : {}), ...(mode !== undefined ? { mode } : {}) };
}

/** Every mount of a run's -v, --mount and --tmpfs, in that order. */
export function mountsFromFlags(opts: { volume?: unknown; mount?: unknown; tmpfs?: unknown }): MountInput[] {
  const list = (v: unknown) => (Array.isArray(v) ? (v as string[]) : []);
  return [...list(opts.volume).map(parseVolumeFlag), ...list(opts.mount).map(parseMountFlag), ...list(opts.tmpfs).map(parseTmpfsFlag)];
}

/** The block-volume part of `volume create`'s body. */
export function volumeTypeBody(opts: Record<string, unknown>): Record<string, unknown> {
  if (opts.snapshot !== undefined && opts['from-snapshot'] !== undefined && opts.snapshot !== opts['from-snapshot']) throw new UsageError('--snapshot and --from-snapshot are one option: give it once');
  const snap = (opts.snapshot ?? opts['from-snapshot']) as string | undefined;
  if (opts.type === 'filesystem' && (opts.shared || snap !== undefined)) throw new UsageError('--shared and --snapshot are for block volumes (--type block)');
  if (opts.shared && snap !== undefined) throw new UsageError('a shared volume is a raw disk: it cannot be cloned from a snapshot');
  const block = opts.type === 'block' || opts.shared === true || snap !== undefined;
  return {
    ...(block ? { type: 'block' } : opts.type !== undefined ? { type: opts.type } : {}),
    ...(opts.shared ? { shared: true } : {}),
    ...(snap !== undefined ? { fromSnapshot: snap } : {}),
  };
}

interface Snapshot { id: string; name: string; volumeId: string; host: string; sizeBytes: number; status: string; createdAt: string }
interface Attachment { vm: string; volume: string; live: boolean; readonly?: boolean }

async function snapshotCreate(global: Parameters<CommandSpec['run']>[0]['global'], volume: string, name: string): Promise<number> {
  const s = await clientOf(global).json<Snapshot>('POST', `/volumes/${enc(volume)}/snapshots`, { name });
  return render(global, s, (x) => `${x.name}\n`);
}

export const volumeCommands: CommandSpec[] = [
  {
    name: 'volume create', usage: 'NAME', summary: 'Create a named volume (a sparse ext4 image for containers, or --type block: a qcow2 disk for VMs; charged to the project\'s volumes and disk quota)', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'type', short: 't', type: 'string', value: 'TYPE', choices: ['filesystem', 'block'], description: 'filesystem (default: containers mount it) or block (a disk VMs attach: vm attach-volume, vm run --boot-volume)' },
      { name: 'shared', type: 'boolean', description: 'Block: may be attached read-write to several VMs at once (a raw disk; no snapshots)' },
      { name: 'snapshot', type: 'string', value: 'SNAPSHOT', description: 'Block: a clone of this volume snapshot (Cinder\'s --snapshot); size defaults to the snapshot\'s' },
      { name: 'from-snapshot', type: 'string', value: 'SNAPSHOT', description: 'Same as --snapshot' },
      { name: 'size', short: 's', type: 'string', value: 'SIZE', description: 'How much it holds, e.g. 512m, 10g (whole MiB; 16m to 16t); default 1g' },
      { name: 'driver', short: 'd', type: 'string', value: 'DRIVER', choices: ['local'], description: 'Volume driver (local only)', default: 'local' },
      { name: 'label', short: 'l', type: 'list', value: 'K=V', description: 'Label' },
      { name: 'host', type: 'string', value: 'HOST', description: 'Host to make it on (system administrators only)' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const v = await clientOf(global).json<VolumeView>('POST', '/volumes', {
        name: args[0],
        ...(opts.size !== undefined ? { sizeBytes: volumeSize(String(opts.size)) } : {}),
        driver: opts.driver ?? 'local',
        labels: parseLabels(opts.label as string[]),
        ...(opts.host !== undefined ? { host: opts.host } : {}),
        ...volumeTypeBody(opts),
      });
      return render(global, v, (x) => `${x.name}\n`);
    },
  },
  {
    name: 'volume ls', usage: '', summary: 'List volumes', maxArgs: 0,
    options: [{ name: 'quiet', short: 'q', type: 'boolean', description: 'Only print volume names' }, OUTPUT_OPTION],
    async run({ opts, global }) {
      const list = await clientOf(global).json<VolumeView[]>('GET', '/volumes');
      if (opts.quiet && global.output !== 'json') {
        process.stdout.write(list.map((v) => `${v.name}\n`).join(''));
        return 0;
      }
      return render(global, list, (l) => table(
        ['DRIVER', 'VOLUME NAME', 'SIZE', 'TYPE', 'HOST', 'STATUS', 'CREATED'],
        l.map((v) => [v.driver, v.name, humanSize(v.sizeBytes), `${v.type ?? 'filesystem'}${v.shared ? ' (shared)' : ''}`, v.host, v.status, ago(v.createdAt)]),
      ));
    },
  },
  {
    name: 'volume inspect', usage: 'VOLUME [VOLUME...]', summary: 'Show volumes: size, bytes used, host, mount point, the containers using them', minArgs: 1,
    options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const client = clientOf(global);
      const out: VolumeView[] = [];
      for (const a of args) out.push(await client.json<VolumeView>('GET', `/volumes/${enc(a)}`));
      printJson(out);
      return 0;
    },
  },
  {
    name: 'volume rm', usage: 'VOLUME [VOLUME...]', summary: 'Remove volumes and their data (refused while a container uses one)', minArgs: 1,
    options: [{ name: 'force', short: 'f', type: 'boolean', description: 'No error for a volume that does not exist; a host that does not answer does not keep it' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      return eachArg(args, async (a) => {
        try {
          await client.json('DELETE', `/volumes/${enc(a)}${opts.force ? '?force=true' : ''}`);
        } catch (e) {
          // -f: a volume that is not there is what was asked for (the API's lookup answers 404 before the handler)
          if (!(opts.force && e instanceof ApiError && e.code === 'NotFound')) throw e;
        }
      });
    },
  },
  {
    name: 'volume prune', usage: '', summary: 'Remove every volume of the project that no container uses', maxArgs: 0,
    options: [{ name: 'force', short: 'f', type: 'boolean', description: 'Do not ask (nimbus never asks: accepted for Docker muscle memory)' }, OUTPUT_OPTION],
    async run({ global }) {
      const r = await clientOf(global).json<{ removed: string[]; bytesFreed: number }>('POST', '/volumes/prune');
      return render(global, r, (x) => `${x.removed.length ? `Deleted Volumes:\n${x.removed.join('\n')}\n\n` : ''}Total reclaimed quota: ${humanSize(x.bytesFreed)}\n`);
    },
  },
  {
    name: 'volume snapshot create', usage: 'VOLUME SNAPSHOT', summary: 'Snapshot a block volume (refused while a running VM holds it; charged its size in disk)', minArgs: 2, maxArgs: 2,
    options: [OUTPUT_OPTION],
    run: ({ args, global }) => snapshotCreate(global, args[0]!, args[1]!),
  },
  {
    name: 'volume snapshot', usage: 'VOLUME SNAPSHOT', summary: 'Same as volume snapshot create', minArgs: 2, maxArgs: 2,
    options: [OUTPUT_OPTION],
    run: ({ args, global }) => snapshotCreate(global, args[0]!, args[1]!),
  },
  {
    name: 'volume snapshot ls', usage: '[VOLUME]', summary: 'List volume snapshots (of one volume)', maxArgs: 1,
    options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const list = await clientOf(global).json<Snapshot[]>('GET', `/volume-snapshots${args[0] !== undefined ? `?volume=${enc(args[0])}` : ''}`);
      return render(global, list, (l) => table(['SNAPSHOT', 'VOLUME ID', 'SIZE', 'HOST', 'STATUS', 'CREATED'], l.map((x) => [x.name, x.volumeId.slice(0, 12), humanSize(x.sizeBytes), x.host, x.status, ago(x.createdAt)])));
    },
  },
  {
    name: 'volume snapshot inspect', usage: 'SNAPSHOT [SNAPSHOT...]', summary: 'Show volume snapshots', minArgs: 1,
    options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const client = clientOf(global);
      const out: Snapshot[] = [];
      for (const a of args) out.push(await client.json<Snapshot>('GET', `/volume-snapshots/${enc(a)}`));
      printJson(out);
      return 0;
    },
  },
  {
    name: 'volume snapshot rm', usage: 'SNAPSHOT [SNAPSHOT...]', summary: 'Remove volume snapshots (what they back keeps its data)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (a) => {
        await client.json('DELETE', `/volume-snapshots/${enc(a)}`);
      });
    },
  },
  {
    name: 'vm attach-volume', usage: 'VM VOLUME', summary: 'Attach a block volume to a VM: hot-plugged while it runs, at its next start while stopped', minArgs: 2, maxArgs: 2,
    options: [{ name: 'readonly', type: 'boolean', description: 'Read-only (any number of VMs may read a volume nobody writes)' }, OUTPUT_OPTION],
    async run({ args, opts, global }) {
      const r = await clientOf(global).json<Attachment>('POST', `/vms/${enc(args[0]!)}/volumes`, { volume: args[1], ...(opts.readonly ? { readonly: true } : {}) });
      return render(global, r, (x) => `Attached volume ${x.volume} to VM ${x.vm}${x.readonly ? ' read-only' : ''}${x.live ? '' : ' (at its next start)'}\n`);
    },
  },
  {
    name: 'vm detach-volume', usage: 'VM VOLUME', summary: 'Detach a block volume from a VM (the guest releases it first while it runs); the volume stays', minArgs: 2, maxArgs: 2,
    options: [OUTPUT_OPTION],
    async run({ args, global }) {
      const r = await clientOf(global).json<Attachment>('DELETE', `/vms/${enc(args[0]!)}/volumes/${enc(args[1]!)}`);
      return render(global, r, (x) => `Detached volume ${x.volume} from VM ${x.vm}${x.live ? '' : ' (off its record)'}\n`);
    },
  },
];
