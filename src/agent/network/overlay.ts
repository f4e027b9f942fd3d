/**
 * A network's overlay on one host: a VXLAN device (one VNI per network) enslaved to the
 * network's bridge, with no multicast group and no flood-and-learn. The control plane pushes
 * every remote endpoint of the network (Neutron's l2population): an FDB entry MAC → the remote
 * host's underlay address, and a permanent neighbour entry IP → MAC that the device's `proxy`
 * answers ARP from locally. No all-zero FDB entry: unknown unicast and broadcast never leave
 * the host. Every function takes an optional named network namespace, so tests lay out
 * several "hosts" on one machine.
 */
import { run } from '../../core/exec.js';
import { Conflict, Internal, InvalidArgument } from '../../core/errors.js';
import { ipToInt } from './network-driver.js';

export const VXLAN_PORT = 4789;
/** IPv4 (20) + UDP (8) + VXLAN (8) + the inner Ethernet header (14). */
export const VXLAN_OVERHEAD = 50;
/** The MTU inside an overlay network on a 1500-byte underlay (set on the device: the kernel's default is 1500 without a lower device). */
export const OVERLAY_MTU = 1500 - VXLAN_OVERHEAD;
/** VNIs are 24 bits; 0 is not used. */
export const MAX_VNI = 0xffffff;

/** One remote endpoint of the network. */
export interface OverlayPeer {
  ip: string;
  mac: string;
  /** The underlay address of the host the endpoint is on (its VTEP). */
  underlayIp: string;
  /** Names the network's DNS answers with its address on every host (instance name, aliases). */
  names?: string[];
}

export interface VxlanDevice {
  /** Named namespace the device lives in (absent: this process'). */
  netns?: string;
  device: string;
  vni: number;
  /** This host's underlay address (the outer source). */
  local: string;
  /** The network's bridge. */
  bridge: string;
}

/** vx-<12 of the network id>: ≤ 15 characters, one per network. */
export function vxlanDeviceName(networkId: string): string {
  return `vx-${networkId.slice(0, 12)}`;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function checkPeers(vni: number, peers: readonly OverlayPeer[]): void {
  if (!Number.isInteger(vni) || vni < 1 || vni > MAX_VNI) throw new InvalidArgument(`VNI ${vni} is out of range (1-${MAX_VNI})`);
  const seen = new Set<string>();
  for (const p of peers) {
    ipToInt(p.ip);
    ipToInt(p.underlayIp);
    if (!MAC.test(p.mac)) throw new InvalidArgument(`not a MAC address: ${p.mac}`);
    if (seen.has(p.mac)) throw new InvalidArgument(`MAC ${p.mac} is given twice`);
    seen.add(p.mac);
  }
}

const nsArgs = (netns?: string) => (netns ? ['-n', netns] : []);

async function batch(program: 'ip' | 'bridge', lines: string[][], netns?: string, force = false): Promise<void> {
  if (!lines.length) return;
  const r = await run(program, [...nsArgs(netns), ...(force ? ['-force'] : []), '-batch', '-'], { input: lines.map((l) => l.join(' ')).join('\n') + '\n', timeoutMs: 30_000 });
  if (r.code !== 0 && !force) throw new Internal(`${program} ${netns ? `-n ${netns} ` : ''}failed: ${r.stderr.trim() || r.stdout.trim()}`, { lines: lines.map((l) => l.join(' ')) });
}

async function showJson<T>(program: 'ip' | 'bridge', args: string[], netns?: string): Promise<T[] | undefined> {
  const r = await run(program, [...nsArgs(netns), '-j', ...args], { timeoutMs: 30_000 });
  if (r.code !== 0) return undefined;
  const text = r.stdout.trim();
  return text ? (JSON.parse(text) as T[]) : [];
}

interface LinkJson {
  ifname: string;
  master?: string;
  mtu?: number;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string; port?: number; learning?: boolean; proxy?: boolean } };
}

/** The VXLAN device as the kernel has it, or undefined when there is none. */
export async function readVxlan(device: string, netns?: string): Promise<{ vni: number; local: string | undefined; master: string | undefined } | undefined> {
  const links = await showJson<LinkJson>('ip', ['-d', 'link', 'show', 'dev', device], netns);
  const l = links?.[0];
  if (!l || l.linkinfo?.info_kind !== 'vxlan') return undefined;
  return { vni: l.linkinfo.info_data?.id ?? 0, local: l.linkinfo.info_data?.local, master: l.master };
}

/**
 * Make the device unless it is there as asked (another VNI or local address: made again).
 * Conflict when the kernel already has the VNI on another device of this namespace.
 */
export async function ensureVxlan(d: VxlanDevice): Promise<void> {
  if (d.device.length > 15) throw new InvalidArgument(`device name ${d.device} is longer than 15 characters`);
  ipToInt(d.local);
  const have = await readVxlan(d.device, d.netns);
  if (have && have.vni === d.vni && have.local === d.local && have.master === d.bridge) return;
  if (have) await batch('ip', [['link', 'del', d.device]], d.netns);
  const r = await run('ip', [...nsArgs(d.netns), 'link', 'add', d.device, 'mtu', String(OVERLAY_MTU), 'type', 'vxlan', 'id', String(d.vni), 'local', d.local, 'dstport', String(VXLAN_PORT), 'nolearning', 'proxy'], { timeoutMs: 30_000 });
  if (r.code !== 0) {
    if (/exists/i.test(r.stderr)) throw new Conflict(`VXLAN ${d.device} (VNI ${d.vni}) cannot be made: ${r.stderr.trim()}`, { vni: d.vni });
    throw new Internal(`ip link add ${d.device} type vxlan failed: ${r.stderr.trim()}`);
  }
  try {
    await batch('ip', [['link', 'set', d.device, 'master', d.bridge], ['link', 'set', d.device, 'up']], d.netns);
  } catch (e) {
    await batch('ip', [['link', 'del', d.device]], d.netns, true);
    throw e;
  }
}

export async function removeVxlan(device: string, netns?: string): Promise<void> {
  if (!(await readVxlan(device, netns))) return;
  await batch('ip', [['link', 'del', device]], netns, true);
  if (await readVxlan(device, netns)) throw new Internal(`could not remove ${device}`);
}

/** The device's remote entries as the kernel has them: FDB (MAC → VTEP) and neighbours (IP → MAC). */
export async function readPeers(device: string, netns?: string): Promise<{ fdb: Array<{ mac: string; dst: string }>; neigh: Array<{ ip: string; mac: string }> }> {
  const fdb = (await showJson<{ mac: string; dst?: string }>('bridge', ['fdb', 'show', 'dev', device], netns)) ?? [];
  const neigh = (await showJson<{ dst: string; lladdr?: string }>('ip', ['-4', 'neigh', 'show', 'dev', device], netns)) ?? [];
  return {
    // entries with a destination are the device's own (self); the bridge's learned ones have none
    fdb: fdb.filter((e) => e.dst !== undefined).map((e) => ({ mac: e.mac, dst: e.dst! })),
    neigh: neigh.filter((n) => n.lladdr).map((n) => ({ ip: n.dst, mac: n.lladdr! })),
  };
}

/**
 * The device's entries made exactly `peers`: what is missing added, what is stale removed.
 * Idempotent, so the control plane pushes the whole set after any change and a restarted
 * agent is reconciled by the next push. Returns what changed.
 */
export async function setPeers(device: string, peers: readonly OverlayPeer[], netns?: string): Promise<{ added: number; removed: number }> {
  const have = await readPeers(device, netns);
  const wantFdb = new Set(peers.map((p) => `${p.mac} ${p.underlayIp}`));
  const wantNeigh = new Set(peers.map((p) => `${p.ip} ${p.mac}`));
  const haveFdb = new Set(have.fdb.map((e) => `${e.mac} ${e.dst}`));
  const haveNeigh = new Set(have.neigh.map((n) => `${n.ip} ${n.mac}`));
  const fdbDel = have.fdb.filter((e) => !wantFdb.has(`${e.mac} ${e.dst}`)).map((e) => ['fdb', 'del', e.mac, 'dev', device, 'dst', e.dst]);
  const fdbAdd = peers.filter((p) => !haveFdb.has(`${p.mac} ${p.underlayIp}`)).map((p) => ['fdb', 'append', p.mac, 'dev', device, 'dst', p.underlayIp, 'self', 'permanent']);
  const neighDel = have.neigh.filter((n) => !wantNeigh.has(`${n.ip} ${n.mac}`)).map((n) => ['neigh', 'del', n.ip, 'dev', device]);
  const neighAdd = peers.filter((p) => !haveNeigh.has(`${p.ip} ${p.mac}`)).map((p) => ['neigh', 'replace', p.ip, 'lladdr', p.mac, 'dev', device, 'nud', 'permanent']);
  // stale entries first: an endpoint that moved hosts keeps its MAC, and its old VTEP must go before the new is appended
  await batch('bridge', fdbDel, netns, true);
  await batch('ip', neighDel, netns, true);
  await batch('bridge', fdbAdd, netns);
  await batch('ip', neighAdd, netns);
  return { added: fdbAdd.length + neighAdd.length, removed: fdbDel.length + neighDel.length };
}

/** This host's address toward another host's underlay address (the kernel's route's source). */
export async function sourceAddressToward(ip: string, netns?: string): Promise<string | undefined> {
  ipToInt(ip);
  const routes = await showJson<{ prefsrc?: string }>('ip', ['route', 'get', ip], netns);
  return routes?.[0]?.prefsrc;
}
