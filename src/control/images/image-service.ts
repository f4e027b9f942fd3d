/**
 * Images as the control plane sees them: a project's references (and tags) to
 * content shared host-wide. Bytes and snapshots live on the agent.
 */
import { Conflict, InvalidArgument, NimbusError, Unavailable, hasCode, logMessage, toNimbusError } from '../../core/errors.js';
import { NO_NAMED_REGISTRIES, type NamedRegistries } from '../../core/config.js';
import { logger } from '../../core/log.js';
import { parseReference } from '../../core/image-reference.js';
import type { Agent, AgentImage, PullProgress } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { ImageContentRecord, ImageRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { OperationService } from '../operations/operations.js';
import { inScope, pickInScope, type ProjectScope } from '../identity/scope.js';
import type { HostAgents } from '../compute/hosts.js';
import type { ImageLocality } from '../scheduler/types.js';
import { carryBlobs, sourcesFor } from './carry.js';
import { withDeadline } from '../compute/deadline.js';
import { rm } from 'node:fs/promises';
import { applyChanges, parseChanges } from './changes.js';
import { rootfsArchive } from './rootfs-import.js';
import type { RegistryCredentials } from '../../agent/images/registry-client.js';

/** How long one other host's garbage collection may take before the collection goes on without it. */
const REMOTE_GC_DEADLINE_MS = 60_000;

const log = logger('images');

/** Pull failures that are the registry's refusal to give the image (it does not have it, or not for us): a failed carry then says more. */
const REGISTRY_REFUSALS = new Set(['NotFound', 'Unauthenticated', 'PermissionDenied']);

export interface ImageView extends ImageRecord {
  id: string;
  tags: string[];
  containers: number;
}

export class ImageService {
  constructor(
    private readonly store: Store,
    private readonly agent: Agent,
    private readonly events: EventBus,
    private readonly operations: OperationService,
    private readonly registries: NamedRegistries = NO_NAMED_REGISTRIES,
  ) {}

  /** What a pull is told of the registries an administrator named (copies: a host may keep them). */
  private namedRegistries(): { insecureRegistries: string[]; allowedRegistries: string[] } {
    return { insecureRegistries: [...this.registries.insecureRegistries], allowedRegistries: [...this.registries.allowedRegistries] };
  }

  /** The hosts images may be carried to; unset: only the embedded agent (named 'local'). */
  private hosts: HostAgents | undefined;
  /** Pulls onto a host in flight, by "host chain": concurrent creates there wait for one pull. */
  private readonly pullsOnHost = new Map<string, Promise<void>>();

  /** Images on every host (the daemon calls it once the agent directory is open). */
  useHosts(hosts: HostAgents): void {
    this.hosts = hosts;
  }

  /** A project's stored registry credentials (docker login); unset: pulls use only what a request brings. */
  private storedCredentials: ((projectId: string, registry: string) => Promise<RegistryCredentials | undefined>) | undefined;

  /** Pulls without credentials of their own use the project's stored ones for the registry (docs/registries.md). */
  useCredentials(lookup: (projectId: string, registry: string) => Promise<RegistryCredentials | undefined>): void {
    this.storedCredentials = lookup;
  }

  private get localName(): string | undefined {
    return this.hosts ? this.hosts.localName : 'local';
  }

  /** The scheduler's image locality: the hosts that hold the chain's layers. */
  locality(): ImageLocality {
    return async (chainId) => new Set(await this.store.images.hosts(chainId));
  }

  /**
   * The image's layers on host before a container is made there, then recorded in image_hosts:
   * pulled by digest from the registry it was pulled from (the agent fetches only what it
   * misses); without a registry reference (an image imported from an archive), or when the pull
   * fails (a tag no registry serves, credentials not kept, a registry out of the host's reach),
   * carried from a host that holds it, blob by blob over the agent protocol, and adopted there
   * (docs/image-transfer.md). The embedded agent holds every image the store knows (pulls and
   * imports run there). Concurrent ensures of one image on one host share the work.
   */
  async ensureOnHost(img: ImageRecord, host: string): Promise<void> {
    if (host === this.localName) return;
    const key = `${host} ${img.chainId}`;
    const pending = this.pullsOnHost.get(key);
    if (pending) return pending;
    const p = this.pullOnHost(img, host).finally(() => this.pullsOnHost.delete(key));
    this.pullsOnHost.set(key, p);
    return p;
  }

  private async pullOnHost(img: ImageRecord, host: string): Promise<void> {
    const holders = await this.store.images.hosts(img.chainId);
    if (holders.includes(host)) return;
    if (!this.hosts) throw new Conflict(`no host named ${host}`);
    const agent = this.hosts.get(host);
    const reference = await this.registryReference(img);
    if (!reference) return this.carryToHost(img, host, agent, holders);
    log.info('pulling an image onto a host', { host, reference });
    let pulled: AgentImage;
    try {
      // the project's own credentials for that registry, as its pull on the first host had
      const credentials = await this.storedCredentials?.(img.projectId, parseReference(reference).registry);
      pulled = await agent.pullImage(reference, { ...this.namedRegistries(), ...(credentials ? { credentials } : {}), reusable: await this.heldBlobs(img.projectId) }, () => undefined);
    } catch (e) {
      const pullError = toNimbusError(e);
      // the registry may not have it (an archive's tag no registry serves), want credentials, or be out of reach: carried instead
      log.info('the pull failed; carrying the image from a host that holds it', { host, reference, error: pullError.message });
      try {
        return await this.carryToHost(img, host, agent, holders);
      } catch (carryFailure) {
        // the registry's refusal: the carry's failure is the story; a pull that failed for another reason comes first
        if (REGISTRY_REFUSALS.has(pullError.code)) throw carryFailure;
        throw new NimbusError(pullError.code, `host ${host} could not pull ${reference}: ${pullError.message} (nor take it from another host: ${toNimbusError(carryFailure).message})`, {
          ...pullError.details, image: img.digest, host, hosts: holders,
        }, { cause: e });
      }
    }
    if (pulled.chainId !== img.chainId) throw new Conflict(`host ${host} pulled ${reference} as layers ${pulled.chainId}, not ${img.chainId}`);
    await this.store.images.addHost(img.chainId, host);
  }

  /**
   * The image's blobs the target lacks (manifest, config, layers), each streamed from a holder's
   * readBlob into the target's writeBlob (which verifies them), then adopted there: unpacked with
   * an import's checks. Holders that are down are skipped; one that fails is left for the next.
   */
  private async carryToHost(img: ImageRecord, host: string, target: Agent, holders: string[]): Promise<void> {
    const hosts = this.hosts!;
    const short = img.digest.slice(7, 19);
    const { up, down } = sourcesFor(hosts, [...(this.localName ? [this.localName] : []), ...holders], host);
    if (!up.length) {
      const on = [...up, ...down];
      throw new Unavailable(`image ${short} cannot be carried to host ${host}: ${on.length ? `the hosts that hold it (${on.join(', ')}) do not answer` : 'no host holds it'}`, {
        image: img.digest, host, hosts: on,
      });
    }
    const digests = [...new Set([img.digest, img.configDigest, ...img.layers.map((l) => l.digest)])];
    let lastError: NimbusError | undefined;
    for (const source of up) {
      try {
        log.info('carrying an image to a host', { image: img.digest, from: source, to: host });
        const sent = await carryBlobs(hosts.get(source), target, await target.missingBlobs(digests));
        const adopted = await target.adoptImage(img.digest);
        if (adopted.chainId !== img.chainId) throw new Conflict(`host ${host} unpacked it as layers ${adopted.chainId}, not ${img.chainId}`);
        await this.store.images.addHost(img.chainId, host);
        log.info('image carried', { image: img.digest, from: source, to: host, blobs: sent.blobs, bytes: sent.bytes });
        return;
      } catch (e) {
        const err = toNimbusError(e);
        lastError = new NimbusError(err.code, `carrying image ${short} from host ${source} to host ${host}: ${err.message}`, { ...err.details, image: img.digest, source, host }, { cause: e });
        // the holder lost it or went away: another may have it; anything else (the target refused it) is final
        if (!(hasCode(e, 'NotFound') || hasCode(e, 'Unavailable'))) throw lastError;
        log.warn('carrying an image failed; trying another holder', { image: img.digest, from: source, to: host, error: logMessage(err) });
      }
    }
    throw lastError!;
  }

  /** repository@digest of a tag that names the image (its project's first, else any project's: the bytes are the same), else undefined. */
  private async registryReference(img: ImageRecord): Promise<string | undefined> {
    const tags = await this.store.images.tags({ digest: img.digest });
    for (const t of [...tags.filter((x) => x.projectId === img.projectId), ...tags.filter((x) => x.projectId !== img.projectId)]) {
      try {
        const r = parseReference(t.name);
        return `${r.registry}/${r.repository}@${img.digest}`;
      } catch {
        /* not a registry reference */
      }
    }
    return undefined;
  }

  /** Point a tag of the project at an image the project references (docker tag; a tag held by another image moves). */
  async tag(image: ImageRecord, name: string, projectId: string): Promise<string> {
    const normalized = this.normalize(name);
    await this.store.images.setTag({ name: normalized, digest: image.digest, projectId, updatedAt: new Date().toISOString() });
    this.events.publish({ type: 'image', action: 'tag', id: image.digest, projectId, attributes: { name: normalized } });
    return normalized;
  }

  normalize(ref: string): string {
    return parseReference(ref).toString();
  }

  /** An image as its project sees it: that project's tags and containers only. */
  private async view(img: ImageRecord): Promise<ImageView> {
    const [tags, containers] = await Promise.all([
      this.store.images.tags({ projectId: img.projectId, digest: img.digest }),
      this.store.containers.countByImage(img.digest, img.projectId),
    ]);
    return { ...img, id: img.digest, tags: tags.map((t) => t.name), containers };
  }

  /**
   * A project's reference to an image, looked up in `scope`: by tag (normalised), full
   * digest, "repo@digest" (manifest or index), or a unique hex prefix of the digest.
   * Other projects' references neither match nor make a prefix ambiguous.
   */
  async resolve(ref: string, scope: ProjectScope): Promise<ImageRecord> {
    if (!ref) throw new InvalidArgument('an image reference is required');
    const pick = (candidates: ImageRecord[]) => pickInScope(candidates, scope, (i) => `${i.projectId} ${i.digest}`, 'image', ref);
    const referenced = () => this.store.images.list('projectId' in scope ? scope.projectId : undefined);
    const bare = ref.startsWith('sha256:') ? ref : /^[0-9a-f]{6,64}$/.test(ref) ? `sha256:${ref}` : undefined;
    if (bare) {
      const all = await referenced();
      const exact = all.filter((i) => i.digest === bare);
      if (exact.some((i) => inScope(scope, i.projectId))) return pick(exact);
      const prefixed = all.filter((i) => i.digest.startsWith(bare));
      if (prefixed.some((i) => inScope(scope, i.projectId)) || ref.startsWith('sha256:')) return pick(prefixed);
    }
    const parsed = parseReference(ref);
    if (parsed.digest) {
      // A digest may name the index the image was pulled through.
      return pick((await referenced()).filter((i) => i.digest === parsed.digest || i.indexDigest === parsed.digest));
    }
    const tagged: ImageRecord[] = [];
    for (const t of await this.store.images.tags({ name: parsed.toString() })) {
      const img = inScope(scope, t.projectId) ? await this.store.images.ref(t.projectId, t.digest) : undefined;
      if (img) tagged.push(img);
    }
    return pick(tagged);
  }

  /** References of one project, or of all (the caller filters by what it may read). */
  async list(projectId?: string): Promise<ImageView[]> {
    const views: ImageView[] = [];
    for (const i of await this.store.images.list(projectId)) views.push(await this.view(i));
    return views;
  }

  async inspect(ref: string, projectId: string): Promise<ImageView> {
    return this.view(await this.resolve(ref, { projectId }));
  }

  /**
   * Where pulls and imports run: the embedded agent; with --no-agent, the first registered host
   * (other hosts fetch the image by digest when a container is placed there).
   */
  pullHost(): { name: string; agent: Agent } {
    const local = this.localName;
    if (local !== undefined) return { name: local, agent: this.hosts ? this.hosts.get(local) : this.agent };
    const first = this.hosts?.names()[0];
    if (first === undefined) throw new Conflict('no host to pull the image on: register an agent first (nimbusd agent --join-token)');
    return { name: first, agent: this.hosts!.get(first) };
  }

  private async record(img: AgentImage, projectId: string, tagName: string | undefined, host: string | undefined = this.localName, action = 'pull'): Promise<ImageRecord> {
    const rec: ImageRecord = {
      digest: img.manifestDigest,
      projectId,
      indexDigest: img.indexDigest ?? null,
      configDigest: img.configDigest,
      config: img.config,
      layers: img.layers,
      chainId: img.chainId,
      size: img.size,
      createdAt: new Date().toISOString(),
    };
    // The content is stored once host-wide; the reference and the tag are this project's.
    await this.store.transaction(async () => {
      await this.store.images.upsert(rec);
      if (host !== undefined) await this.store.images.addHost(rec.chainId, host, rec.createdAt);
      if (tagName) await this.store.images.setTag({ name: tagName, digest: rec.digest, projectId, updatedAt: rec.createdAt });
    });
    this.events.publish({ type: 'image', action, id: rec.digest, projectId, attributes: { name: tagName } });
    return (await this.store.images.ref(projectId, rec.digest)) ?? rec;
  }

  /** A built image as the project's (as a pulled one is), tagged with each of tags (already normalised); event "build". */
  async recordBuilt(img: AgentImage, projectId: string, tags: string[], host: string): Promise<ImageView> {
    const rec = await this.record(img, projectId, tags[0], host);
    for (const t of tags.slice(1)) await this.store.images.setTag({ name: t, digest: rec.digest, projectId, updatedAt: new Date().toISOString() });
    this.events.publish({ type: 'image', action: 'build', id: rec.digest, projectId, attributes: { name: tags.join(',') } });
    return this.view(rec);
  }

  /**
   * An image committed on host (docker commit) as the project's, tagged with tagName (normalised)
   * when given; event "commit". The embedded agent holds every image the store knows: one made on
   * another host is carried to it first (its blobs, then adopted there), so it saves and runs
   * from there as any other.
   */
  async recordCommitted(img: AgentImage, projectId: string, tagName: string | undefined, host: string): Promise<ImageView> {
    const local = this.localName;
    if (local !== undefined && host !== local && this.hosts) {
      const pseudo: ImageRecord = {
        digest: img.manifestDigest, projectId, indexDigest: null, configDigest: img.configDigest, config: img.config,
        layers: img.layers, chainId: img.chainId, size: img.size, createdAt: new Date().toISOString(),
      };
      await this.carryToHost(pseudo, local, this.hosts.get(local), [host]);
    }
    const rec = await this.record(img, projectId, tagName, host, 'commit');
    return this.view(rec);
  }

  /**
   * A one-layer image from a rootfs tarball (docker import, plain or gzip) at `upload`, its config
   * from the --change lines, tagged `reference` when given; event "import". The tarball is wrapped
   * in a docker save archive (rootfs-import.ts) imported on the embedded agent as `docker load`
   * is: digests verified, the layer unpacked by the hardened unpacker (hostile entries refused).
   */
  async importRootfs(upload: string, projectId: string, opts: { reference?: string; changes?: string[]; message?: string }): Promise<ImageView> {
    if (this.localName === undefined) throw new Conflict('this control plane runs no embedded agent (--no-agent): import the tarball on a host with one, or push the image to a registry and pull it');
    const tagName = opts.reference ? this.normalize(opts.reference) : undefined;
    const config = applyChanges({}, parseChanges(opts.changes ?? []));
    const archive = `${upload}.image.tar`;
    try {
      await rootfsArchive(upload, archive, { config, comment: opts.message || 'Imported from -', architecture: process.arch === 'x64' ? 'amd64' : process.arch });
      let imgs: AgentImage[];
      try {
        imgs = await this.agent.importImages(archive);
      } catch (e) {
        // a refused tarball's layer was stored before its unpack refused it: nothing references it, so it goes now
        await this.collectGarbage().catch((x: unknown) => log.warn('collecting a refused import\'s blobs failed; the next collection does it', { error: String(x) }));
        throw e;
      }
      if (imgs.length !== 1) throw new Conflict(`the import made ${imgs.length} images, not one`);
      return await this.view(await this.record(imgs[0]!, projectId, tagName, this.localName, 'import'));
    } finally {
      await rm(archive, { force: true });
    }
  }

  /**
   * The configs and layers of the project's images: what a pull for it may take from a host's store
   * without the registry sending them again (PullOptions.reusable). A blob another project pulled
   * is fetched and checked instead, so that knowing its digest is not enough to get it.
   */
  private async heldBlobs(projectId: string): Promise<string[]> {
    const held = new Set<string>();
    for (const img of await this.store.images.list(projectId)) {
      held.add(img.configDigest);
      for (const l of img.layers) held.add(l.digest);
    }
    return [...held];
  }

  /** Starts a pull; returns the Operation. */
  async pull(ref: string, projectId: string, credentials?: { username: string; password: string }) {
    const parsed = parseReference(ref);
    const name = parsed.toString();
    return this.operations.start('image.pull', name, projectId, async (op) => {
      const on = this.pullHost();
      // credentials the request brought win over the project's stored ones
      const creds = credentials ?? (await this.storedCredentials?.(projectId, parsed.registry));
      const reusable = await this.heldBlobs(projectId);
      const img = await on.agent.pullImage(name, { ...this.namedRegistries(), ...(creds ? { credentials: creds } : {}), reusable }, (p: PullProgress) =>
        op.progress(p as unknown as Record<string, unknown>),
      );
      // Pulled by digest: no tag to record; by tag: the tag now points here.
      const rec = await this.record(img, projectId, parsed.digest ? undefined : name, on.name);
      return { id: rec.digest, digest: rec.digest, reference: name, size: rec.size, layers: rec.layers.length };
    });
  }

  /** Each image found in the archive, with the name it was tagged as (null when the archive names none). */
  async importArchive(path: string, projectId: string): Promise<{ name: string | null; image: ImageView }[]> {
    // the archive is a file of this process's host: only an embedded agent can read it
    if (this.localName === undefined) throw new Conflict('this control plane runs no embedded agent (--no-agent): import the archive on a host with one, or push the image to a registry and pull it');
    const imgs = await this.agent.importImages(path);
    const imported: { name: string | null; image: ImageView }[] = [];
    for (const img of imgs) {
      const tagName = img.reference ? this.normalize(img.reference) : undefined;
      imported.push({ name: tagName ?? null, image: await this.view(await this.record(img, projectId, tagName)) });
    }
    return imported;
  }

  /**
   * Remove a project's reference; the content itself goes when no project references it
   * and no container uses it (Docker semantics, per project). `force` removes all the
   * project's tags of it. Other projects' references and tags are never touched.
   */
  async remove(ref: string, projectId: string, force: boolean): Promise<{ untagged: string[]; deleted: string[] }> {
    // decided and done in one transaction: no container of the image nor tag of it appears between the checks and the delete
    const removed = await this.store.transaction(async () => {
      const img = await this.resolve(ref, { projectId });
      const tags = (await this.store.images.tags({ projectId, digest: img.digest })).map((t) => t.name);
      let byTag: string | undefined;
      try {
        const n = this.normalize(ref);
        if (tags.includes(n)) byTag = n;
      } catch {
        /* a digest or id, not a reference */
      }
      if (byTag && tags.length > 1 && !force) {
        await this.store.images.deleteTag(projectId, byTag);
        return { untagged: [byTag], deleted: [] };
      }
      const users = await this.store.containers.countByImage(img.digest, projectId);
      if (users > 0) {
        throw new Conflict(`image ${ref} is used by ${users} container(s); remove them first`, { containers: users });
      }
      if (tags.length > 1 && !byTag && !force) {
        throw new Conflict(`image ${ref} is referenced by several tags (${tags.join(', ')}); use --force to remove them all`);
      }
      await this.store.images.deleteRef(projectId, img.digest); // its tags go with it
      return { untagged: tags, deleted: [img.digest] };
    });
    for (const digest of removed.deleted) this.events.publish({ type: 'image', action: 'delete', id: digest, projectId });
    if (removed.deleted.length) await this.collectGarbage();
    return removed;
  }

  /**
   * Remove the project's dangling references (no tag, no container of it); with all, every one no
   * container of it uses; of those, only the ones `include` accepts when given (docker image prune's filters).
   */
  async prune(all: boolean, projectId: string, include?: (img: ImageRecord) => boolean): Promise<{ deleted: string[]; bytesFreed: number }> {
    // one transaction: a container made from an image meanwhile is either counted (the image stays) or made after it is gone
    const deleted = await this.store.transaction(async () => {
      const gone: string[] = [];
      for (const img of await this.store.images.list(projectId)) {
        if (include && !include(img)) continue;
        if ((await this.store.containers.countByImage(img.digest, projectId)) > 0) continue;
        const tagged = (await this.store.images.tags({ projectId, digest: img.digest })).length > 0;
        if (tagged && !all) continue;
        await this.store.images.deleteRef(projectId, img.digest);
        gone.push(img.digest);
      }
      return gone;
    });
    for (const digest of deleted) this.events.publish({ type: 'image', action: 'delete', id: digest, projectId });
    const gc = await this.collectGarbage();
    return { deleted, bytesFreed: gc.bytesFreed };
  }

  /** Drop content no project references and no container uses, then let the agent free what nothing keeps. */
  async collectGarbage() {
    // what is kept, read at one moment (the agent's collection runs after, outside the transaction)
    const { kept, disks } = await this.store.transaction(async () => {
      const keptImages: ImageContentRecord[] = [];
      const dropped: ImageContentRecord[] = [];
      for (const i of await this.store.images.contents()) {
        if ((await this.store.images.refCount(i.digest)) > 0 || (await this.store.containers.countByImage(i.digest)) > 0) keptImages.push(i);
        else {
          await this.store.images.delete(i.digest);
          dropped.push(i);
        }
      }
      // every host's collection below frees their layers: no host holds them any more (a host
      // that does not answer now frees them at a later collection: what is kept is named, not what goes)
      const keptChains = new Set(keptImages.map((i) => i.chainId));
      for (const i of dropped) {
        if (keptChains.has(i.chainId)) continue;
        for (const host of await this.store.images.hosts(i.chainId)) await this.store.images.removeHost(host, i.chainId);
      }
      // disk images' blobs: named by a project, or backing a VM's disk
      const diskBlobs = new Set([
        ...(await this.store.disks.list()).map((d) => d.digest),
        ...(await this.store.vms.list()).flatMap((v) => [v.config.diskImage, v.config.kernelImage, v.config.initrdImage].flatMap((i) => (i ? [i.digest] : []))),
      ]);
      return { kept: keptImages, disks: diskBlobs };
    });
    const keep = {
      manifestDigests: kept.map((i) => i.digest),
      indexDigests: kept.flatMap((i) => (i.indexDigest ? [i.indexDigest] : [])),
      chainIds: kept.map((i) => i.chainId),
      blobs: [...disks],
    };
    const total = { blobsRemoved: 0, snapshotsRemoved: 0, bytesFreed: 0 };
    const add = (r: { blobsRemoved: number; snapshotsRemoved: number; bytesFreed: number }) => {
      total.blobsRemoved += r.blobsRemoved;
      total.snapshotsRemoved += r.snapshotsRemoved;
      total.bytesFreed += r.bytesFreed;
    };
    if (this.localName !== undefined) add(await this.agent.garbageCollect(keep));
    // the other hosts at once, each bounded; one that fails or does not answer is collected next time
    const others = (this.hosts?.names() ?? []).filter((h) => h !== this.localName && !this.hosts?.isDown?.(h));
    await Promise.all(others.map(async (host) => {
      try {
        add(await withDeadline(this.hosts!.get(host).garbageCollect(keep), REMOTE_GC_DEADLINE_MS, `host ${host}'s garbage collection`));
      } catch (e) {
        log.warn('garbage collection on a host failed; it runs again at the next collection', { host, error: String(e) });
      }
    }));
    return total;
  }
}
