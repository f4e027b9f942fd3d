/**
 * The host's nftables table kept in step with its state: rendered whole (nftables.ts) when
 * networks, routed interfaces, overlays or routed peers change, and published ports' map
 * elements added or deleted in small transactions when instances come and go, all in one
 * order, so an element change never lands before the render it depends on.
 */
import { logger } from '../../core/log.js';
import * as kernel from './kernel.js';
import { driverFor } from './host-drivers.js';
import { deleteTableScript, portElementsScript, renderRuleset, replaceTableScript, type PublishedPort } from './nftables.js';
import type { EndpointSpec, NetworkSpec } from './network-driver.js';

const log = logger('agent.network');

/** An instance's part in the table: its endpoints and the ports published on them. */
export interface TableEntry {
  endpoints: readonly EndpointSpec[];
  ports: readonly PublishedPort[];
  /** A VM's taps. */
  vm?: boolean;
}

/** What the table is rendered from. */
export interface TableState {
  readonly networks: ReadonlyMap<string, NetworkSpec>;
  /** The attached instances (not those being attached, prewired or torn down). */
  attached(): Iterable<TableEntry>;
  /** A routed network's endpoints on other hosts, when it spans hosts (routed-peers.ts). */
  routedPeerIps(networkId: string): string[] | undefined;
  /** The host carries overlays (VXLAN). */
  hasOverlays(): boolean;
}

/** A routed endpoint's interface is named in the table (bridge endpoints are covered by their bridge). */
export const routed = (e: EndpointSpec) => e.hostIf.startsWith('nr');

/**
 * What an instance's coming or going needs of the table: routed interfaces have rules of their
 * own (a render); published ports are map elements (changed one transaction at a time); bridge
 * endpoints are covered by their bridge's rules (nothing).
 */
export function tableNeed(entry: TableEntry): 'render' | 'ports' | 'none' {
  // a VM's taps may be routed (named in the table, like nr… veths); VMs are made rarely: render
  if (entry.vm === true || entry.endpoints.some(routed)) return 'render';
  return entry.ports.length > 0 ? 'ports' : 'none';
}

export class HostTable {
  /** Renders and element changes, one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();
  /** The render waiting its turn: calls that arrive meanwhile share it. */
  private queued: Promise<void> | undefined;
  /** Bumped by every change to published ports; a render records the one it wrote (after it succeeded). */
  private portsVersion = 0;
  private renderedPortsVersion = 0;

  /** `name`: the table (inet family) this host renders. */
  constructor(private readonly name: string, private readonly state: TableState) {}

  /**
   * The table from the current state, one render at a time, in order; calls that arrive while
   * one is running share the next (it sees all their changes).
   */
  render(): Promise<void> {
    if (this.queued) return this.queued;
    const next = this.chain.then(() => {
      this.queued = undefined;
      return this.renderNow();
    });
    this.queued = next;
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Resolves once the table changes queued so far are in the kernel. */
  async settled(): Promise<void> {
    await this.chain;
  }

  private async renderNow(): Promise<void> {
    const version = this.portsVersion;
    if (!this.state.networks.size) {
      if (await kernel.nftList(this.name)) await kernel.nft(deleteTableScript(this.name));
      this.renderedPortsVersion = version;
      return;
    }
    const attached = [...this.state.attached()];
    const endpoints = attached.flatMap((c) => c.endpoints);
    const ruleset = renderRuleset({
      networks: [...this.state.networks.values()].map((spec) => {
        const routedPeers = this.state.routedPeerIps(spec.id);
        return { spec, driver: driverFor(spec.driver), endpoints: endpoints.filter((e) => e.networkId === spec.id), ...(routedPeers ? { routedPeers } : {}) };
      }),
      ports: attached.flatMap((c) => c.ports),
      overlay: this.state.hasOverlays(),
    }, this.name);
    await kernel.nft(replaceTableScript(ruleset, this.name));
    // a failed render left the previous table: element changes since then still apply to it
    this.renderedPortsVersion = version;
  }

  /**
   * Ports published or withdrawn: their elements added to or deleted from the table's maps in
   * one small nft transaction, in order with renders (issue 18: a render of the whole table per
   * container start cost ~30 ms). A render that ran since the change already wrote it. An element
   * change the kernel refuses (its table and this host's state disagree) is followed by a render,
   * which puts the table right; only if that fails too does the change fail.
   */
  changePorts(op: 'add' | 'delete', ports: readonly PublishedPort[]): Promise<void> {
    if (!ports.length) return Promise.resolve();
    const version = ++this.portsVersion;
    const next = this.chain.then(async () => {
      if (version <= this.renderedPortsVersion) return;
      try {
        await kernel.nft(portElementsScript(op, ports, this.name));
      } catch (e) {
        log.warn('published ports: an element change was refused; rendering the table', { op, error: e instanceof Error ? e.message : String(e) });
        await this.renderNow();
      }
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** The table after an instance's endpoints came or went: rendered (per-interface rules), its ports' elements changed, or nothing. */
  after(op: 'add' | 'delete', entry: TableEntry): Promise<void> {
    const need = tableNeed(entry);
    return need === 'render' ? this.render() : need === 'ports' ? this.changePorts(op, entry.ports) : Promise.resolve();
  }
}
