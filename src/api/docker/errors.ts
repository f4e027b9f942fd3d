/**
 * Errors as the docker CLI expects them: `{"message": "..."}` with Docker's status codes
 * (404 makes `docker run` pull and retry, 409 is a conflict, 400 a bad parameter).
 */
import { messageFor, NotFound, toNimbusError, type NimbusError } from '../../core/errors.js';
import { HTTP_STATUS } from '../../core/http-status.js';

export interface DockerErrorBody {
  message: string;
}

/** Docker's status for a typed error: Nimbus's table, except where the CLI expects another. */
export function dockerStatus(err: NimbusError): number {
  // dockerd answers an exhausted quota or a full pool with a plain server error; 429 would make clients retry
  if (err.code === 'QuotaExceeded') return 403;
  return HTTP_STATUS[err.code];
}

/** The error as Docker's body; what only a system administrator may read (an agent's address) for `admin` callers alone. */
export function dockerError(e: unknown, admin = false): { status: number; body: DockerErrorBody } {
  const err = toNimbusError(e);
  return { status: dockerStatus(err), body: { message: messageFor(err, admin) } };
}

/** The not-found errors in Docker's words (the CLI and scripts match on them). */
export const noSuchContainer = (ref: string) => new NotFound(`No such container: ${ref}`);
export const noSuchImage = (ref: string) => new NotFound(`No such image: ${ref}`);
export const noSuchNetwork = (ref: string) => new NotFound(`network ${ref} not found`);

/** Rewrites a NotFound into Docker's words; other errors pass unchanged. */
export async function inDockerWords<T>(p: Promise<T>, notFound: () => Error): Promise<T> {
  try {
    return await p;
  } catch (e) {
    if (toNimbusError(e).code === 'NotFound') throw notFound();
    throw e;
  }
}
