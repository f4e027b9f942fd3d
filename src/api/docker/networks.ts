/** Networks through the network service, in the request's project: ls, create, inspect, rm, connect, disconnect. */
import { InvalidArgument } from '../../core/errors.js';
import type { NetworkRecord } from '../../store/records.js';
import type { CreateNetworkInput } from '../../control/networks/network-service.js';
import { NetworkCreate } from '../schemas.js';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { checkOrThrow } from '../validate.js';
import { checkBody, type DockerNetworkCreate } from './schemas.js';
import { networkDoc, parseFilters } from './mapping.js';
import { inDockerWords, noSuchContainer, noSuchNetwork } from './errors.js';
import type { DockerContext, DockerRoute } from './server.js';

/** The Nimbus API's create schema: the mapped body passes the same checks as `POST /networks`. */
const nimbusCreate = TypeCompiler.Compile(NetworkCreate);
const ID = '([^/]+)';
const NETWORK_FILTERS = new Set(['name', 'id', 'label', 'driver']);

async function network(ctx: DockerContext): Promise<NetworkRecord> {
  const ref = ctx.params[0]!;
  return inDockerWords(ctx.services.networks.get(ref, { projectId: ctx.project }), () => noSuchNetwork(ref));
}

/** Docker's create body as the network service's input; what Nimbus does not do is refused by name. */
export function toNetworkInput(body: DockerNetworkCreate): CreateNetworkInput {
  const driver = body.Driver || 'bridge';
  if (driver !== 'bridge' && driver !== 'route') throw new InvalidArgument(`network driver "${driver}" is not supported (bridge, or Nimbus's route)`);
  if (body.EnableIPv6) throw new InvalidArgument('--ipv6 is not supported yet');
  if (body.Options && Object.keys(body.Options).length) throw new InvalidArgument('network driver options (-o) are not supported');
  if (body.IPAM?.Driver && body.IPAM.Driver !== 'default') throw new InvalidArgument(`IPAM driver "${body.IPAM.Driver}" is not supported`);
  const configs = body.IPAM?.Config ?? [];
  if (configs.length > 1) throw new InvalidArgument('one subnet per network');
  const ipam = configs[0];
  if (ipam?.IPRange) throw new InvalidArgument('--ip-range is not supported');
  return {
    name: body.Name, driver,
    ...(ipam?.Subnet ? { subnet: ipam.Subnet } : {}),
    ...(ipam?.Gateway ? { gateway: ipam.Gateway } : {}),
    internal: body.Internal === true,
    labels: body.Labels ?? {},
  };
}

export const networkRoutes: DockerRoute[] = [
  {
    method: 'GET', pattern: /^\/networks$/, name: 'network list', access: 'reader',
    handler: async ({ services, project, query }) => {
      const filters = parseFilters(query.get('filters') ?? undefined);
      for (const k of filters.keys()) if (!NETWORK_FILTERS.has(k)) throw new InvalidArgument(`invalid filter '${k}'`);
      const pass = (n: NetworkRecord) => [...filters].every(([k, values]) => values.length === 0 || values.some((v) =>
        k === 'name' ? n.name.includes(v) : k === 'id' ? n.id.startsWith(v) : k === 'driver' ? n.driver === v
          : (v.includes('=') ? n.labels[v.slice(0, v.indexOf('='))] === v.slice(v.indexOf('=') + 1) : v in n.labels)));
      return { json: (await services.networks.list(project)).filter(pass).map((n) => networkDoc(n)) };
    },
  },
  {
    method: 'GET', pattern: new RegExp(`^/networks/${ID}$`), name: 'network inspect', access: 'reader',
    handler: async (ctx) => {
      const v = await ctx.services.networks.view(await network(ctx));
      return { json: networkDoc(v, v.containers) };
    },
  },
  {
    method: 'POST', pattern: /^\/networks\/create$/, name: 'network create', access: 'member',
    handler: async ({ services, project, body }) => {
      const input = checkOrThrow(nimbusCreate, toNetworkInput(checkBody('network', await body())), 'request body') as CreateNetworkInput;
      const n = await services.networks.create(input, project);
      return { status: 201, json: { Id: n.id, Warning: '' } };
    },
  },
  {
    method: 'DELETE', pattern: new RegExp(`^/networks/${ID}$`), name: 'network remove', access: 'member',
    handler: async (ctx) => {
      const n = await network(ctx);
      await ctx.services.networks.remove(n.id, { projectId: ctx.project });
      return { status: 204 };
    },
  },
  {
    method: 'POST', pattern: new RegExp(`^/networks/${ID}/(connect|disconnect)$`), name: 'network connect', access: 'member',
    handler: async (ctx) => {
      const n = await network(ctx);
      const body = (await ctx.body()) as { Container?: unknown; EndpointConfig?: { Aliases?: unknown; IPAMConfig?: { IPv4Address?: unknown } } } | undefined;
      if (!body || typeof body.Container !== 'string' || !body.Container) throw new InvalidArgument('Container is required');
      const ref = body.Container;
      const c = await inDockerWords(ctx.services.containers.get(ref, { projectId: ctx.project }), () => noSuchContainer(ref));
      if (ctx.params[1] === 'disconnect') await ctx.services.networks.disconnect(n.id, c);
      else {
        const aliases = body.EndpointConfig?.Aliases;
        const ip = body.EndpointConfig?.IPAMConfig?.IPv4Address;
        if (aliases !== undefined && aliases !== null && !(Array.isArray(aliases) && aliases.every((a) => typeof a === 'string' && a.length <= 253))) throw new InvalidArgument('EndpointConfig.Aliases must be a list of names');
        if (ip !== undefined && ip !== '' && (typeof ip !== 'string' || !/^\d{1,3}(\.\d{1,3}){3}$/.test(ip))) throw new InvalidArgument('EndpointConfig.IPAMConfig.IPv4Address must be an IPv4 address');
        await ctx.services.networks.connect(n.id, c, { ...(Array.isArray(aliases) && aliases.length ? { aliases: aliases as string[] } : {}), ...(ip ? { ip: ip as string } : {}) });
      }
      return { status: 200, json: '' };
    },
  },
];
