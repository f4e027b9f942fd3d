/**
 * `nimbus docker-env`: what the docker CLI needs to talk to this nimbusd's Docker Engine API
 * (HOME/docker.sock), and for a caller with a token, the HttpHeaders entry of
 * ~/.docker/config.json that carries the token and project (docs/docker-api.md).
 */
import type { CommandSpec } from '../args.js';
import { readStoredToken } from '../credentials.js';
import { clientOf } from './shared.js';

interface WhoAmI { user: string; systemAdmin: boolean; via: string; defaultProject: string | null }

/** What to print: shell lines (exports and # comments). Exported for its test. */
export function dockerEnvLines(who: WhoAmI, home: string | undefined, token: string | undefined, project: string | undefined): string[] {
  const lines: string[] = [];
  if (home) lines.push(`export DOCKER_HOST=unix://${home}/docker.sock`);
  else lines.push('# the Docker API is served on the unix socket HOME/docker.sock of the nimbusd host (ask its administrator for access); not over TCP yet');
  const headerProject = project ?? who.defaultProject;
  if (token && who.via !== 'socket') {
    const headers: Record<string, string> = { 'X-Nimbus-Token': token, ...(headerProject ? { 'X-Nimbus-Project': headerProject } : {}) };
    lines.push(`# as ${who.user}${headerProject ? ` in project ${headerProject}` : ''}: add to $DOCKER_CONFIG/config.json (default ~/.docker/config.json):`);
    lines.push(`#   "HttpHeaders": ${JSON.stringify(headers)}`);
  }
  lines.push('# Run this command to configure your shell:');
  lines.push('# eval "$(nimbus docker-env)"');
  return lines;
}

export const dockerEnvCommands: CommandSpec[] = [
  {
    name: 'docker-env', usage: '', summary: 'Print the environment the docker CLI needs to use Nimbus\'s Docker API', maxArgs: 0, options: [],
    async run({ global }) {
      const client = clientOf(global);
      const who = await client.json<WhoAmI>('GET', '/auth/whoami');
      // the home (and so the socket's path) is told to system administrators only
      const info = await client.json<{ home?: string }>('GET', '/info');
      const token = process.env.NIMBUS_TOKEN || readStoredToken();
      process.stdout.write(dockerEnvLines(who, info.home, token, global.project ?? process.env.NIMBUS_PROJECT).join('\n') + '\n');
      return 0;
    },
  },
];
