// The files QEMU reads for a migration's TLS: private while they exist, gone once the object is
// made (also when QEMU refuses it), and the DH group the one OpenSSL names ffdhe2048.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runOk } from '../../../core/exec.js';
import { addTlsCreds, FFDHE2048_PEM, sourceNames, TLS_CREDS_ID, type MigrationTls } from './migration-tls.js';

const tls: MigrationTls = { name: 'host-a', ca: 'CA PEM', cert: 'CERT PEM', key: 'KEY PEM' };

test("the credentials files are 0700/0600 and the QEMU's user's while QEMU reads them, in the system's temporary directory, and removed after, refused or not", async () => {
  const owner = { uid: 2_000_000_123, gid: 2_000_000_123 };
  for (const endpoint of ['server', 'client'] as const) {
    const seen: Record<string, string> = {};
    let args: Record<string, unknown> | undefined;
    const qmp = {
      execute: async <T>(cmd: string, a?: Record<string, unknown>): Promise<T> => {
        if (cmd === 'object-add') {
          args = a;
          const dir = String(a?.dir);
          const st = (f: string) => statSync(path.join(dir, f));
          seen['.'] = `${(st('').mode & 0o777).toString(8)} ${st('').uid}:${st('').gid}`;
          for (const f of readdirSync(dir)) seen[f] = `${(st(f).mode & 0o777).toString(8)} ${st(f).uid}:${st(f).gid}`;
        }
        return undefined as T;
      },
    };
    await addTlsCreds(qmp, tls, endpoint, { owner });
    const files = endpoint === 'server' ? ['ca-cert.pem', 'dh-params.pem', 'server-cert.pem', 'server-key.pem'] : ['ca-cert.pem', 'client-cert.pem', 'client-key.pem'];
    const own = `${owner.uid}:${owner.gid}`;
    assert.deepEqual(seen, { '.': `700 ${own}`, ...Object.fromEntries(files.map((f) => [f, `600 ${own}`])) }, 'readable by QEMU\'s user and root only');
    const dir = String(args?.dir);
    assert.equal(path.dirname(dir), tmpdir(), 'where any user may pass through to it');
    assert.deepEqual(args, { 'qom-type': 'tls-creds-x509', id: TLS_CREDS_ID, endpoint, dir, 'verify-peer': true });
    assert.ok(!existsSync(dir), 'removed once QEMU read it');
  }
  let refusedDir = '';
  const refusing = { execute: async (cmd: string, a?: Record<string, unknown>) => { if (cmd === 'object-add') { refusedDir = String(a?.dir); throw new Error('refused'); } } };
  await assert.rejects(addTlsCreds(refusing as never, tls, 'server'), /refused/);
  assert.ok(refusedDir && !existsSync(refusedDir), 'removed when QEMU refused the object too');
});

test('a QEMU in a chroot reads them inside it, named from its own root', async (t) => {
  const root = mkdtempSync(path.join(tmpdir(), 'nimbus-jail-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  let seen = '';
  let inside: string[] = [];
  const qmp = {
    execute: async <T>(cmd: string, a?: Record<string, unknown>): Promise<T> => {
      if (cmd === 'object-add') {
        seen = String(a?.dir);
        inside = readdirSync(path.join(root, seen)).sort();
      }
      return undefined as T;
    },
  };
  await addTlsCreds(qmp, tls, 'client', { root });
  assert.match(seen, /^\/nimbus-migrate-tls-[^/]+$/, 'a path from the chroot\'s root');
  assert.deepEqual(inside, ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']);
  assert.deepEqual(readdirSync(root), [], 'removed after');
});

test('the DH parameters are RFC 7919 ffdhe2048 as OpenSSL prints them', async () => {
  assert.equal(await runOk('openssl', ['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048']), FFDHE2048_PEM);
});

test('a destination takes exactly the certificate minted for this move; told an agent\'s name, that agent\'s own or the unnonced name of a control plane of before', () => {
  assert.deepEqual(sourceNames('migration.host-a.0123456789ab'), ['migration.host-a.0123456789ab']);
  assert.deepEqual(sourceNames('host-a'), ['host-a', 'migration.host-a']);
  assert.ok(!sourceNames('migration.host-a.0123456789ab').includes('migration.host-a.ba9876543210'), 'not another move\'s');
});
