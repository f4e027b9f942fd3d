/**
 * A live migration's streams over TLS: the RAM stream (QEMU migration) and the disk's NBD export
 * both use one QEMU `tls-creds-x509` object made from the agent's own certificate (signed by the
 * control plane's agent CA, the one the agent protocol's mutual TLS uses). The destination is the
 * server, the source the client; both verify the peer against the CA, and the source also checks
 * the destination's certificate name (tls-hostname). QEMU reads the files when the object is made,
 * so they live in a 0700 directory only for that moment.
 */
import { chown, rm, writeFile } from 'node:fs/promises';
import { processTempDir } from '../../../core/temp-dirs.js';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { QmpClient } from './qmp.js';
import { MIGRATION_CERT_PREFIX } from '../../remote/agent-protocol.js';

/** An agent's TLS identity for migrations (PEM texts; the key is never logged). */
export interface MigrationTls {
  /** The certificate's common name: the agent's name, what the other side checks. */
  name: string;
  ca: string;
  cert: string;
  key: string;
}

/** The QOM id of the credentials object in a migrating QEMU. */
export const TLS_CREDS_ID = 'nimbus-migrate-tls';

type Qmp = Pick<QmpClient, 'execute'>;

/**
 * RFC 7919's ffdhe2048 group (what `openssl genpkey -genparam -algorithm DH -pkeyopt
 * group:ffdhe2048` prints; public and standard). Without a dh-params.pem QEMU generates 2048-bit
 * parameters for every server object: 0.5–1.2 s of each migration's time on this machine.
 */
export const FFDHE2048_PEM = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`;

/** Where a QEMU can read files: as which user (absent: root) and under which root (its chroot; absent or "/": the host's). */
export interface QemuView {
  owner?: { uid: number; gid: number };
  root?: string;
}

/**
 * The credentials object in QEMU, as `endpoint` (QEMU's file names: ca-cert.pem,
 * server-/client-cert.pem and -key.pem, a server's dh-params.pem), from files QEMU reads when the
 * object is made: in a directory 0700 and owned by the user QEMU runs as (qemu-user.ts), inside its
 * chroot when it has one, else in the system's temporary directory (which every user can pass
 * through); removed once QEMU read them. No other user reads them meanwhile.
 */
export async function addTlsCreds(c: Qmp, tls: MigrationTls, endpoint: 'server' | 'client', view: QemuView = {}): Promise<void> {
  const jailed = view.root !== undefined && view.root !== '/';
  const dir = await processTempDir('migrate-tls', jailed ? view.root! : tmpdir());
  const { owner } = view;
  try {
    const files: Array<[string, string]> = [['ca-cert.pem', tls.ca], [`${endpoint}-cert.pem`, tls.cert], [`${endpoint}-key.pem`, tls.key]];
    if (endpoint === 'server') files.push(['dh-params.pem', FFDHE2048_PEM]);
    for (const [name, text] of files) await writeFile(path.join(dir, name), text, { mode: 0o600 });
    if (owner) for (const f of ['', ...files.map(([name]) => name)]) await chown(path.join(dir, f), owner.uid, owner.gid);
    // one left by a migration its agent did not see to the end (QEMU refuses a second of the id)
    await c.execute('object-del', { id: TLS_CREDS_ID }).catch(() => undefined);
    // the path as QEMU sees it: from its own root
    const seen = jailed ? `/${path.relative(view.root!, dir)}` : dir;
    await c.execute('object-add', { 'qom-type': 'tls-creds-x509', id: TLS_CREDS_ID, endpoint, dir: seen, 'verify-peer': true });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The migration parameters that make the stream TLS: the destination refuses anything else once
 * set, and the source checks the destination's certificate against `peer` (its agent name:
 * agent certificates carry no address).
 */
export async function useTlsForMigration(c: Qmp, peer?: string): Promise<void> {
  await c.execute('migrate-set-parameters', { 'tls-creds': TLS_CREDS_ID, ...(peer ? { 'tls-hostname': peer } : {}) });
}

/** The QOM id of the destination's list of the sources it takes (QEMU's authz-list, the migration's and the NBD server's tls-authz). */
export const TLS_AUTHZ_ID = 'nimbus-migrate-authz';

/**
 * The certificate names a destination takes a migration from, given the source the control plane
 * named: a certificate minted for this move (`migration.AGENT.NONCE`) exactly; an agent's name,
 * that agent's own certificate or, from a control plane of before the nonce (which named the
 * agent and minted `migration.AGENT`), that.
 */
export const sourceNames = (named: string): string[] => (named.startsWith(MIGRATION_CERT_PREFIX) ? [named] : [named, `${MIGRATION_CERT_PREFIX}${named}`]);

/**
 * Destination: take the stream only from a client certificate of one of these names (subject
 * `CN=NAME`), not from any certificate of the CA: QEMU's authz-list as the migration's tls-authz
 * (the disk's NBD server takes the same object).
 */
export async function acceptOnlyFrom(c: Qmp, names: readonly string[]): Promise<void> {
  await c.execute('object-del', { id: TLS_AUTHZ_ID }).catch(() => undefined);
  await c.execute('object-add', { 'qom-type': 'authz-list', id: TLS_AUTHZ_ID, policy: 'deny', rules: names.map((n) => ({ match: `CN=${n}`, policy: 'allow', format: 'exact' })) });
  await c.execute('migrate-set-parameters', { 'tls-authz': TLS_AUTHZ_ID });
}

/** After a migration (either side): later ones (a save to a file) go plain again, and the object goes. */
export async function clearTls(c: Qmp): Promise<void> {
  await c.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '', 'tls-authz': '' }).catch(() => undefined);
  await c.execute('object-del', { id: TLS_CREDS_ID }).catch(() => undefined);
  await c.execute('object-del', { id: TLS_AUTHZ_ID }).catch(() => undefined);
}
