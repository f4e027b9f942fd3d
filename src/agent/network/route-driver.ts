/**
 * Route mode (Xen's network-route: ip_forward plus one static route per guest):
 * no bridge and no NAT. Each endpoint is a veth pair whose container end holds
 * the address as a /32 with the gateway as its on-link next hop; the host holds
 * a /32 route to the address through the host end. The gateway address lives on
 * an anchor device of its own (a bridge with no ports: the dummy module is not
 * on every kernel), so the host answers ARP for it on every endpoint and the
 * network's DNS can bind it before the first endpoint exists.
 */
import type { EndpointSpec, IpPlan, NetworkDriver, NetworkSpec } from './network-driver.js';

export const routeDriver: NetworkDriver = {
  name: 'route',
  createPlan(n: NetworkSpec): IpPlan {
    return {
      sysctls: n.internal ? {} : { 'net/ipv4/ip_forward': '1' },
      host: [
        ['link', 'add', n.device, 'type', 'bridge'],
        ['addr', 'replace', `${n.gateway}/32`, 'dev', n.device],
        ['link', 'set', n.device, 'up'],
      ],
    };
  },
  removePlan(n: NetworkSpec): IpPlan {
    return { host: [['link', 'del', n.device]] };
  },
  // a routed endpoint's host route names its address: nothing useful can be made ahead of it
  prewirePlan(_n: NetworkSpec, e: EndpointSpec): IpPlan {
    return { host: [], inNetns: { netns: e.netns, lines: [['link', 'set', 'lo', 'up']] } };
  },
  addressPlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    return routeDriver.attachPlan(n, e);
  },
  attachPlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    const inside = [
      ['addr', 'add', `${e.address}/32`, 'dev', e.ifName],
      ['link', 'set', e.ifName, 'address', e.mac, 'up'],
      ['link', 'set', 'lo', 'up'],
      ['route', 'replace', n.gateway, 'dev', e.ifName, 'scope', 'link'],
    ];
    if (e.defaultRoute && !n.internal) inside.push(['route', 'replace', 'default', 'via', n.gateway, 'dev', e.ifName]);
    else inside.push(['route', 'replace', n.subnet, 'via', n.gateway, 'dev', e.ifName]);
    return {
      // route_localnet: loopback connections to published ports are DNATed out of this interface
      sysctls: { [`net/ipv4/conf/${e.hostIf}/route_localnet`]: '1' },
      host: [
        ['link', 'add', e.hostIf, 'type', 'veth', 'peer', 'name', e.ifName, 'netns', e.netns],
        ['link', 'set', e.hostIf, 'up'],
        ['route', 'replace', `${e.address}/32`, 'dev', e.hostIf, 'src', n.gateway],
      ],
      inNetns: { netns: e.netns, lines: inside },
    };
  },
  tapPlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    return {
      sysctls: { [`net/ipv4/conf/${e.hostIf}/route_localnet`]: '1' },
      host: [
        ['tuntap', 'add', 'dev', e.hostIf, 'mode', 'tap'],
        ['link', 'set', e.hostIf, 'up'],
        ['route', 'replace', `${e.address}/32`, 'dev', e.hostIf, 'src', n.gateway],
      ],
    };
  },
  detachPlan(_n: NetworkSpec, e: EndpointSpec): IpPlan {
    // the /32 route goes with the interface
    return { host: [['link', 'del', e.hostIf]] };
  },
  masquerades: () => false,
  interfaces: (_n, endpoints) => endpoints.map((e) => e.hostIf),
};
