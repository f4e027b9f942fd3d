/**
 * Bridge mode (Xen's xenbr0 + vifX.Y; Docker's docker0): one Linux bridge per
 * network holding the gateway address, a veth pair per endpoint with its host
 * end enslaved to the bridge, outbound traffic masqueraded unless internal.
 */
import { macFor, parseCidr, type EndpointSpec, type IpPlan, type NetworkDriver, type NetworkSpec } from './network-driver.js';

/** The network's MTU on an interface made for it (an overlay's is below the underlay's by the encapsulation). */
const mtu = (n: NetworkSpec): string[] => (n.mtu ? ['mtu', String(n.mtu)] : []);

export const bridgeDriver: NetworkDriver = {
  name: 'bridge',
  createPlan(n: NetworkSpec): IpPlan {
    const { prefix } = parseCidr(n.subnet);
    return {
      sysctls: n.internal ? {} : { 'net/ipv4/ip_forward': '1' },
      host: [
        // a MAC of its own (the gateway's, as endpoints have their address's): a bridge without one takes
        // its lowest port's, which changes as ports come and go, and its neighbours' cached gateway goes dead
        ['link', 'add', n.device, ...mtu(n), 'address', macFor(n.gateway), 'type', 'bridge'],
        ['addr', 'replace', `${n.gateway}/${prefix}`, 'dev', n.device],
        ['link', 'set', n.device, 'up'],
      ],
    };
  },
  removePlan(n: NetworkSpec): IpPlan {
    return { host: [['link', 'del', n.device]] };
  },
  attachPlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    const wire = bridgeDriver.prewirePlan(n, e);
    return { ...wire, inNetns: { netns: e.netns, lines: bridgeDriver.addressPlan(n, e).inNetns!.lines } };
  },
  prewirePlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    return {
      // route_localnet: loopback connections to published ports are DNATed onto the bridge
      sysctls: { [`net/ipv4/conf/${n.device}/route_localnet`]: '1' },
      host: [
        ['link', 'add', e.hostIf, ...mtu(n), 'type', 'veth', 'peer', 'name', e.ifName, ...mtu(n), 'netns', e.netns],
        ['link', 'set', e.hostIf, 'master', n.device, 'up'],
      ],
      inNetns: { netns: e.netns, lines: [['link', 'set', 'lo', 'up']] },
    };
  },
  addressPlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    const { prefix } = parseCidr(n.subnet);
    const inside = [
      ['addr', 'add', `${e.address}/${prefix}`, 'dev', e.ifName],
      ['link', 'set', e.ifName, 'address', e.mac, 'up'],
      ['link', 'set', 'lo', 'up'],
    ];
    if (e.defaultRoute && !n.internal) inside.push(['route', 'replace', 'default', 'via', n.gateway, 'dev', e.ifName]);
    return { host: [], inNetns: { netns: e.netns, lines: inside } };
  },
  tapPlan(n: NetworkSpec, e: EndpointSpec): IpPlan {
    return {
      sysctls: { [`net/ipv4/conf/${n.device}/route_localnet`]: '1' },
      host: [['tuntap', 'add', 'dev', e.hostIf, 'mode', 'tap'], ['link', 'set', e.hostIf, ...mtu(n), 'master', n.device, 'up']],
    };
  },
  detachPlan(_n: NetworkSpec, e: EndpointSpec): IpPlan {
    return { host: [['link', 'del', e.hostIf]] };
  },
  masquerades: (n) => !n.internal,
  interfaces: (n) => [n.device],
};
