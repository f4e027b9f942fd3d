/**
 * `docker commit` (and `nimbus commit`): a container of the project made into an image of the
 * project. The control plane works out the new image's config (the container's, as dockerd takes
 * it, then the --change lines) and the container's host does the rest (agent commitContainer,
 * protocol 9: its writable layer as one more layer, frozen while read when asked, the image
 * adopted there as any arriving image is); the image is then recorded as the project's, carried
 * to the embedded agent when made elsewhere (image-service.ts recordCommitted).
 */
import { Conflict } from '../../core/errors.js';
import type { Store } from '../../store/store.js';
import type { ContainerRecord, ImageRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { HostAgents } from '../compute/hosts.js';
import type { ContainerService } from '../compute/container-service.js';
import { containerImage } from '../compute/container-move.js';
import { applyChanges, parseChanges, type RuntimeConfig } from './changes.js';
import type { ImageService, ImageView } from './image-service.js';

export interface CommitInput {
  /** The container's id, name or id prefix, looked up in projectId. */
  container: string;
  projectId: string;
  /** REPO[:TAG] the image is tagged with (":latest" when no tag); none: an untagged image. */
  reference?: string;
  /** Dockerfile lines (--change). */
  changes?: string[];
  comment?: string;
  author?: string;
  /** Freeze a running container while its layer is read (default true, as docker commit). */
  pause?: boolean;
}

/** The config a commit starts from, as dockerd's: the container's settings over its image's. */
export function containerRuntimeConfig(image: ImageRecord, c: ContainerRecord): RuntimeConfig {
  const base: RuntimeConfig = structuredClone(image.config.config ?? {});
  const env = [...(base.Env ?? [])];
  for (const e of c.config.env ?? []) {
    const key = e.includes('=') ? e.slice(0, e.indexOf('=')) : e;
    const i = env.findIndex((x) => x === key || x.startsWith(`${key}=`));
    if (i >= 0) env[i] = e;
    else env.push(e);
  }
  const out: RuntimeConfig = { ...base, Env: env };
  if (c.config.cmd) out.Cmd = [...c.config.cmd];
  if (c.config.entrypoint) {
    out.Entrypoint = [...c.config.entrypoint];
    if (!c.config.cmd) out.Cmd = null; // docker run --entrypoint clears the image's CMD
  }
  if (c.config.workdir) out.WorkingDir = c.config.workdir;
  if (c.config.user) out.User = c.config.user;
  if (c.config.stopSignal) out.StopSignal = c.config.stopSignal;
  if (Object.keys(c.config.labels ?? {}).length) out.Labels = { ...(base.Labels ?? {}), ...c.config.labels };
  return out;
}

export class CommitService {
  constructor(
    private readonly store: Store,
    private readonly containers: ContainerService,
    private readonly images: ImageService,
    private readonly hosts: HostAgents,
    private readonly events: EventBus,
  ) {}

  async commit(input: CommitInput): Promise<ImageView> {
    // everything a request can get wrong, before the host is asked
    const changes = parseChanges(input.changes ?? []);
    const tagName = input.reference ? this.images.normalize(input.reference) : undefined;
    const c = await this.containers.get(input.container, { projectId: input.projectId });
    if (c.runtime === 'vm' || c.config.runtime === 'vm') {
      throw new Conflict(`container ${c.name} is a secure container (--runtime vm): its files are in its microVM's disk, which a commit does not reach`);
    }
    if (c.status === 'removing' || c.status === 'dead') throw new Conflict(`container ${c.name} is ${c.status}: it cannot be committed`);
    const parent = await containerImage(this.store, c);
    const config = applyChanges(containerRuntimeConfig(parent, c), changes);
    const img = await this.hosts.get(c.host).commitContainer(c.id, {
      parentManifest: parent.digest,
      config,
      ...(input.author ? { author: input.author } : {}),
      ...(input.comment ? { comment: input.comment } : {}),
      createdBy: [...(c.config.entrypoint ?? parent.config.config?.Entrypoint ?? []), ...(c.config.cmd ?? parent.config.config?.Cmd ?? [])].join(' '),
      pause: input.pause ?? true,
    });
    const view = await this.images.recordCommitted(img, input.projectId, tagName, c.host);
    this.events.publish({ type: 'container', action: 'commit', id: c.id, projectId: c.projectId, attributes: { name: c.name, image: img.manifestDigest, ...(tagName ? { imageName: tagName } : {}) } });
    return view;
  }
}
