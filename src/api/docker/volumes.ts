/**
 * Volumes through the volume service, in the request's project: docker volume create|ls|inspect|rm|prune,
 * and the mounts of a create body (HostConfig.Binds, Mounts, Tmpfs) as the container service's input.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgument, NotFound } from '../../core/errors.js';
import type { MountInput, VolumeView } from '../../control/volumes/volume-service.js';
import type { VolumeRecord } from '../../store/repos/volumes.js';
import type { ContainerRecord } from '../../store/records.js';
import { mountsOf } from '../../control/volumes/volume-service.js';
import { parseFilters } from './mapping.js';
import { inDockerWords } from './errors.js';
import type { DockerContext, DockerRoute } from './server.js';

const NAME = '([^/]+)';
const MiB = 1024 * 1024;
const VOLUME_FILTERS = new Set(['name', 'label', 'driver', 'dangling']);
const noSuchVolume = (ref: string) => new NotFound(`get ${ref}: no such volume`);

/** Docker's units.RAMInBytes: "64m", "1g", "512k", "1024" (binary multiples, b optional). */
export function dockerSize(s: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$/i.exec(s.trim());
  if (!m) throw new InvalidArgument(`invalid size for ${what}: ${JSON.stringify(s.slice(0, 40))}`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't' | 'p'];
  const n = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n)) throw new InvalidArgument(`invalid size for ${what}: too large`);
  return n;
}

/** Docker's -v string: NAME:/path[:opts] (a named volume) or /host:/path[:opts] (a bind); opts ro|rw, nocopy for a volume (z, Z and propagation refused). */
export function parseBind(spec: string): MountInput {
  const parts = spec.split(':');
  if (parts.length < 2 || parts.length > 3 || !parts[0] || !parts[1]) throw new InvalidArgument(`invalid volume specification: '${spec.slice(0, 200)}'`);
  const [source, target, opts = ''] = parts as [string, string, string?];
  let readonly = false;
  let nocopy = false;
  for (const o of opts.split(',').filter(Boolean)) {
    if (o === 'ro') readonly = true;
    else if (o === 'nocopy') nocopy = true;
    else if (o !== 'rw') throw new InvalidArgument(`volume option "${o}" is not supported by Nimbus's Docker API yet (ro, rw or nocopy)`);
  }
  const ro = readonly ? { readonly: true } : {};
  if (source.startsWith('/')) {
    if (nocopy) throw new InvalidArgument(`invalid volume specification: '${spec.slice(0, 200)}': nocopy is for volumes, not host paths`);
    return { type: 'bind', source, target, ...ro };
  }
  return { type: 'volume', source, target, ...ro, ...(nocopy ? { nocopy: true } : {}) };
}

interface DockerMount {
  Type?: string;
  Source?: string;
  Target?: string;
  ReadOnly?: boolean;
  Consistency?: string;
  BindOptions?: Record<string, unknown>;
  VolumeOptions?: { NoCopy?: boolean; Labels?: Record<string, string>; DriverConfig?: { Name?: string; Options?: Record<string, string> } };
  TmpfsOptions?: { SizeBytes?: number; Mode?: number };
}

/** One of HostConfig.Mounts (--mount). */
export function parseMount(m: DockerMount): MountInput {
  if (typeof m !== 'object' || m === null) throw new InvalidArgument('HostConfig.Mounts holds objects');
  const type = m.Type ?? 'volume';
  const target = m.Target;
  if (typeof target !== 'string' || !target) throw new InvalidArgument('invalid mount config: Target is required');
  if (m.BindOptions && Object.keys(m.BindOptions).length) throw new InvalidArgument('bind options (propagation) are not supported by Nimbus\'s Docker API yet');
  const ro = m.ReadOnly === true ? { readonly: true } : {};
  if (type === 'tmpfs') {
    if (m.Source) throw new InvalidArgument('invalid mount config for type "tmpfs": Source must not be given');
    const size = m.TmpfsOptions?.SizeBytes;
    const mode = m.TmpfsOptions?.Mode;
    if (size !== undefined && !(Number.isSafeInteger(size) && size > 0)) throw new InvalidArgument('invalid tmpfs size');
    if (mode !== undefined && !(Number.isInteger(mode) && mode >= 0 && mode <= 0o7777)) throw new InvalidArgument('invalid tmpfs mode');
    return { type: 'tmpfs', target, ...(size ? { sizeBytes: size } : {}), ...(mode !== undefined ? { mode } : {}) };
  }
  if (type !== 'volume' && type !== 'bind') throw new InvalidArgument(`mount type "${type}" is not supported by Nimbus's Docker API (volume, bind, tmpfs)`);
  if (type === 'volume') {
    const driver = m.VolumeOptions?.DriverConfig?.Name;
    if (driver && driver !== 'local') throw new InvalidArgument(`volume driver "${driver}" is not supported (local)`);
    const nocopy = m.VolumeOptions?.NoCopy === true ? { nocopy: true } : {};
    // --mount type=volume,target=/p: an anonymous volume
    if (m.Source === undefined || m.Source === '') return { type, target, ...ro, ...nocopy };
    if (typeof m.Source !== 'string') throw new InvalidArgument('invalid mount config for type "volume": Source is a name');
    return { type, source: m.Source, target, ...ro, ...nocopy };
  }
  if (typeof m.Source !== 'string' || !m.Source) throw new InvalidArgument(`invalid mount config for type "${type}": Source is required`);
  return { type, source: m.Source, target, ...ro };
}

/** Docker's --tmpfs map: {"/path": "size=64m,mode=1777"}. */
export function parseTmpfs(target: string, opts: string): MountInput {
  let sizeBytes: number | undefined;
  let mode: number | undefined;
  for (const o of opts.split(',').filter(Boolean)) {
    const [k, v] = o.split('=');
    if (k === 'size' && v) sizeBytes = dockerSize(v, '--tmpfs size');
    else if (k === 'mode' && v && /^[0-7]{1,4}$/.test(v)) mode = parseInt(v, 8);
    else if (!['rw', 'noexec', 'nosuid', 'nodev'].includes(o)) throw new InvalidArgument(`--tmpfs option "${o}" is not supported (size=, mode=)`);
  }
  return { type: 'tmpfs', target, ...(sizeBytes !== undefined ? { sizeBytes } : {}), ...(mode !== undefined ? { mode } : {}) };
}

/** A create body's HostConfig.Binds, Mounts and Tmpfs, in that order. */
export function mountsOfHostConfig(host: { Binds?: unknown; Mounts?: unknown; Tmpfs?: unknown }): MountInput[] {
  const out: MountInput[] = [];
  if (host.Binds !== undefined) {
    if (!Array.isArray(host.Binds) || !host.Binds.every((b) => typeof b === 'string')) throw new InvalidArgument('HostConfig.Binds must be a list of strings');
    out.push(...(host.Binds as string[]).map(parseBind));
  }
  if (host.Mounts !== undefined) {
    if (!Array.isArray(host.Mounts)) throw new InvalidArgument('HostConfig.Mounts must be a list');
    out.push(...(host.Mounts as DockerMount[]).map(parseMount));
  }
  if (host.Tmpfs !== undefined) {
    if (typeof host.Tmpfs !== 'object' || host.Tmpfs === null || Array.isArray(host.Tmpfs)) throw new InvalidArgument('HostConfig.Tmpfs must be an object');
    for (const [target, opts] of Object.entries(host.Tmpfs as Record<string, unknown>)) out.push(parseTmpfs(target, typeof opts === 'string' ? opts : ''));
  }
  return out;
}

/** A container's Mounts in inspect and ps. */
export function dockerMountsOf(c: Pick<ContainerRecord, 'config'>): Array<Record<string, unknown>> {
  return mountsOf(c).map((m) => m.type === 'volume'
    ? { Type: 'volume', Name: m.name, Source: '', Destination: m.target, Driver: 'local', Mode: m.readonly ? 'ro' : 'z', RW: !m.readonly, Propagation: '' }
    : m.type === 'bind'
      ? { Type: 'bind', Source: m.source, Destination: m.target, Mode: m.readonly ? 'ro' : '', RW: !m.readonly, Propagation: 'rprivate' }
      : { Type: 'tmpfs', Source: '', Destination: m.target, Mode: '', RW: true, Propagation: '' });
}

/** A volume as `docker volume inspect` shows it (UsageData when its host said). */
export function volumeDoc(v: VolumeRecord | VolumeView): Record<string, unknown> {
  const view = v as Partial<VolumeView>;
  return {
    CreatedAt: v.createdAt,
    Driver: v.driver,
    Labels: v.labels,
    Mountpoint: view.mountpoint ?? '',
    Name: v.name,
    // as the creator gave them (compose compares them with its file's driver_opts); null when none, as dockerd
    Options: Object.keys(v.driverOptions).length ? v.driverOptions : null,
    Scope: 'local',
    Status: { Host: v.host, Size: v.sizeBytes, State: v.status },
    ...(view.usedBytes !== undefined ? { UsageData: { Size: view.usedBytes, RefCount: view.usedBy?.length ?? 0 } } : {}),
  };
}

async function volume(ctx: DockerContext): Promise<VolumeRecord> {
  const ref = ctx.params[0]!;
  return inDockerWords(ctx.services.volumes.get(ref, { projectId: ctx.project }), () => noSuchVolume(ref));
}

interface DockerVolumeCreate {
  Name?: unknown;
  Driver?: unknown;
  DriverOpts?: unknown;
  Labels?: unknown;
}

export const volumeRoutes: DockerRoute[] = [
  {
    method: 'GET', pattern: /^\/volumes$/, name: 'volume list', access: 'reader',
    handler: async ({ services, project, query }) => {
      const filters = parseFilters(query.get('filters') ?? undefined);
      for (const k of filters.keys()) if (!VOLUME_FILTERS.has(k)) throw new InvalidArgument(`invalid filter '${k}'`);
      const all = await services.volumes.list(project);
      const dangling = filters.get('dangling');
      const used = dangling?.length ? new Set((await Promise.all(all.map(async (v) => ((await services.volumes.usedBy(v)).length ? v.id : '')))).filter(Boolean)) : new Set<string>();
      const pass = (v: VolumeRecord) => [...filters].every(([k, values]) => values.length === 0 || values.some((x) =>
        k === 'name' ? v.name.includes(x) : k === 'driver' ? v.driver === x
          : k === 'dangling' ? (x === 'true' || x === '1') === !used.has(v.id)
            : (x.includes('=') ? v.labels[x.slice(0, x.indexOf('='))] === x.slice(x.indexOf('=') + 1) : x in v.labels)));
      return { json: { Volumes: all.filter(pass).map(volumeDoc), Warnings: null } };
    },
  },
  {
    method: 'POST', pattern: /^\/volumes\/create$/, name: 'volume create', access: 'member',
    handler: async ({ services, project, body }) => {
      const b = ((await body()) ?? {}) as DockerVolumeCreate;
      if (typeof b !== 'object' || Array.isArray(b)) throw new InvalidArgument('invalid request body');
      const name = b.Name === undefined || b.Name === '' ? randomBytes(32).toString('hex') : b.Name;
      if (typeof name !== 'string') throw new InvalidArgument('Name must be a string');
      const driver = b.Driver === undefined || b.Driver === '' ? 'local' : b.Driver;
      if (driver !== 'local') throw new InvalidArgument(`volume driver "${String(driver).slice(0, 40)}" is not supported (local)`);
      const labels = (b.Labels ?? {}) as Record<string, unknown>;
      if (typeof labels !== 'object' || Array.isArray(labels) || Object.values(labels).some((x) => typeof x !== 'string')) throw new InvalidArgument('Labels must map names to strings');
      const opts = (b.DriverOpts ?? {}) as Record<string, unknown>;
      if (typeof opts !== 'object' || Array.isArray(opts)) throw new InvalidArgument('DriverOpts must be an object');
      let sizeBytes: number | undefined;
      for (const [k, x] of Object.entries(opts)) {
        // --opt size=10g: Nimbus's one option (the local driver's type/device/o would mount host devices: refused)
        if (k === 'size' && typeof x === 'string') sizeBytes = Math.ceil(dockerSize(x, 'size') / MiB) * MiB;
        else throw new InvalidArgument(`volume option "${k}" is not supported by Nimbus (size=SIZE)`);
      }
      // `docker volume create NAME` of one that exists answers it, as dockerd does
      const had = await services.store.volumes.byName(project, name);
      if (had) return { status: 201, json: volumeDoc(had) };
      const v = await services.volumes.create({ name, ...(sizeBytes !== undefined ? { sizeBytes } : {}), labels: labels as Record<string, string>, driverOptions: opts as Record<string, string> }, project);
      return { status: 201, json: volumeDoc(v) };
    },
  },
  {
    method: 'POST', pattern: /^\/volumes\/prune$/, name: 'volume prune', access: 'member',
    handler: async ({ services, project, query }) => {
      const filters = parseFilters(query.get('filters') ?? undefined);
      if (filters.size) throw new InvalidArgument('volume prune filters are not supported yet');
      const removed = await services.volumes.prune(project);
      return { json: { VolumesDeleted: removed.map((v) => v.name), SpaceReclaimed: removed.reduce((n, v) => n + v.sizeBytes, 0) } };
    },
  },
  {
    method: 'GET', pattern: new RegExp(`^/volumes/${NAME}$`), name: 'volume inspect', access: 'reader',
    handler: async (ctx) => {
      const { mountpoint, ...view } = await ctx.services.volumes.inspect(await volume(ctx));
      // the host path only for system administrators (a tenant's docker sees an empty Mountpoint)
      return { json: volumeDoc(ctx.auth.principal?.systemAdmin === true && mountpoint !== undefined ? { ...view, mountpoint } : view) };
    },
  },
  {
    method: 'DELETE', pattern: new RegExp(`^/volumes/${NAME}$`), name: 'volume remove', access: 'member',
    handler: async (ctx) => {
      const force = ['1', 'true'].includes(ctx.query.get('force') ?? '');
      if (force) {
        await ctx.services.volumes.remove(ctx.params[0]!, { projectId: ctx.project }, { force: true });
        return { status: 204 };
      }
      const v = await volume(ctx);
      await ctx.services.volumes.remove(v.id, { projectId: ctx.project });
      return { status: 204 };
    },
  },
];
