import type { Route } from '../route.js';
import { containerRoutes } from './containers.js';
import { containerFileRoutes } from './container-files.js';
import { imageRoutes } from './images.js';
import { commitRoutes } from './commit.js';
import { quotaRoutes } from './quota.js';
import { systemRoutes } from './system.js';
import { identityRoutes } from './identity.js';
import { projectRoutes } from './projects.js';
import { vmRoutes } from './vms.js';
import { networkRoutes } from './networks.js';
import { diskImageRoutes } from './disk-images.js';
import { agentRoutes } from './agents.js';
import { hostRoutes } from './hosts.js';
import { schedulerRoutes } from './scheduler.js';
import { usageRoutes } from './usage.js';
import { metricsRoutes } from './metrics.js';
import { volumeRoutes } from './volumes.js';
import { evacuateRoutes } from './evacuate.js';
import { registryRoutes } from './registries.js';

/** The whole route table: the server, OpenAPI and access tests all read this one list. */
export function allRoutes(): Route[] {
  return [...systemRoutes, ...imageRoutes, ...registryRoutes, ...diskImageRoutes, ...containerRoutes, ...containerFileRoutes, ...commitRoutes, ...networkRoutes, ...volumeRoutes, ...vmRoutes, ...quotaRoutes, ...identityRoutes, ...projectRoutes, ...agentRoutes, ...hostRoutes, ...evacuateRoutes, ...schedulerRoutes, ...usageRoutes, ...metricsRoutes];
}
