/** nimbus network create|ls|inspect|rm */
import { OUTPUT_OPTION, parseLabels, type CommandSpec } from '../args.js';
import { ago, printJson, render, short, table } from '../output.js';
import { clientOf, eachArg } from './shared.js';

interface Network {
  id: string;
  name: string;
  driver: string;
  subnet: string;
  gateway: string;
  internal: boolean;
  device: string;
  builtin: boolean;
  createdAt: string;
  containers?: Array<{ id: string; name: string; address: string; ifName: string }>;
}

const enc = encodeURIComponent;

export const networkCommands: CommandSpec[] = [
  {
    name: 'network create', usage: 'NAME', summary: 'Create a network (bridge with NAT out, or routed without NAT)', minArgs: 1, maxArgs: 1,
    options: [
      { name: 'driver', short: 'd', type: 'string', value: 'DRIVER', choices: ['bridge', 'route'], description: 'bridge: a Linux bridge, NAT out; route: a host route per container, no NAT (Xen route mode)', default: 'bridge' },
      { name: 'subnet', type: 'string', value: 'CIDR', description: 'IPv4 subnet (default: a free /24 of the pool)' },
      { name: 'gateway', type: 'string', value: 'IP', description: "The host's address on it (default: the subnet's first)" },
      { name: 'internal', type: 'boolean', description: 'No route out of the network' },
      { name: 'label', short: 'l', type: 'list', value: 'K=V', description: 'Label' },
      OUTPUT_OPTION,
    ],
    async run({ args, opts, global }) {
      const n = await clientOf(global).json<Network>('POST', '/networks', {
        name: args[0],
        driver: opts.driver ?? 'bridge',
        ...(opts.subnet !== undefined ? { subnet: opts.subnet } : {}),
        ...(opts.gateway !== undefined ? { gateway: opts.gateway } : {}),
        internal: Boolean(opts.internal),
        labels: parseLabels(opts.label as string[]),
      });
      return render(global, n, (x) => `${x.id}\n`);
    },
  },
  {
    name: 'network ls', usage: '', summary: 'List networks', maxArgs: 0,
    options: [{ name: 'quiet', short: 'q', type: 'boolean', description: 'Only print network ids' }, OUTPUT_OPTION],
    async run({ opts, global }) {
      const list = await clientOf(global).json<Network[]>('GET', '/networks');
      if (opts.quiet && global.output !== 'json') {
        process.stdout.write(list.map((n) => `${short(n.id)}\n`).join(''));
        return 0;
      }
      return render(global, list, (l) => table(
        ['NETWORK ID', 'NAME', 'DRIVER', 'SUBNET', 'GATEWAY', 'INTERNAL', 'DEVICE', 'CREATED'],
        l.map((n) => [short(n.id), n.name, n.driver, n.subnet, n.gateway, n.internal ? 'yes' : 'no', n.device, ago(n.createdAt)]),
      ));
    },
  },
  {
    name: 'network inspect', usage: 'NETWORK [NETWORK...]', summary: 'Show networks and the containers on them', minArgs: 1,
    options: [{ ...OUTPUT_OPTION, description: 'json (default) or table (its containers)' }],
    async run({ args, opts, global }) {
      const client = clientOf(global);
      const out: Network[] = [];
      for (const a of args) out.push(await client.json<Network>('GET', `/networks/${enc(a)}`));
      if (opts.output === 'table') {
        for (const n of out) {
          process.stdout.write(`${n.name} (${n.driver}, ${n.subnet}, gateway ${n.gateway}${n.internal ? ', internal' : ''})\n`);
          process.stdout.write(table(['CONTAINER', 'NAME', 'ADDRESS', 'INTERFACE'], (n.containers ?? []).map((c) => [short(c.id), c.name, c.address, c.ifName])));
        }
      } else printJson(out);
      return 0;
    },
  },
  {
    name: 'network connect', usage: 'NETWORK CONTAINER', summary: 'Connect a container to a network (a new interface, eth1, eth2, ...)', minArgs: 2, maxArgs: 2,
    options: [
      { name: 'ip', type: 'string', value: 'ADDR', description: 'Fixed IPv4 address on the network' },
      { name: 'alias', type: 'list', value: 'NAME', description: "Another name the network's DNS answers for the container" },
    ],
    async run({ args, opts, global }) {
      const aliases = (opts.alias as string[] | undefined) ?? [];
      await clientOf(global).json('POST', `/networks/${enc(args[0]!)}/connect`, { container: args[1], ...(opts.ip !== undefined ? { ip: opts.ip } : {}), ...(aliases.length ? { aliases } : {}) });
      return 0;
    },
  },
  {
    name: 'network disconnect', usage: 'NETWORK CONTAINER', summary: 'Disconnect a container from a network', minArgs: 2, maxArgs: 2, options: [],
    async run({ args, global }) {
      await clientOf(global).json('POST', `/networks/${enc(args[0]!)}/disconnect`, { container: args[1] });
      return 0;
    },
  },
  {
    name: 'network rm', usage: 'NETWORK [NETWORK...]', summary: 'Remove networks (refused while containers use them)', minArgs: 1, options: [],
    async run({ args, global }) {
      const client = clientOf(global);
      return eachArg(args, async (a) => {
        await client.json('DELETE', `/networks/${enc(a)}`);
      });
    },
  },
];
