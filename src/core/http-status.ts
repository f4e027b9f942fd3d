import type { ErrorCode } from './errors.js';

/** The one place typed errors become HTTP statuses (Incus SmartError): the API's and the agent protocol's. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  InvalidArgument: 400,
  Unauthenticated: 401,
  PermissionDenied: 403,
  NotFound: 404,
  AlreadyExists: 409,
  Conflict: 409,
  QuotaExceeded: 429,
  TooManyRequests: 429,
  PayloadTooLarge: 413,
  HeadersTooLarge: 431,
  ResourceExhausted: 507,
  Internal: 500,
  DataLoss: 500,
  Unavailable: 503,
  Unreachable: 502,
};

export function codeForStatus(status: number): ErrorCode {
  const found = (Object.entries(HTTP_STATUS) as [ErrorCode, number][]).find(([, s]) => s === status);
  return found ? found[0] : status >= 500 ? 'Internal' : 'InvalidArgument';
}
