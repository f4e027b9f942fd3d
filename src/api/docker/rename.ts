/** `docker rename`: the container service's rename (DNS follows on every host), in Docker's words. */
import { Conflict, InvalidArgument, hasCode } from '../../core/errors.js';
import type { DockerRoute } from './server.js';
import { inDockerWords, noSuchContainer } from './errors.js';

export const renameRoutes: DockerRoute[] = [
  {
    method: 'POST', pattern: /^\/containers\/([^/]+)\/rename$/, name: 'container rename', access: 'member',
    handler: async ({ services, project, params, query }) => {
      const ref = params[0]!.replace(/^\//, '');
      const to = (query.get('name') ?? '').replace(/^\//, '');
      if (!to) throw new InvalidArgument('Neither old nor new names may be empty');
      const c = await inDockerWords(services.containers.get(ref, { projectId: project }), () => noSuchContainer(ref));
      try {
        await services.containers.rename(c.id, to);
      } catch (e) {
        // dockerd's words, which compose and scripts match
        if (hasCode(e, 'AlreadyExists')) {
          throw new Conflict(`Conflict. The container name "/${to}" is already in use. You have to remove (or rename) that container to be able to reuse that name.`);
        }
        throw e;
      }
      return { status: 204 };
    },
  },
];
