/**
 * A secure container's guest memory: what its microVM is given, and so what the control plane
 * charges it (a microVM's memory is spent whether or not the request named a size).
 */
const MiB = 1024 * 1024;
/** The guest memory of a secure container created without a size. */
export const SECURE_DEFAULT_MEMORY_MIB = 256;
/** Less cannot boot the guest kernel with its agent. */
export const SECURE_MIN_MEMORY_MIB = 128;

/** The guest's memory in whole MiB for a request's size (bytes; undefined: the default). */
export function secureGuestMemoryMiB(askedBytes: number | undefined, defaultMiB = SECURE_DEFAULT_MEMORY_MIB): number {
  return Math.max(SECURE_MIN_MEMORY_MIB, Math.ceil((askedBytes ?? defaultMiB * MiB) / MiB));
}
