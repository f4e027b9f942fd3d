/**
 * The control plane's agent CA: made on first start and kept in its home (DIR/ca.key 0600,
 * DIR/ca.pem), it signs every TCP agent's server certificate (through a join token) and the
 * control plane's own client certificate (DIR/control-plane.{key,pem}), with which it calls
 * agents. Control-plane processes sharing a store must share this directory too: the first
 * one records the CA's fingerprint in the store, and a process with another CA refuses to start
 * (it could not reach the hosts that joined the first one, nor they it).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { X509Certificate, randomBytes } from 'node:crypto';
import { logger } from '../../core/log.js';
import { certCommonName, certFingerprint, issueCertificate, issuedBy, makeCa, signCsr, type KeyAndCert } from '../../core/pki.js';
import { CONTROL_PLANE_CERT_NAME, MIGRATION_CERT_PREFIX } from '../../agent/remote/agent-protocol.js';
import type { RemoteAgentTls } from '../../agent/remote/remote-agent.js';
import type { MigrationTls } from '../../agent/drivers/vm/migration-tls.js';
import type { Store } from '../../store/store.js';
import { Conflict } from '../../core/errors.js';

/** The settings key under which the store keeps the agent CA's fingerprint. */
export const AGENT_CA_FINGERPRINT = 'agent-ca-fingerprint';

const log = logger('agent-ca');

/** Agent certificates last this long; an agent whose certificate is near its end joins again. */
export const AGENT_CERT_DAYS = 825;
/** The control plane's client certificate is made again when it has less than this left. */
const RENEW_BEFORE_MS = 30 * 24 * 3600_000;

/** Written whole or not at all (a crash mid-write leaves the old file or none). */
function writeSecretFile(file: string, text: string, mode: number): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, file);
}

function read(file: string): string | undefined {
  return existsSync(file) ? readFileSync(file, 'utf8') : undefined;
}

function usableUntilAfter(cert: string, ms: number): boolean {
  return Date.now() + ms < new Date(new X509Certificate(cert).validTo).getTime();
}

export class AgentCa {
  private constructor(
    private readonly ca: KeyAndCert,
    /** The control plane's client certificate (for RemoteAgent). */
    readonly client: KeyAndCert,
  ) {}

  /**
   * The CA in dir, made there first if there is none. With a store: the CA every control-plane
   * process on that store uses (the first to open decides); another one is a Conflict that says
   * which directory to copy.
   */
  static async open(dir: string, store?: Store): Promise<AgentCa> {
    const ca = await AgentCa.openDir(dir);
    if (store) {
      const agreed = await store.settings.claim(AGENT_CA_FINGERPRINT, ca.fingerprint);
      if (agreed !== ca.fingerprint) {
        throw new Conflict(
          `the agent CA in ${dir} (fingerprint ${ca.fingerprint}) is not the one the control plane on this store uses (${agreed}): ` +
            'hosts joined with that one would refuse this process. Copy HOME/agent-ca from a replica already running on this store (all of it, ca.key included) and start again',
          { fingerprint: ca.fingerprint, expected: agreed },
        );
      }
    }
    return ca;
  }

  private static async openDir(dir: string): Promise<AgentCa> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    const files = { caKey: path.join(dir, 'ca.key'), caCert: path.join(dir, 'ca.pem'), key: path.join(dir, 'control-plane.key'), cert: path.join(dir, 'control-plane.pem') };
    let key = read(files.caKey);
    let cert = read(files.caCert);
    if (!key || !cert) {
      // the certificate is written last: a key without one is a creation that did not finish
      ({ key, cert } = await makeCa(`Nimbus agent CA ${new Date().toISOString().slice(0, 10)}`));
      writeSecretFile(files.caKey, key, 0o600);
      writeSecretFile(files.caCert, cert, 0o644);
      log.info('agent CA created', { dir, fingerprint: certFingerprint(cert) });
    }
    chmodSync(files.caKey, 0o600);
    const ca = { key, cert };
    let client: KeyAndCert | undefined;
    const ck = read(files.key);
    const cc = read(files.cert);
    if (ck && cc && issuedBy(cc, cert) && certCommonName(cc) === CONTROL_PLANE_CERT_NAME && usableUntilAfter(cc, RENEW_BEFORE_MS)) client = { key: ck, cert: cc };
    else {
      client = await issueCertificate(ca, { commonName: CONTROL_PLANE_CERT_NAME, usage: 'client' });
      writeSecretFile(files.key, client.key, 0o600);
      writeSecretFile(files.cert, client.cert, 0o644);
    }
    return new AgentCa(ca, client);
  }

  get certificate(): string {
    return this.ca.cert;
  }

  /** What join tokens pin. */
  get fingerprint(): string {
    return certFingerprint(this.ca.cert);
  }

  /** How RemoteAgent reaches TCP agents. */
  get clientTls(): RemoteAgentTls {
    return { ca: this.ca.cert, cert: this.client.cert, key: this.client.key };
  }

  /**
   * The embedded agent's certificate: it serves nobody over the agent protocol, but its live
   * migrations to and from joined agents go over TLS like theirs (docs/security.md). Made at each
   * start and kept in memory only (QEMU gets the files only while it loads them).
   */
  async embeddedAgentTls(name: string): Promise<MigrationTls> {
    const { key, cert } = await issueCertificate(this.ca, { commonName: name, usage: 'server', days: AGENT_CERT_DAYS });
    return { name, key, cert, ca: this.ca.cert };
  }

  /**
   * A certificate for one live migration, for the agent of this name: a key of its own, a day's
   * validity, named `migration.NAME.NONCE` (MIGRATION_CERT_PREFIX), so that the QEMU that holds it
   * during the move holds neither the agent's own key nor a name the control plane takes for the
   * agent's. The nonce makes the name this move's alone: the destination takes exactly it and the
   * source checks exactly the destination's, so a certificate taken from a QEMU (a guest that
   * escaped into it) is worth nothing to any later move, though it is valid for the rest of its day.
   */
  async migrationCredentials(name: string): Promise<MigrationTls> {
    const commonName = `${MIGRATION_CERT_PREFIX}${name}.${randomBytes(6).toString('hex')}`;
    const { key, cert } = await issueCertificate(this.ca, { commonName, usage: 'server', days: 1 });
    return { name: commonName, key, cert, ca: this.ca.cert };
  }

  /** A server certificate for the agent of this name (the CSR proves its key; its subject is ignored). */
  signAgent(csr: string, name: string): Promise<string> {
    return signCsr(this.ca, csr, { commonName: name, usage: 'server', days: AGENT_CERT_DAYS });
  }
}
