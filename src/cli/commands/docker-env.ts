/**
 * `nimbus docker-env`: what the docker CLI needs to talk to this nimbusd's Docker Engine API
 * (its unix socket, or --docker-tcp's listener), and for a caller with a token, the HttpHeaders entry of
 * ~/.docker/config.json that carries the token and project (docs/docker-api.md).
 */
import type { CommandSpec } from '../args.js';
import { readStoredToken } from '../credentials.js';
import { clientOf } from './shared.js';

interface WhoAmI { user: string; systemAdmin: boolean; via: string; defaultProject: string | null }

/** Where the daemon serves the Docker API, as GET /info tells the caller (the socket's path: administrators only). */
export interface DockerApiEndpoints {
  socket?: string;
  tcp?: string;
  /** The TCP listener is HTTPS: the docker CLI verifies it (DOCKER_TLS_VERIFY) against the CA in DOCKER_CERT_PATH. */
  tls?: boolean;
}

/** What to print: shell lines (exports and # comments). Exported for its test. */
export function dockerEnvLines(who: WhoAmI, api: DockerApiEndpoints, token: string | undefined, project: string | undefined): string[] {
  const lines: string[] = [];
  // on this host's socket, its unix socket (no token needed); else TCP, where a token is
  if (who.via === 'socket' && api.socket) lines.push(`export DOCKER_HOST=unix://${api.socket}`);
  else if (api.tcp) {
    lines.push(`export DOCKER_HOST=${api.tcp}`);
    if (api.tls) {
      lines.push('export DOCKER_TLS_VERIFY=1');
      lines.push('# its certificate is checked against ca.pem in $DOCKER_CERT_PATH (default ~/.docker): the CA that signed nimbusd\'s --tls-cert');
    }
  }
  else if (api.socket) lines.push(`export DOCKER_HOST=unix://${api.socket}`);
  else lines.push('# the Docker API is served on a unix socket of the nimbusd host only (nimbusd --docker-tcp serves it on TCP): ask its administrator');
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
      // the socket's path is told to system administrators only; a TCP listener to everyone
      const info = await client.json<{ dockerApi?: DockerApiEndpoints }>('GET', '/info');
      const token = process.env.NIMBUS_TOKEN || readStoredToken();
      process.stdout.write(dockerEnvLines(who, info.dockerApi ?? {}, token, global.project ?? process.env.NIMBUS_PROJECT).join('\n') + '\n');
      return 0;
    },
  },
];
