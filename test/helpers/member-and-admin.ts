/**
 * The two callers of the end-to-end tests that compare what a member and a system administrator
 * read: project A, its member alice, and both logged in over the daemon's TCP listener; and the
 * test image as a `docker save` tar for the member's project to import.
 */
import assert from 'node:assert/strict';
import { buildTestImages, makeTar } from '../../scripts/fixtures/images.js';
import type { DaemonProcess } from './daemon-process.js';
import { call } from './http.js';

export const MEMBER_PASSWORD = 'tenant-password-1';

/** Project A with alice as its member; both alice's and the administrator's session tokens. */
export async function memberAndAdmin(d: DaemonProcess, port: number, adminPassword: string): Promise<{ alice: string; admin: string }> {
  const sock = { socketPath: d.socket };
  assert.equal((await call(sock, 'POST', '/projects', { body: { name: 'A' } })).status, 201);
  assert.equal((await call(sock, 'POST', '/users', { body: { name: 'alice', password: MEMBER_PASSWORD } })).status, 201);
  assert.equal((await call(sock, 'PUT', '/projects/A/roles/alice', { body: { role: 'member' } })).status, 200);
  const tokens = { alice: '', admin: '' };
  for (const [user, password] of [['alice', MEMBER_PASSWORD], ['admin', adminPassword]] as const) {
    const r = await call({ port }, 'POST', '/auth/login', { body: { user, password } });
    assert.equal(r.status, 201, r.text);
    tokens[user] = (r.body as { token: string }).token;
  }
  return tokens;
}

/** The test image (amd64) as `docker save` writes it, tagged `repoTag`. */
export async function testImageTar(repoTag: string): Promise<Buffer> {
  const img = (await buildTestImages()).amd64;
  return makeTar([
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: 'config.json', RepoTags: [repoTag], Layers: img.rawLayers.map((_, i) => `l${i}/layer.tar`) }]) },
    { name: 'config.json', type: 'file', content: img.config.data },
    ...img.rawLayers.map((r, i) => ({ name: `l${i}/layer.tar`, type: 'file' as const, content: r })),
  ]);
}
