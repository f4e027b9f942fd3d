/**
 * Registry credentials kept per project (docs/registries.md): `docker login` (POST /auth) and
 * `nimbus registry login` check them against the registry as dockerd does, then keep them, the
 * password sealed (sealed-secret.ts); every pull of the project from that registry uses them
 * unless the request brings its own (the image service asks credentialsFor()). Listings show
 * the server and the user name only; the password is never logged, served or put in an event.
 */
import { InvalidArgument, NotFound, Unreachable, hasCode } from '../../core/errors.js';
import { NO_NAMED_REGISTRIES, type NamedRegistries } from '../../core/config.js';
import { logger } from '../../core/log.js';
import { DEFAULT_REGISTRY } from '../../core/image-reference.js';
import { RegistryClient, type RegistryCredentials } from '../../agent/images/registry-client.js';
import type { Store } from '../../store/store.js';
import type { EventBus } from '../events/event-bus.js';
import type { SecretBox } from './sealed-secret.js';

const log = logger('registries');

/** What a listing shows of a project's credentials: never the password. */
export interface RegistryLoginView {
  server: string;
  username: string;
  createdAt: string;
  updatedAt: string;
  updatedBy: string;
}

/** Docker Hub's names, all one registry. */
const DOCKER_HUB = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);
const HOST = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:]+\])(?::\d{1,5})?$/;

/**
 * The registry a login names, as pulls name it: Docker's ConvertToHostname (a scheme and a path
 * dropped: the CLI's default is https://index.docker.io/v1/), lowercase, Docker Hub as docker.io.
 */
export function registryServer(input: string): string {
  const host = input.trim().replace(/^https?:\/\//i, '').split('/')[0]!.toLowerCase();
  if (!host || host.length > 255 || !HOST.test(host)) throw new InvalidArgument(`invalid registry server "${input.slice(0, 300)}": give HOST[:PORT]`);
  return DOCKER_HUB.has(host) ? DEFAULT_REGISTRY : host;
}

/** The sealed password is bound to its row: project and server. */
const context = (projectId: string, server: string) => `registry-credentials\0${projectId}\0${server}`;

export class RegistryCredentialService {
  constructor(
    private readonly store: Store,
    private readonly box: SecretBox,
    private readonly events: EventBus,
    private readonly registries: NamedRegistries = NO_NAMED_REGISTRIES,
  ) {}

  /**
   * Check the credentials against the registry (GET /v2/, its Basic or Bearer challenge
   * answered), then keep them for the project, replacing any it had for that registry.
   * A refusal is Unauthenticated in dockerd's words; nothing is kept then.
   */
  async login(projectId: string, input: { server: string; username: string; password: string }, actor: string): Promise<RegistryLoginView> {
    const server = registryServer(input.server);
    if (!input.username) throw new InvalidArgument('a user name is required');
    if (!input.password) throw new InvalidArgument('a password is required');
    const credentials: RegistryCredentials = { username: input.username, password: input.password };
    try {
      await new RegistryClient(server, '', { credentials, ...this.registries, responseTimeoutMs: 15_000 }).checkLogin();
    } catch (e) {
      // the registry the request named did not answer: 502 (as an agent URL that does not answer), not Nimbus unavailable
      if (hasCode(e, 'Unavailable')) throw new Unreachable((e as Error).message, { registry: server }, { cause: e });
      throw e;
    }
    const now = new Date().toISOString();
    const sealedPassword = await this.box.seal(input.password, context(projectId, server));
    await this.store.registryCredentials.put({ projectId, server, username: input.username, sealedPassword, createdAt: now, updatedAt: now, updatedBy: actor });
    log.info('registry credentials stored', { project: projectId, server, username: input.username, by: actor });
    this.events.publish({ type: 'registry', action: 'login', id: server, projectId, actor, attributes: { server, username: input.username } });
    return this.view((await this.store.registryCredentials.get(projectId, server))!);
  }

  /** Forget the project's credentials for the registry; NotFound when it has none. */
  async logout(projectId: string, server: string, actor: string): Promise<void> {
    const name = registryServer(server);
    if (!(await this.store.registryCredentials.delete(projectId, name))) throw new NotFound(`not logged in to ${name} in this project`);
    log.info('registry credentials removed', { project: projectId, server: name, by: actor });
    this.events.publish({ type: 'registry', action: 'logout', id: name, projectId, actor, attributes: { server: name } });
  }

  async list(projectId: string): Promise<RegistryLoginView[]> {
    return (await this.store.registryCredentials.list(projectId)).map((r) => this.view(r));
  }

  /** The project's stored credentials for the registry a pull names, if any. */
  async credentialsFor(projectId: string, registry: string): Promise<RegistryCredentials | undefined> {
    let server: string;
    try {
      server = registryServer(registry);
    } catch {
      return undefined;
    }
    const row = await this.store.registryCredentials.get(projectId, server);
    if (!row) return undefined;
    return { username: row.username, password: await this.box.open(row.sealedPassword, context(projectId, server)) };
  }

  private view(r: { server: string; username: string; createdAt: string; updatedAt: string; updatedBy: string }): RegistryLoginView {
    return { server: r.server, username: r.username, createdAt: r.createdAt, updatedAt: r.updatedAt, updatedBy: r.updatedBy };
  }
}
