/**
 * Images as the control plane sees them: references (tags) pointing at
 * manifests, owned by a project. Bytes and snapshots live on the agent.
 */
import { Conflict, InvalidArgument, NotFound } from '../../core/errors.js';
import { parseReference } from '../../core/image-reference.js';
import type { Agent, AgentImage, PullProgress } from '../../agent/agent.js';
import type { Store } from '../../store/store.js';
import type { ImageRecord } from '../../store/records.js';
import type { EventBus } from '../events/event-bus.js';
import type { OperationService } from '../operations/operations.js';

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
    private readonly insecureRegistries: readonly string[],
  ) {}

  normalize(ref: string): string {
    return parseReference(ref).toString();
  }

  private view(img: ImageRecord): ImageView {
    return {
      ...img,
      id: img.digest,
      tags: this.store.images.tags(img.digest).map((t) => t.name),
      containers: this.store.containers.countByImage(img.digest),
    };
  }

  /** By tag (normalised), full digest, "repo@digest", or a unique hex prefix of the digest. */
  resolve(ref: string): ImageRecord {
    if (!ref) throw new InvalidArgument('an image reference is required');
    const bare = ref.startsWith('sha256:') ? ref : /^[0-9a-f]{6,64}$/.test(ref) ? `sha256:${ref}` : undefined;
    if (bare) {
      const exact = this.store.images.get(bare);
      if (exact) return exact;
      const matches = this.store.images.list().filter((i) => i.digest.startsWith(bare));
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) throw new InvalidArgument(`image id prefix "${ref}" is ambiguous`);
      if (ref.startsWith('sha256:')) throw new NotFound(`no such image: ${ref}`);
    }
    const parsed = parseReference(ref);
    if (parsed.digest) {
      const img = this.store.images.get(parsed.digest);
      if (img) return img;
      // A digest may name the index the image was pulled through.
      const viaIndex = this.store.images.list().find((i) => i.indexDigest === parsed.digest);
      if (viaIndex) return viaIndex;
      throw new NotFound(`no such image: ${ref}`);
    }
    const tag = this.store.images.tag(parsed.toString());
    const img = tag && this.store.images.get(tag.digest);
    if (!img) throw new NotFound(`no such image: ${ref}`);
    return img;
  }

  list(projectId?: string): ImageView[] {
    return this.store.images.list(projectId).map((i) => this.view(i));
  }

  inspect(ref: string): ImageView {
    return this.view(this.resolve(ref));
  }

  private record(img: AgentImage, projectId: string, tagName: string | undefined): ImageRecord {
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
    this.store.transaction(() => {
      this.store.images.upsert(rec);
      if (tagName) this.store.images.setTag({ name: tagName, digest: rec.digest, projectId, updatedAt: rec.createdAt });
    });
    this.events.publish({ type: 'image', action: 'pull', id: rec.digest, projectId, attributes: { name: tagName } });
    return rec;
  }

  /** Starts a pull; returns the Operation. */
  pull(ref: string, projectId: string, credentials?: { username: string; password: string }) {
    const parsed = parseReference(ref);
    const name = parsed.toString();
    return this.operations.start('image.pull', name, projectId, async (op) => {
      const img = await this.agent.pullImage(name, { insecureRegistries: [...this.insecureRegistries], ...(credentials ? { credentials } : {}) }, (p: PullProgress) =>
        op.progress(p as unknown as Record<string, unknown>),
      );
      // Pulled by digest: no tag to record; by tag: the tag now points here.
      const rec = this.record(img, projectId, parsed.digest ? undefined : name);
      return { id: rec.digest, digest: rec.digest, reference: name, size: rec.size, layers: rec.layers.length };
    });
  }

  /** Each image found in the archive, with the name it was tagged as (null when the archive names none). */
  async importArchive(path: string, projectId: string): Promise<{ name: string | null; image: ImageView }[]> {
    const imgs = await this.agent.importImages(path);
    return imgs.map((img) => {
      const tagName = img.reference ? this.normalize(img.reference) : undefined;
      return { name: tagName ?? null, image: this.view(this.record(img, projectId, tagName)) };
    });
  }

  /**
   * Remove a reference; the image itself goes when no reference and no
   * container is left (Docker semantics). `force` removes all its tags.
   */
  async remove(ref: string, force: boolean): Promise<{ untagged: string[]; deleted: string[] }> {
    const img = this.resolve(ref);
    const tags = this.store.images.tags(img.digest).map((t) => t.name);
    let byTag: string | undefined;
    try {
      const n = this.normalize(ref);
      if (tags.includes(n)) byTag = n;
    } catch {
      /* a digest or id, not a reference */
    }
    const untagged: string[] = [];
    if (byTag && tags.length > 1 && !force) {
      this.store.images.deleteTag(byTag);
      return { untagged: [byTag], deleted: [] };
    }
    const users = this.store.containers.countByImage(img.digest);
    if (users > 0) {
      throw new Conflict(`image ${ref} is used by ${users} container(s); remove them first`, { containers: users });
    }
    if (tags.length > 1 && !byTag && !force) {
      throw new Conflict(`image ${ref} is referenced by several tags (${tags.join(', ')}); use --force to remove them all`);
    }
    this.store.transaction(() => {
      for (const t of tags) {
        this.store.images.deleteTag(t);
        untagged.push(t);
      }
      this.store.images.delete(img.digest);
    });
    this.events.publish({ type: 'image', action: 'delete', id: img.digest, projectId: img.projectId });
    await this.collectGarbage();
    return { untagged, deleted: [img.digest] };
  }

  /** Remove dangling images (no tag, no container); with all, every image no container uses. */
  async prune(all: boolean): Promise<{ deleted: string[]; bytesFreed: number }> {
    const deleted: string[] = [];
    for (const img of this.store.images.list()) {
      const tagged = this.store.images.tags(img.digest).length > 0;
      if (this.store.containers.countByImage(img.digest) > 0) continue;
      if (tagged && !all) continue;
      this.store.transaction(() => {
        for (const t of this.store.images.tags(img.digest)) this.store.images.deleteTag(t.name);
        this.store.images.delete(img.digest);
      });
      deleted.push(img.digest);
      this.events.publish({ type: 'image', action: 'delete', id: img.digest, projectId: img.projectId });
    }
    const gc = await this.collectGarbage();
    return { deleted, bytesFreed: gc.bytesFreed };
  }

  collectGarbage() {
    const imgs = this.store.images.list();
    return this.agent.garbageCollect({
      manifestDigests: imgs.map((i) => i.digest),
      indexDigests: imgs.flatMap((i) => (i.indexDigest ? [i.indexDigest] : [])),
      chainIds: imgs.map((i) => i.chainId),
    });
  }
}
