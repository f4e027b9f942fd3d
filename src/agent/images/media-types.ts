/** OCI image-spec and Docker schema2 media types and document shapes. */
export const MT = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNondistributableZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerZstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** Accept header for manifest GET/HEAD: both index kinds and both manifest kinds (never schema 1). */
export const MANIFEST_ACCEPT = [MT.ociIndex, MT.ociManifest, MT.dockerList, MT.dockerManifest].join(', ');

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
  urls?: string[];
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** The runtime part of an image config (OCI image-spec config.md; Docker uses the same keys). */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, object>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, object>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  [key: string]: unknown;
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  created?: string;
  author?: string;
  config?: ContainerConfig;
  rootfs?: { type: string; diff_ids: string[] };
  history?: { created?: string; created_by?: string; comment?: string; empty_layer?: boolean }[];
  [key: string]: unknown;
}

export function isIndex(mediaType: string | undefined, doc: unknown): boolean {
  return mediaType === MT.ociIndex || mediaType === MT.dockerList || (typeof doc === 'object' && doc !== null && 'manifests' in doc);
}

export function isSchema1(mediaType: string | undefined, doc: unknown): boolean {
  return (
    mediaType === MT.dockerSchema1 ||
    mediaType === MT.dockerSchema1Signed ||
    (typeof doc === 'object' && doc !== null && (doc as { schemaVersion?: unknown }).schemaVersion === 1)
  );
}

export type LayerCompression = 'none' | 'gzip' | 'zstd';

const COMPRESSION: Record<string, LayerCompression> = {
  [MT.ociLayer]: 'none',
  [MT.ociLayerGzip]: 'gzip',
  [MT.ociLayerZstd]: 'zstd',
  [MT.ociLayerNondistributable]: 'none',
  [MT.ociLayerNondistributableGzip]: 'gzip',
  [MT.ociLayerNondistributableZstd]: 'zstd',
  [MT.dockerLayer]: 'none',
  [MT.dockerLayerGzip]: 'gzip',
  [MT.dockerLayerZstd]: 'zstd',
  [MT.dockerForeignLayerGzip]: 'gzip',
};

/** Every layer media type a pull accepts. */
export const LAYER_TYPES = new Set<string>(Object.keys(COMPRESSION));

/** How a layer blob is compressed, from its media type; undefined when the type is not a layer we know. */
export function layerCompression(mediaType: string): LayerCompression | undefined {
  return COMPRESSION[mediaType];
}

/** Sniff compression from a blob's first bytes (for archives whose layers carry no media type). */
export function sniffCompression(head: Uint8Array): LayerCompression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/** OCI layer media type for a compression. */
export function ociLayerType(c: LayerCompression): string {
  return c === 'gzip' ? MT.ociLayerGzip : c === 'zstd' ? MT.ociLayerZstd : MT.ociLayer;
}

export function platformString(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** Does an index entry's platform satisfy the wanted one (variant only compared when asked for)? */
export function platformMatches(have: Platform | undefined, want: { os: string; architecture: string; variant?: string }): boolean {
  if (!have) return false;
  if (have.os !== want.os || have.architecture !== want.architecture) return false;
  return want.variant === undefined || have.variant === undefined || have.variant === want.variant;
}
