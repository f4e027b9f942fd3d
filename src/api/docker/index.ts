/** The Docker Engine API's route table and its server, as nimbusd starts it beside the Nimbus API. */
import type { Services } from '../../control/services.js';
import type { ServedCertificate } from '../edge.js';
import { logger } from '../../core/log.js';
import { containerRoutes } from './containers.js';
import { execRoutes } from './exec.js';
import { imageRoutes } from './images.js';
import { buildRoutes } from './build.js';
import { networkRoutes } from './networks.js';
import { volumeRoutes } from './volumes.js';
import { observeRoutes } from './observe.js';
import { pruneRoutes } from './prune.js';
import { archiveRoutes } from './archive.js';
import { containerArchiveRoutes } from './container-archive.js';
import { renameRoutes } from './rename.js';
import { topRoutes } from './top.js';
import { commitRoutes } from './commit.js';
import { authRoutes } from './auth.js';
import { DockerApiServer, type DockerRoute } from './server.js';
import { systemRoutes } from './system.js';

export function dockerRoutes(): DockerRoute[] {
  return [...systemRoutes, ...imageRoutes, ...buildRoutes, ...containerRoutes, ...execRoutes, ...networkRoutes, ...volumeRoutes, ...observeRoutes, ...pruneRoutes, ...archiveRoutes, ...containerArchiveRoutes, ...renameRoutes, ...topRoutes, ...commitRoutes, ...authRoutes];
}

/**
 * Serves the Docker Engine API on `socketPath` (HOME/docker.sock); close() stops it. A socket
 * that cannot be made (a home too long for a unix socket's 107 bytes, say) costs the Docker API,
 * not the daemon: it is logged and nimbusd serves on without it.
 */
export async function startDockerApi(services: Services, socketPath: string, tcp?: { host: string; port: number; tls?: ServedCertificate }): Promise<{ server: DockerApiServer; tcpPort?: number }> {
  const server = new DockerApiServer(dockerRoutes(), services);
  try {
    await server.listenUnix(socketPath);
  } catch (e) {
    logger('docker-api').warn('the Docker API is not served', { socket: socketPath, error: String(e) });
  }
  // asked for explicitly: a TCP listener that cannot be had stops the daemon (as --tcp does)
  if (!tcp) return { server };
  try {
    return { server, tcpPort: await server.listenTcp(tcp.host, tcp.port, tcp.tls) };
  } catch (e) {
    await server.close();
    throw e;
  }
}
