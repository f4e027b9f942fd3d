/** `docker top`: the container service's process table (its host's `ps -ef` columns), in Docker's shape. */
import { InvalidArgument } from '../../core/errors.js';
import type { DockerRoute } from './server.js';
import { inDockerWords, noSuchContainer } from './errors.js';

export const topRoutes: DockerRoute[] = [
  {
    method: 'GET', pattern: /^\/containers\/([^/]+)\/top$/, name: 'container top', access: 'reader',
    handler: async ({ services, project, params, query }) => {
      const psArgs = query.get('ps_args');
      // the CLI sends -ef by default; other ps options would run a host command the caller chose
      if (psArgs && psArgs !== '-ef') throw new InvalidArgument(`ps options are not supported by Nimbus (only the default -ef): ${psArgs.slice(0, 40)}`);
      const ref = params[0]!.replace(/^\//, '');
      const c = await inDockerWords(services.containers.get(ref, { projectId: project }), () => noSuchContainer(ref));
      const t = await services.containers.top(c.id);
      return { json: { Titles: t.titles, Processes: t.processes } };
    },
  },
];
