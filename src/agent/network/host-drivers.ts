/** The network drivers this host has, in the seam's registry, and the lookup by name. */
import { existsSync } from 'node:fs';
import { InvalidArgument } from '../../core/errors.js';
import { bridgeDriver } from './bridge-driver.js';
import { routeDriver } from './route-driver.js';
import { networkDrivers, type NetworkDriver, type NetworkDriverName } from './network-driver.js';

// probes: iproute2 and nftables are what they need
const needsTools = async () => (existsSync('/proc/net/dev') ? undefined : 'no /proc/net/dev');
networkDrivers.register({ name: 'bridge', probe: needsTools, create: () => bridgeDriver });
networkDrivers.register({ name: 'route', probe: needsTools, create: () => routeDriver });

export function driverFor(name: NetworkDriverName): NetworkDriver {
  const d = networkDrivers.get(name)?.create({});
  if (!d || d instanceof Promise) throw new InvalidArgument(`unknown network driver "${name}"`);
  return d;
}
