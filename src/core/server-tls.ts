/**
 * The certificate an API listener on TCP serves HTTPS with (nimbusd --tls-cert / --tls-key):
 * PEM files an administrator gives (their own CA's, a public CA's, or one `openssl req` made),
 * read once at the start and checked to belong together, so a wrong pair fails the start with
 * its reason instead of every client's handshake.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { InvalidArgument } from './errors.js';

export interface ServerTls {
  cert: Buffer;
  key: Buffer;
}

/** The certificate and its key are given together or not at all: one alone is InvalidArgument. */
export function checkTlsPair(certFile: string | undefined, keyFile: string | undefined): void {
  if (!certFile !== !keyFile) throw new InvalidArgument('--tls-cert and --tls-key go together: give the certificate (PEM, its chain after it) and its private key');
}

/** Both files or neither (plain HTTP); one alone, an unreadable file or a key of another certificate is InvalidArgument. */
export function loadServerTls(certFile: string | undefined, keyFile: string | undefined): ServerTls | undefined {
  checkTlsPair(certFile, keyFile);
  if (!certFile || !keyFile) return undefined;
  const read = (file: string, what: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (e) {
      throw new InvalidArgument(`cannot read the TLS ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  };
  const tls = { cert: read(certFile, 'certificate'), key: read(keyFile, 'key') };
  try {
    createSecureContext(tls);
  } catch (e) {
    throw new InvalidArgument(`the TLS certificate ${certFile} and key ${keyFile} cannot serve: ${(e as Error).message}`);
  }
  return tls;
}
