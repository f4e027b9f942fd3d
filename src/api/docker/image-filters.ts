/**
 * `docker images --filter` and `docker image prune --filter` as dockerd 20.10 reads them
 * (daemon/images/images.go, image_prune.go): dangling, label, reference (Go's path.Match over
 * the familiar name, as reference.FamiliarMatch), before and since (the named image's creation
 * time, strictly). Pure functions (tested in image-filters.test.ts); an unknown filter is a 400
 * naming it, never a listing or a prune of more than was asked.
 */
import { InvalidArgument } from '../../core/errors.js';
import type { ImageConfigDoc } from '../../store/records.js';
import { familiarName } from './mapping.js';

/** What `docker images` takes (dockerd's acceptedImageFilterTags). */
export const IMAGE_LIST_FILTERS = ['dangling', 'label', 'before', 'since', 'reference'] as const;
/** What `docker image prune` takes (dockerd's acceptedImagesFilterTags). */
export const IMAGE_PRUNE_FILTERS = ['dangling', 'label', 'label!', 'until'] as const;

const MAX_PATTERN = 256;

/** Go's path.Match pattern as a regular expression over a whole name: `*`, `?` (never `/`), `[…]` classes, `\` escapes. */
export function compileGlob(pattern: string): RegExp {
  if (pattern.length > MAX_PATTERN) throw new InvalidArgument(`reference filter longer than ${MAX_PATTERN} characters`);
  const bad = () => new InvalidArgument(`syntax error in pattern: ${pattern}`);
  const lit = (c: string) => `\\u{${c.codePointAt(0)!.toString(16)}}`;
  const chars = [...pattern];
  let re = '';
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\') {
      if (++i >= chars.length) throw bad();
      re += lit(chars[i]!);
    } else if (c === '[') {
      let negate = false;
      if (chars[i + 1] === '^') {
        negate = true;
        i++;
      }
      // one character of a class: escaped, or anything but an unescaped - or ] (Go's getEsc)
      const one = (): string => {
        let ch = chars[++i];
        if (ch === undefined || ch === '-' || ch === ']') throw bad();
        if (ch === '\\') {
          ch = chars[++i];
          if (ch === undefined) throw bad();
        }
        return ch;
      };
      const ranges: string[] = [];
      for (;;) {
        if (chars[i + 1] === ']' && ranges.length > 0) {
          i++;
          break;
        }
        const lo = one();
        let hi = lo;
        if (chars[i + 1] === '-') {
          i++;
          hi = one();
        }
        // a range upside down matches nothing, as in Go (a JavaScript class would not compile)
        ranges.push(lo.codePointAt(0)! <= hi.codePointAt(0)! ? `${lit(lo)}-${lit(hi)}` : '');
        if (i + 1 >= chars.length) throw bad();
      }
      const body = ranges.join('');
      re += negate ? (body ? `[^${body}]` : '[\\s\\S]') : body ? `[${body}]` : '[^\\s\\S]';
    } else re += lit(c);
  }
  return new RegExp(`^${re}$`, 'u');
}

/** The tags (full names) a reference filter names: its glob over the familiar string (busybox:latest) or the familiar name (busybox). */
export function tagsMatching(tags: readonly string[], references: readonly string[]): string[] {
  const patterns = references.map(compileGlob);
  return tags.filter((t) => {
    const familiar = familiarName(t);
    const name = familiar.replace(/:[^:/]+$/, '');
    return patterns.some((p) => p.test(familiar) || p.test(name));
  });
}

export interface FilterableImage {
  tags: readonly string[];
  config: Pick<ImageConfigDoc, 'created' | 'config'>;
  createdAt: string;
}

/** When an image was made, as dockerd compares them: its config's `created`, else when Nimbus recorded it (epoch ms). */
export function imageCreated(img: Pick<FilterableImage, 'config' | 'createdAt'>): number {
  const t = Date.parse(img.config.created ?? '');
  return Number.isFinite(t) ? t : Date.parse(img.createdAt);
}

/** Unknown filters refused by name (dockerd's words); dangling must say true or false. */
export function checkImageFilters(filters: Map<string, string[]>, accepted: readonly string[]): void {
  for (const k of filters.keys()) if (!accepted.includes(k)) throw new InvalidArgument(`invalid filter '${k}'`);
  const dangling = filters.get('dangling') ?? [];
  for (const v of dangling) if (!['true', 'false', '1', '0'].includes(v)) throw new InvalidArgument(`invalid filter 'dangling=${v}'`);
}

/** dangling=true: untagged only; dangling=false: tagged only; absent: either. */
export function danglingWanted(filters: Map<string, string[]>): boolean | undefined {
  const values = filters.get('dangling') ?? [];
  if (!values.length) return undefined;
  return values.some((v) => v === 'true' || v === '1');
}

/** label=k (present) and label=k=v (equal): every one must hold. */
export function labelsMatch(labels: Record<string, string>, wanted: readonly string[]): boolean {
  return wanted.every((l) => {
    const eq = l.indexOf('=');
    return eq < 0 ? Object.hasOwn(labels, l) : labels[l.slice(0, eq)] === l.slice(eq + 1);
  });
}

/**
 * Whether an image passes `docker images`' filters (checked with checkImageFilters first).
 * `bounds` are the creation times of the images before= and since= name.
 */
export function matchesImageFilters(img: FilterableImage, filters: Map<string, string[]>, bounds: { before?: number; since?: number } = {}): boolean {
  checkImageFilters(filters, IMAGE_LIST_FILTERS);
  const dangling = danglingWanted(filters);
  if (dangling !== undefined && (img.tags.length === 0) !== dangling) return false;
  const refs = filters.get('reference') ?? [];
  if (refs.length && tagsMatching(img.tags, refs).length === 0) return false;
  if (!labelsMatch(img.config.config?.Labels ?? {}, filters.get('label') ?? [])) return false;
  const created = imageCreated(img);
  if (bounds.before !== undefined && created >= bounds.before) return false;
  if (bounds.since !== undefined && created <= bounds.since) return false;
  return true;
}
