// A live migration's own certificates: from the agent CA, named for migrations only, short-lived;
// and no agent may take a name such a certificate carries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certCommonName, issuedBy } from '../../core/pki.js';
import { AgentCa } from './agent-ca.js';
import { checkAgentName } from './agent-registration.js';

test("a migration's certificate: the agent CA's, named migration.AGENT.NONCE (this move's alone), a key of its own, valid a day", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-agentca-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const ca = await AgentCa.open(dir);
  const [a, b] = [await ca.migrationCredentials('host-b'), await ca.migrationCredentials('host-b')];
  assert.match(a.name, /^migration\.host-b\.[0-9a-f]{12}$/);
  assert.equal(certCommonName(a.cert), a.name, 'never the agent\'s own name, which the control plane takes for the agent');
  assert.notEqual(a.name, b.name, 'a name per migration: one taken from a QEMU names no later move');
  assert.ok(issuedBy(a.cert, ca.certificate));
  assert.equal(a.ca, ca.certificate);
  assert.notEqual(a.key, b.key, 'a key per migration');
  const validMs = new Date(new X509Certificate(a.cert).validTo).getTime() - Date.now();
  assert.ok(validMs > 0 && validMs <= 24 * 3600_000 + 60_000, `valid ${Math.round(validMs / 3600_000)} h`);
});

test('agent names never begin with "migration." (nor are the control plane\'s or the embedded agent\'s)', () => {
  assert.throws(() => checkAgentName('migration.host-b', 'local'), /do not begin with "migration."/);
  assert.throws(() => checkAgentName('local', 'local'), /embedded agent/);
  assert.doesNotThrow(() => checkAgentName('host-b', 'local'));
});
