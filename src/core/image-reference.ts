/** Image references, normalised as Docker does (docker.io, library/, :latest). */
import { InvalidArgument } from './errors.js';

export const DEFAULT_REGISTRY = 'docker.io';

export interface ImageReference {
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
  /** Fully qualified: registry/repository[:tag][@digest]. */
  toString(): string;
  /** Short form for display: docker.io/library/ dropped. */
  familiar(): string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** "sha256:<64 lowercase hex>", the only digest accepted anywhere (a digest becomes a blob's path). */
export function isDigest(d: unknown): d is string {
  return typeof d === 'string' && DIGEST.test(d);
}
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$/;

export function parseReference(input: string): ImageReference {
  const bad = (why: string) => new InvalidArgument(`invalid image reference "${input}": ${why}`);
  if (!input || input.length > 512) throw bad('empty or too long');
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('digest must be sha256:<64 lowercase hex>');
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(`invalid tag "${tag}"`);
  }
  const parts = rest.split('/');
  let registry = DEFAULT_REGISTRY;
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    if (!HOST.test(first)) throw bad(`invalid registry host "${first}"`);
    registry = first;
    parts.shift();
  }
  if (registry === 'index.docker.io') registry = DEFAULT_REGISTRY;
  if (registry === DEFAULT_REGISTRY && parts.length === 1) parts.unshift('library');
  for (const p of parts) if (!COMPONENT.test(p)) throw bad(`invalid repository component "${p}" (lowercase letters, digits, separators)`);
  const repository = parts.join('/');
  if (!tag && !digest) tag = 'latest';
  const full = `${registry}/${repository}${tag ? `:${tag}` : ''}${digest ? `@${digest}` : ''}`;
  return {
    registry,
    repository,
    ...(tag ? { tag } : {}),
    ...(digest ? { digest } : {}),
    toString: () => full,
    familiar: () => (registry === DEFAULT_REGISTRY ? full.slice(DEFAULT_REGISTRY.length + 1).replace(/^library\//, '') : full),
  };
}

