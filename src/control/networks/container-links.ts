/**
 * Docker's --link: a linked container is reached at its address on a network both containers
 * share, as an /etc/hosts line and as Docker's link variables.
 */
import { Conflict } from '../../core/errors.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord, NetworkRecord } from '../../store/records.js';

/** A linked container's address on one of the linking container's networks (the one they share). */
async function linkAddress(store: Store, target: string, networks: readonly NetworkRecord[]): Promise<string | undefined> {
  return (await store.networks.leases({ instanceId: target })).find((l) => networks.some((n) => n.id === l.networkId))?.address;
}

/** /etc/hosts lines for --link: the linked container's address on a network both share. */
export async function linkHosts(store: Store, c: ContainerRecord, networks: readonly NetworkRecord[]): Promise<string[]> {
  const hosts: string[] = [];
  for (const l of c.config.links ?? []) {
    const target = await store.containers.get(l.container);
    const address = await linkAddress(store, l.container, networks);
    if (!target || !address) throw new Conflict(`linked container ${l.alias} has no address`);
    hosts.push(`${l.alias === target.name ? l.alias : `${l.alias} ${target.name}`}:${address}`);
  }
  return hosts;
}

/**
 * Docker's link variables: ALIAS_NAME, ALIAS_PORT=<first port>, ALIAS_PORT_<p>_<proto>[_ADDR|_PORT|_PROTO],
 * ALIAS_ENV_<K> for the target's environment. Resolved when the container is created.
 */
export async function linkEnv(
  store: Store,
  c: Pick<ContainerRecord, 'name'>,
  links: Array<{ container: string; alias: string }>,
  networks: readonly NetworkRecord[],
  exposed: (target: ContainerRecord) => string[] | Promise<string[]>,
): Promise<string[]> {
  const env: string[] = [];
  for (const l of links) {
    const t = await store.containers.get(l.container);
    const address = await linkAddress(store, l.container, networks);
    if (!t || !address) continue;
    const p = l.alias.toUpperCase().replace(/[^A-Z0-9]/g, '_');
    env.push(`${p}_NAME=/${c.name}/${l.alias}`);
    const ports = (await exposed(t)).map((x) => {
      const [port, proto = 'tcp'] = x.split('/');
      return { port: port!, proto };
    }).sort((a, b) => Number(a.port) - Number(b.port));
    if (ports[0]) env.push(`${p}_PORT=${ports[0].proto}://${address}:${ports[0].port}`);
    for (const { port, proto } of ports) {
      const k = `${p}_PORT_${port}_${proto.toUpperCase()}`;
      env.push(`${k}=${proto}://${address}:${port}`, `${k}_ADDR=${address}`, `${k}_PORT=${port}`, `${k}_PROTO=${proto}`);
    }
    for (const kv of t.config.env) {
      const key = kv.slice(0, kv.indexOf('='));
      if (key && key !== 'PATH' && key !== 'HOME' && key !== 'HOSTNAME') env.push(`${p}_ENV_${kv}`);
    }
  }
  return env;
}
