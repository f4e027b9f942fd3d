/**
 * `docker save` and `docker load` in the request's project.
 *
 * save writes what Docker 25 writes: an OCI image layout (oci-layout, index.json naming each
 * image with io.containerd.image.name and org.opencontainers.image.ref.name, blobs/sha256/…)
 * and, beside it, the manifest.json older clients' `docker load` reads (its Config and Layers
 * point into the same blobs, so nothing is stored twice). Layers stay as the registry served
 * them (compressed): `docker load` decompresses them. The blobs come from the embedded agent,
 * which holds every image the store knows.
 *
 * load hands the archive to the image service's import (the same checks as `nimbus image
 * import`: digests verified, layers unpacked by the hardened unpacker) and answers Docker's
 * `Loaded image: NAME` lines.
 */
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { Conflict, InvalidArgument } from '../../core/errors.js';
import { withSpooledBody } from '../spooled-body.js';
import type { ImageRecord } from '../../store/records.js';
import { HANDLED, type DockerContext, type DockerRoute } from './server.js';
import { inDockerWords, noSuchImage } from './errors.js';
import { familiarName } from './mapping.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const blobPath = (digest: string) => `blobs/${digest.replace(':', '/')}`;

interface Saved { image: ImageRecord; names: string[] }

/** The tar's members in order: the blobs (each once), then the documents that name them. */
export function archiveDocuments(saved: readonly Saved[]): { blobs: string[]; files: Array<{ name: string; body: string }> } {
  const blobs: string[] = [];
  const seen = new Set<string>();
  const add = (d: string) => {
    if (!seen.has(d)) {
      seen.add(d);
      blobs.push(d);
    }
  };
  const manifests: Array<Record<string, unknown>> = [];
  const dockerManifest: Array<Record<string, unknown>> = [];
  for (const { image, names } of saved) {
    add(image.digest);
    add(image.configDigest);
    for (const l of image.layers) add(l.digest);
    const entry = (name?: string) => ({
      mediaType: OCI_MANIFEST, digest: image.digest, size: -1, // the manifest's size: filled in by the writer from the blob
      ...(name ? { annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.slice(name.lastIndexOf(':') + 1) } } : {}),
    });
    if (names.length) for (const n of names) manifests.push(entry(n));
    else manifests.push(entry());
    dockerManifest.push({ Config: blobPath(image.configDigest), RepoTags: names.length ? names.map(familiarName) : null, Layers: image.layers.map((l) => blobPath(l.digest)) });
  }
  return {
    blobs,
    files: [
      { name: 'oci-layout', body: JSON.stringify({ imageLayoutVersion: '1.0.0' }) },
      { name: 'index.json', body: JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }) },
      { name: 'manifest.json', body: JSON.stringify(dockerManifest) },
    ],
  };
}

/** GET /images/get?names=… and GET /images/{name}/get: the archive, streamed. */
async function save(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, project } = ctx;
  const refs = ctx.params[0] !== undefined ? [ctx.params[0]] : ctx.query.getAll('names');
  if (!refs.length) throw new InvalidArgument('no image named: docker save IMAGE [IMAGE...]');
  // the embedded agent holds every image the store knows; a control plane without one has no blobs to read
  if (services.hosts.localName === undefined) throw new Conflict('this control plane runs no embedded agent (--no-agent): push the image to a registry instead');
  const saved = new Map<string, Saved>();
  for (const ref of refs) {
    const image = await inDockerWords(services.images.resolve(ref, { projectId: project }), () => noSuchImage(ref));
    const entry = saved.get(image.digest) ?? { image, names: [] };
    // a name (not a digest or an id) is kept as the tag the archive carries
    if (!/^(sha256:)?[0-9a-f]{12,64}$/.test(ref) && !ref.includes('@')) entry.names.push(services.images.normalize(ref));
    saved.set(image.digest, entry);
  }
  const { blobs, files } = archiveDocuments([...saved.values()]);
  const agent = services.agent;
  const sizes = new Map<string, number>();
  const pack = tar.pack();
  ctx.res.writeHead(200, { 'content-type': 'application/x-tar' });
  const sent = pipeline(pack, ctx.res);
  const put = (name: string, size: number, fill: (entry: NodeJS.WritableStream) => Promise<void>) => new Promise<void>((resolve, reject) => {
    const entry = pack.entry({ name, size, mode: 0o644, mtime: new Date(0) }, (e) => (e ? reject(e) : resolve()));
    fill(entry).catch(reject);
  });
  try {
    for (const digest of blobs) {
      const blob = await agent.readBlob(digest);
      sizes.set(digest, blob.size);
      await put(blobPath(digest), blob.size, (entry) => pipeline(blob.bytes, entry));
    }
    for (const f of files) {
      // the index's manifest sizes, now that the blobs said theirs
      const body = f.name === 'index.json' ? f.body.replace(/"digest":"(sha256:[0-9a-f]{64})","size":-1/g, (_, d: string) => `"digest":"${d}","size":${sizes.get(d)}`) : f.body;
      await put(f.name, Buffer.byteLength(body), async (entry) => { entry.end(body); });
    }
    pack.finalize();
    await sent;
  } catch (e) {
    // the 200 is out: cut the stream so the client sees a broken archive, not a short one
    pack.destroy(e as Error);
    ctx.res.destroy();
  }
  return HANDLED;
}

/** POST /images/load: the archive in the body. */
async function load(ctx: DockerContext): Promise<typeof HANDLED> {
  const { services, project } = ctx;
  const loaded = await withSpooledBody(ctx.req, services.options.tmpDir, 'docker-load', '.tar', (file) => services.images.importArchive(file, project));
  ctx.res.writeHead(200, { 'content-type': 'application/json' });
  for (const { name, image } of loaded) {
    const line = name ? `Loaded image: ${familiarName(name)}\n` : `Loaded image ID: ${image.configDigest}\n`;
    ctx.res.write(`${JSON.stringify({ stream: line })}\n`);
  }
  ctx.res.end();
  return HANDLED;
}

export const archiveRoutes: DockerRoute[] = [
  { method: 'GET', pattern: /^\/images\/get$/, name: 'image save', access: 'reader', handler: save },
  { method: 'GET', pattern: /^\/images\/(.+)\/get$/, name: 'image save', access: 'reader', handler: save },
  { method: 'POST', pattern: /^\/images\/load$/, name: 'image load', access: 'member', handler: load },
];
