/**
 * Secrets the control plane must use again later (registry passwords), sealed at rest:
 * AES-256-GCM under a key kept beside the store, not in it (HOME/secrets.key, 0600), so a copy of
 * the database or a PostgreSQL backup alone reveals none of them. The context (project and
 * registry) is authenticated with each one: a sealed value moved to another row does not open.
 *
 * The key is made on first use. Control-plane processes sharing a store must share the file (as
 * HOME/agent-ca): the first to use one records its fingerprint in the store, and a process with
 * another key, or none, is refused with the instruction to copy it.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { Conflict, DataLoss } from '../../core/errors.js';
import type { Store } from '../../store/store.js';

/** The settings key under which the store keeps the fingerprint of the key its secrets are sealed with. */
export const SECRETS_KEY_FINGERPRINT = 'secrets-key-fingerprint';

const VERSION = 'v1';
const b64 = (b: Buffer) => b.toString('base64url');

interface Key {
  bytes: Buffer;
  /** Names the key in each sealed value (a prefix of its fingerprint). */
  kid: string;
}

export class SecretBox {
  private key: Promise<Key> | undefined;

  constructor(
    /** HOME/secrets.key. */
    private readonly file: string,
    private readonly store: Pick<Store, 'settings'>,
  ) {}

  /** `plain` sealed for `context`: "v1.<key id>.<iv>.<ciphertext>.<tag>". */
  async seal(plain: string, context: string): Promise<string> {
    const key = await this.load(true);
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key.bytes, iv);
    cipher.setAAD(Buffer.from(context));
    const ct = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return [VERSION, key.kid, b64(iv), b64(ct), b64(cipher.getAuthTag())].join('.');
  }

  /** What seal() sealed for the same context; DataLoss when it was not (tampered with, or another row's). */
  async open(sealed: string, context: string): Promise<string> {
    const [version, kid, iv, ct, tag, ...rest] = sealed.split('.');
    if (version !== VERSION || !kid || iv === undefined || ct === undefined || tag === undefined || rest.length) throw new DataLoss('a stored secret is malformed');
    const key = await this.load(false);
    if (kid !== key.kid) throw new Conflict(`a stored secret was sealed with another key (${kid}) than ${this.file} (${key.kid}): copy the file from the control-plane process that stored it`);
    try {
      const decipher = createDecipheriv('aes-256-gcm', key.bytes, Buffer.from(iv, 'base64url'));
      decipher.setAAD(Buffer.from(context));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([decipher.update(Buffer.from(ct, 'base64url')), decipher.final()]).toString('utf8');
    } catch {
      throw new DataLoss('a stored secret does not open: it was altered, or belongs to another record');
    }
  }

  private load(create: boolean): Promise<Key> {
    // a failure is not kept: the operator may copy the file in and try again
    this.key ??= this.read(create).catch((e: unknown) => {
      this.key = undefined;
      throw e;
    });
    return this.key;
  }

  private async read(create: boolean): Promise<Key> {
    const copyIt = 'copy HOME/secrets.key from a control-plane process already running on this store (mode 0600) and try again';
    if (!existsSync(this.file)) {
      const agreed = await this.store.settings.get(SECRETS_KEY_FINGERPRINT);
      if (agreed !== undefined || !create) throw new Conflict(`${this.file} is missing, and the secrets in the store were sealed with a key: ${copyIt}`);
      try {
        writeFileSync(this.file, `${randomBytes(32).toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    const bytes = Buffer.from(readFileSync(this.file, 'utf8').trim(), 'base64');
    if (bytes.length !== 32) throw new Conflict(`${this.file} does not hold a 32-byte key (base64): ${copyIt}`);
    const fingerprint = createHash('sha256').update(bytes).digest('hex');
    const agreed = await this.store.settings.claim(SECRETS_KEY_FINGERPRINT, fingerprint);
    if (agreed !== fingerprint) throw new Conflict(`${this.file} is not the key the secrets in this store were sealed with (${agreed.slice(0, 16)}): ${copyIt}`);
    return { bytes, kid: fingerprint.slice(0, 16) };
  }
}
