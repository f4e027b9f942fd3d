// The files QEMU reads for a migration's TLS: private while they exist, gone once the object is
// made (also when QEMU refuses it), and the DH group the one OpenSSL names ffdhe2048.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runOk } from '../../../core/exec.js';
import { addTlsCreds, FFDHE2048_PEM, TLS_CREDS_ID, type MigrationTls } from './migration-tls.js';

const tls: MigrationTls = { name: 'host-a', ca: 'CA PEM', cert: 'CERT PEM', key: 'KEY PEM' };

test('the credentials files are 0700/0600 while QEMU reads them and removed after, refused or not', async () => {
  const base = await mkdtemp(path.join(tmpdir(), 'nimbus-migtls-'));
  try {
    const dir = path.join(base, 'vm', 'migrate-tls');
    for (const endpoint of ['server', 'client'] as const) {
      const seen: Record<string, number> = {};
      let args: Record<string, unknown> | undefined;
      const qmp = {
        execute: async <T>(cmd: string, a?: Record<string, unknown>): Promise<T> => {
          if (cmd === 'object-add') {
            args = a;
            seen['.'] = statSync(dir).mode & 0o777;
            for (const f of readdirSync(dir)) seen[f] = statSync(path.join(dir, f)).mode & 0o777;
          }
          return undefined as T;
        },
      };
      await addTlsCreds(qmp, tls, endpoint, dir);
      const files = endpoint === 'server' ? ['ca-cert.pem', 'dh-params.pem', 'server-cert.pem', 'server-key.pem'] : ['ca-cert.pem', 'client-cert.pem', 'client-key.pem'];
      assert.deepEqual(seen, { '.': 0o700, ...Object.fromEntries(files.map((f) => [f, 0o600])) });
      assert.deepEqual(args, { 'qom-type': 'tls-creds-x509', id: TLS_CREDS_ID, endpoint, dir, 'verify-peer': true });
      assert.ok(!existsSync(dir), 'removed once QEMU read it');
    }
    const refusing = { execute: async (cmd: string) => { if (cmd === 'object-add') throw new Error('refused'); } };
    await assert.rejects(addTlsCreds(refusing as never, tls, 'server', dir), /refused/);
    assert.ok(!existsSync(dir), 'removed when QEMU refused the object too');
  } finally {
    await rm(base, { recursive: true, force: true });
  }
});

test('the DH parameters are RFC 7919 ffdhe2048 as OpenSSL prints them', async () => {
  assert.equal(await runOk('openssl', ['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048']), FFDHE2048_PEM);
});
