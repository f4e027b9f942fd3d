/** Documented bounds on request values, shared by the API schemas and the services that enforce them. */

/** The longest graceful stop (stop/restart `timeout`, a container's `stopTimeout`), in seconds. */
export const MAX_STOP_TIMEOUT_SEC = 3600;

/*
 * Bounds of request fields the API checks (docs/api-input.md lists them all, with the defaults
 * src/api/validate.ts applies to every string, list and map a schema leaves unbounded).
 */
/** A container's memory limit: runc refuses less than 6 MiB; more than 1 TiB is a typo, not a plan. */
export const MIN_MEMORY_BYTES = 6 * 1024 * 1024;
export const MAX_MEMORY_BYTES = 1024 ** 4;
/** A container's writable layer of its own size (a filesystem of its own): ext4's journal and metadata need 16 MiB; ext4 holds 16 TiB. */
export const MIN_STORAGE_BYTES = 16 * 1024 * 1024;
export const MAX_STORAGE_BYTES = 16 * 1024 ** 4;
/** The kernel's PID_MAX_LIMIT: no pids.max above it means anything. */
export const MAX_PIDS_LIMIT = 4_194_304;
/** A restart policy's retries. */
export const MAX_RESTART_RETRIES = 10_000;
/** uid/gid: 2^31-1, as Kubernetes' runAsUser; 4294967295 is (uid_t)-1, "no change", never a user. */
export const MAX_UID = 2 ** 31 - 1;
/** One argument or environment entry: the kernel's MAX_ARG_STRLEN (131072 bytes with the NUL) in UTF-16 units. */
export const MAX_ARG_LENGTH = 131_071;
/** argv and environment of one process together (the kernel's ARG_MAX is 2 MiB with an 8 MiB stack; the image adds its own). */
export const MAX_ARGV_ENV_TOTAL = 1024 * 1024;
/** Quota figures (instances, cpus, MiB, networks, volumes): whole numbers up to 2^40, so sums stay exact. */
export const MAX_QUOTA_VALUE = 2 ** 40;
/** Node timers fire at once past 2^31-1 ms, so no period the daemon waits out may be longer. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
