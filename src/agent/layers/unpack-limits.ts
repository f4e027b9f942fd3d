/**
 * How much an image may unpack to: a layer's regular files together (DEFAULT_LAYER_MAX_BYTES), an
 * image's layers together (DEFAULT_IMAGE_MAX_BYTES), and a layer's entry count. A few KB of gzip
 * can expand to gigabytes; the per-entry limit alone lets a layer of many files fill the disk.
 * The daemon's options (NIMBUS_LAYER_MAX_BYTES, NIMBUS_IMAGE_MAX_BYTES) override the byte limits.
 */
import { InvalidArgument } from '../../core/errors.js';

export const DEFAULT_LAYER_MAX_BYTES = 16 * 1024 ** 3;
export const DEFAULT_IMAGE_MAX_BYTES = 64 * 1024 ** 3;
export const DEFAULT_LAYER_MAX_ENTRIES = 1_000_000;

/** "16 GiB", "3 MiB" or "1234 bytes": limits are named in errors the way they are configured. */
export function formatBytes(n: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  }
  return `${n} bytes`;
}

/** File bytes unpacked for one image (one per pull or import), shared by its layers as they unpack. */
export class ImageBudget {
  private used = 0;
  constructor(readonly limit: number = DEFAULT_IMAGE_MAX_BYTES) {
    if (!Number.isSafeInteger(limit) || limit <= 0) throw new InvalidArgument(`image unpack limit must be a positive integer, got ${limit}`);
  }

  get bytes(): number {
    return this.used;
  }

  /** Count n more bytes of `layer`; InvalidArgument naming the layer and the limit once past it. */
  take(n: number, layer: string): void {
    this.used += n;
    if (this.used > this.limit) {
      throw new InvalidArgument(`layer ${layer}: the image unpacks to more than the per-image limit of ${formatBytes(this.limit)}`, {
        layer,
        limitBytes: this.limit,
        limit: 'image',
      });
    }
  }
}
