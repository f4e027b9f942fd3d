/**
 * --volumes-from CONTAINER[:ro|rw]: the other containers' volumes and binds at the same paths,
 * for both edges (the Docker API's HostConfig.VolumesFrom, the Nimbus API's volumesFrom).
 */
import { Conflict } from '../../core/errors.js';
import type { VolumesFromRef } from '../../core/volumes-from.js';
import type { ContainerRecord } from '../../store/records.js';
import { mountsOf, type MountInput } from './volume-service.js';

/**
 * Each container's volumes and binds (tmpfs are its own), read-only with `ro`, read-write with
 * `rw`, else as it has them; a target the request mounts already (`own`) is left out. `lookup`
 * finds a container in the caller's project (the edge words its absence). The new container
 * runs where they do (`host`).
 */
export async function volumesFromMounts(
  lookup: (ref: string) => Promise<ContainerRecord>, from: readonly VolumesFromRef[], own: readonly MountInput[],
): Promise<{ mounts: MountInput[]; host?: string }> {
  const mounts: MountInput[] = [];
  let host: string | undefined;
  for (const f of from) {
    const other = await lookup(f.container);
    if (host !== undefined && other.host !== host) throw new Conflict(`--volumes-from ${other.name} runs on host ${other.host}, another on ${host}: their volumes cannot be mounted together`);
    host = other.host || host;
    for (const m of mountsOf(other)) {
      if (m.type === 'tmpfs' || [...own, ...mounts].some((x) => x.target === m.target)) continue;
      const readonly = f.mode === 'ro' || (f.mode === undefined && m.readonly === true);
      mounts.push(m.type === 'volume'
        ? { type: 'volume', source: m.name, target: m.target, ...(readonly ? { readonly } : {}), ...(m.anonymous ? { anonymous: true } : {}) }
        : { type: 'bind', source: m.source, target: m.target, ...(readonly ? { readonly } : {}) });
    }
  }
  return { mounts, ...(host ? { host } : {}) };
}
