import { redactHostPaths, systemErrorWithoutHostNames } from './redaction.js';

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
  'TooManyRequests',
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

export interface NimbusErrorOptions {
  cause?: unknown;
  /**
   * The message as system administrators and the log see it, where it says more than any caller
   * may be told (an agent's address): `message` is then the words without it.
   */
  adminMessage?: string;
}

export class NimbusError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  /** Private, so no JSON.stringify or spread of the error carries it to a tenant. */
  readonly #adminMessage: string | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: NimbusErrorOptions) {
    super(message, options && 'cause' in options ? { cause: options.cause } : undefined);
    this.name = `${code}Error`;
    this.code = code;
    this.details = details;
    this.#adminMessage = options?.adminMessage;
  }

  /** The message with what only administrators and the log may see (see NimbusErrorOptions); undefined when there is none. */
  get adminMessage(): string | undefined {
    return this.#adminMessage;
  }
}

/** The options that keep `whole` for administrators and the log when `message` (what anyone reads) leaves some of it out. */
export function wholeForAdmins(message: string, whole: string): NimbusErrorOptions {
  return message === whole ? {} : { adminMessage: whole };
}

const make = (code: ErrorCode) =>
  class extends NimbusError {
    constructor(message: string, details?: Record<string, unknown>, options?: NimbusErrorOptions) {
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
/** Too many failed attempts from one source (a login, an agent's registration): details.retryAfterSeconds says when to try again. */
export const TooManyRequests = make('TooManyRequests');
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

/**
 * Normalise anything thrown into a NimbusError without losing the cause. What was not thrown as
 * one (Node's ENOENT naming '/var/lib/nimbus/…', a connection refused at an address) was written
 * for no caller: its message without the host paths and address it names, the whole as adminMessage.
 */
export function toNimbusError(e: unknown): NimbusError {
  if (e instanceof NimbusError) return e;
  const whole = e instanceof Error ? e.message : String(e);
  const message = e instanceof Error ? systemErrorWithoutHostNames(e) : redactHostPaths(whole);
  return new NimbusError('Internal', message, undefined, { cause: e, ...wholeForAdmins(message, whole) });
}

/**
 * What a caller is told of an error: a system administrator the whole of it (an agent's address
 * included), anyone else `message`, which never carries what only administrators may see; and,
 * as a net under a message that does all the same, no path under this host's roots (redaction.ts).
 */
export function messageFor(e: unknown, admin: boolean): string {
  const err = toNimbusError(e);
  return admin ? (err.adminMessage ?? err.message) : redactHostPaths(err.message);
}

/**
 * An error as String(e) shows it (`ConflictError: …`), in the words anyone may read: for what
 * members read where no caller is at hand (an event's attributes, a record).
 */
export function textForAnyone(e: unknown): string {
  const err = toNimbusError(e);
  return `${err.name}: ${messageFor(err, false)}`;
}

/** The error's words for the log: everything (the log is the operator's). */
export const logMessage = (e: unknown): string => messageFor(e, true);
