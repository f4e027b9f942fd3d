/**
 * The fixed set of typed errors every layer throws. The API edge maps them to
 * HTTP exactly once (see src/core/http-status.ts, shared by the API and the agent protocol); nothing else picks status codes.
 */
export const ERROR_CODES = [
  'InvalidArgument',
  'NotFound',
  'AlreadyExists',
  'Conflict',
  'QuotaExceeded',
  'PayloadTooLarge',
  'HeadersTooLarge',
  'ResourceExhausted',
  'Unauthenticated',
  'PermissionDenied',
  'Unavailable',
  'Unreachable',
  'DataLoss',
  'Internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export class NimbusError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = `${code}Error`;
    this.code = code;
    this.details = details;
  }
}

const make = (code: ErrorCode) =>
  class extends NimbusError {
    constructor(message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
      super(code, message, details, options);
    }
  };

export const InvalidArgument = make('InvalidArgument');
/** Something the request named (an agent's URL) did not answer: not this service's own unavailability. */
export const Unreachable = make('Unreachable');
export const NotFound = make('NotFound');
export const AlreadyExists = make('AlreadyExists');
export const Conflict = make('Conflict');
export const QuotaExceeded = make('QuotaExceeded');
/** A request body over the route's limit: 413. */
export const PayloadTooLarge = make('PayloadTooLarge');
/** A request line, query or header section over the edge's limit: 431. */
export const HeadersTooLarge = make('HeadersTooLarge');
/** The host ran out of something no quota covers (disk space for images): 507. */
export const ResourceExhausted = make('ResourceExhausted');
export const Unauthenticated = make('Unauthenticated');
export const PermissionDenied = make('PermissionDenied');
export const Unavailable = make('Unavailable');
export const DataLoss = make('DataLoss');
export const Internal = make('Internal');

export function isNimbusError(e: unknown): e is NimbusError {
  return e instanceof NimbusError;
}

export function hasCode(e: unknown, code: ErrorCode): boolean {
  return isNimbusError(e) && e.code === code;
}

/** Normalise anything thrown into a NimbusError without losing the cause. */
export function toNimbusError(e: unknown): NimbusError {
  if (e instanceof NimbusError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new NimbusError('Internal', message, undefined, { cause: e });
}
