/**
 * The little PKI of the agent protocol: a CA the control plane keeps, certificates it signs
 * for agents (server) and for itself (client), and the agent's key and CSR. node:crypto makes
 * keys and reads certificates but cannot make them, so certificates and CSRs come from the
 * `openssl` CLI (Debian's, always installed with Node's TLS stack); keys are P-256.
 * Keys and PEM texts pass through a 0700 temporary directory removed at once.
 */
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { InvalidArgument } from './errors.js';
import { runOk } from './exec.js';
import { processTempDirSync } from './temp-dirs.js';

export interface KeyAndCert {
  key: string;
  cert: string;
}

/** A certificate's purpose: agents serve, the control plane calls. One certificate never does both. */
export type CertUsage = 'server' | 'client';

const OPENSSL_TIMEOUT_MS = 30_000;

function newKey(): string {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** Files in a private temporary directory for the length of fn. */
async function withFiles<T>(files: Record<string, string>, fn: (p: (name: string) => string) => Promise<T>): Promise<T> {
  const dir = processTempDirSync('pki');
  try {
    for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text, { mode: 0o600 });
    return await fn((name) => path.join(dir, name));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const openssl = (args: string[]) => runOk('openssl', args, { timeoutMs: OPENSSL_TIMEOUT_MS });

/** "/CN=..." for openssl -subj: its separators escaped, control characters refused. */
function subject(cn: string): string {
  if (!cn || cn.length > 64 || /[\x00-\x1f\x7f]/.test(cn)) throw new InvalidArgument(`a certificate name must be 1-64 printable characters, got "${cn}"`);
  return `/CN=${cn.replace(/[\\/+=,]/g, (c) => `\\${c}`)}`;
}

/** A new self-signed CA (key and certificate) for signing agent and control-plane certificates. */
export async function makeCa(commonName: string, days = 3650): Promise<KeyAndCert> {
  const key = newKey();
  const cert = await withFiles({ 'ca.key': key }, (p) =>
    openssl([
      'req', '-x509', '-new', '-key', p('ca.key'), '-subj', subject(commonName), '-days', String(days), '-sha256',
      '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]),
  );
  return { key, cert };
}

/** A new key and a certificate signing request for it (what an agent sends with its join token). */
export async function makeKeyAndCsr(commonName: string): Promise<{ key: string; csr: string }> {
  const key = newKey();
  const csr = await withFiles({ 'k.key': key }, (p) => openssl(['req', '-new', '-key', p('k.key'), '-subj', subject(commonName), '-sha256']));
  return { key, csr };
}

/**
 * The CA's signature on a CSR. The CSR's own signature must hold (its sender has the key);
 * everything else in it is ignored: the subject is the name given here, and the extensions
 * are this module's (not a CA, one usage, a short validity).
 */
export async function signCsr(ca: KeyAndCert, csr: string, o: { commonName: string; usage: CertUsage; days?: number }): Promise<string> {
  if (!/^-----BEGIN CERTIFICATE REQUEST-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE REQUEST-----\s*$/.test(csr)) {
    throw new InvalidArgument('the certificate request must be one PEM CERTIFICATE REQUEST block');
  }
  const ext = [
    'basicConstraints=critical,CA:FALSE',
    // keyEncipherment means nothing to an EC key, but QEMU 10 (not 7.2) refuses a server certificate
    // whose critical keyUsage lacks it (crypto/tlscredsx509.c): a VM's migration over TLS
    'keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement',
    `extendedKeyUsage=${o.usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
  ].join('\n');
  return withFiles({ 'ca.key': ca.key, 'ca.pem': ca.cert, 'req.csr': csr, 'ext.cnf': ext }, async (p) => {
    try {
      await openssl(['req', '-in', p('req.csr'), '-verify', '-noout']);
    } catch {
      throw new InvalidArgument('the certificate request is malformed or its signature does not verify');
    }
    return openssl([
      'x509', '-req', '-in', p('req.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-set_serial', `0x${randomBytes(16).toString('hex')}`,
      '-days', String(o.days ?? 825), '-sha256', '-subj', subject(o.commonName), '-extfile', p('ext.cnf'),
    ]);
  });
}

/** A key and a certificate for it signed by the CA in one step (the control plane's own client certificate). */
export async function issueCertificate(ca: KeyAndCert, o: { commonName: string; usage: CertUsage; days?: number }): Promise<KeyAndCert> {
  const { key, csr } = await makeKeyAndCsr(o.commonName);
  return { key, cert: await signCsr(ca, csr, o) };
}

/** SHA-256 of a certificate's DER, lower-case hex without separators (what a join token pins). */
export function certFingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase();
}

/** Whether cert was signed by ca and is valid now. */
export function issuedBy(cert: string, ca: string, now = new Date()): boolean {
  try {
    const c = new X509Certificate(cert);
    const issuer = new X509Certificate(ca);
    return c.checkIssued(issuer) && c.verify(issuer.publicKey) && new Date(c.validFrom) <= now && now < new Date(c.validTo);
  } catch {
    return false;
  }
}

/** The subject CN of a certificate (undefined when it has none or is not one). */
export function certCommonName(pem: string): string | undefined {
  try {
    return /(?:^|\n)CN=([^\n]*)/.exec(new X509Certificate(pem).subject)?.[1];
  } catch {
    return undefined;
  }
}
