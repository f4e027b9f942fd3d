/**
 * Tenancy end to end, over TCP with real tokens against a real nimbusd.
 *
 * Every route of the route table is exercised, so a route added later is
 * covered without touching this file (and a route that declares no `auth`
 * fails here): no token → 401; a member of A reaching for anything of B → 404
 * (existence is hidden, as Incus and OpenStack do); a global route → 403 for a
 * non-administrator; a reader of A → 403 on every route that needs more; and
 * listings a member of A can call show nothing of B. Then an admin of a parent
 * manages its descendants.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { call } from './helpers/http.js';
import { buildTestImages, makeTar, type PlatformImage } from '../scripts/fixtures/images.js';
import { hostKernel } from '../scripts/fixtures/guest.js';
import { allRoutes } from '../src/api/routes/index.js';
import type { Route } from '../src/api/route.js';

const ADMIN_PASSWORD = 'access-test-admin-pw';
const PASSWORD = 'tenant-password-1';

/** A `docker save` tar of the test image with a label of its own, so each project gets a distinct image. */
async function labelledImage(img: PlatformImage, label: string): Promise<Buffer> {
  const config = JSON.parse(img.config.data.toString()) as { config: Record<string, unknown> };
  config.config.Labels = { 'nimbus.test/project': label };
  const raw = img.rawLayers;
  return makeTar([
    { name: 'manifest.json', type: 'file', content: JSON.stringify([{ Config: 'config.json', RepoTags: [`access/${label.toLowerCase()}:v1`], Layers: raw.map((_, i) => `l${i}/layer.tar`) }]) },
    { name: 'config.json', type: 'file', content: JSON.stringify(config) },
    ...raw.map((r, i) => ({ name: `l${i}/layer.tar`, type: 'file' as const, content: r })),
  ]);
}

interface Fixture { project: string; projectId: string; container: string; image: string; operation: string; vm: string; network: string; group: string; volume: string; snapshot: string }

describe('tenancy: every route enforces its declared access', { concurrency: false }, () => {
  let d: DaemonProcess;
  let port: number;
  const tokens: Record<string, string> = {};
  let img: PlatformImage;
  const fx: Record<'A' | 'B', Fixture> = {} as never;
  const sock = () => ({ socketPath: d.socket });
  const tcp = () => ({ port });

  before(async () => {
    process.env.NIMBUS_ADMIN_PASSWORD = ADMIN_PASSWORD; // read by the daemon on first start
    // loopback as a trusted proxy: the throttle test names its callers with X-Forwarded-For
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0', '--trusted-proxy', '127.0.0.1']);
    const m = /tcp:127\.0\.0\.1:(\d+)/.exec(d.output());
    assert.ok(m, `ready line names the TCP port: ${d.output()}`);
    port = Number(m[1]);
    img = (await buildTestImages()).amd64;

    // Set-up over the socket, without a token: the local administrator.
    for (const name of ['A', 'B', 'org']) assert.equal((await call(sock(), 'POST', '/projects', { body: { name } })).status, 201);
    for (const [user, project, role] of [['alice', 'A', 'member'], ['rita', 'A', 'reader'], ['olga', 'org', 'admin']] as const) {
      assert.equal((await call(sock(), 'POST', '/users', { body: { name: user, password: PASSWORD } })).status, 201);
      assert.equal((await call(sock(), 'PUT', `/projects/${project}/roles/${user}`, { body: { role } })).status, 200);
    }
    for (const p of ['A', 'B'] as const) {
      const imported = await call(sock(), 'POST', `/images/import?project=${p}`, { raw: await labelledImage(img, p) });
      assert.equal(imported.status, 201, imported.text);
      const image = (imported.body as { image: { digest: string } }[])[0]!.image.digest;
      const created = await call(sock(), 'POST', `/containers?project=${p}`, { body: { image, name: `box-${p}`, cmd: ['sleep', '600'] } });
      assert.equal(created.status, 201, created.text);
      // A pull that fails at once still leaves an operation in the project.
      const pull = await call(sock(), 'POST', `/images/pull?project=${p}`, { body: { reference: '127.0.0.1:1/none/such:latest' } });
      assert.equal(pull.status, 202, pull.text);
      const operation = (pull.body as { id: string }).id;
      await call(sock(), 'GET', `/operations/${operation}/wait?timeout=30`);
      const project = (await call(sock(), 'GET', `/projects/${p}`)).body as { project: { id: string } };
      // a VM record (created, never started: nothing boots in this test)
      const vm = await call(sock(), 'POST', `/vms?project=${p}`, { body: { name: `vm-${p}`, kernel: hostKernel().kernel } });
      assert.equal(vm.status, 201, vm.text);
      const net = await call(sock(), 'POST', `/networks?project=${p}`, { body: { name: `net-${p}` } });
      assert.equal(net.status, 201, net.text);
      const disk = await call(sock(), 'POST', `/disk-images?project=${p}&name=disk-${p}`, { raw: Buffer.alloc(64 * 1024) });
      assert.equal(disk.status, 201, disk.text);
      const group = await call(sock(), 'POST', `/groups?project=${p}`, { body: { name: `web-${p}`, policy: 'anti-affinity' } });
      assert.equal(group.status, 201, group.text);
      const volume = await call(sock(), 'POST', `/volumes?project=${p}`, { body: { name: `vol-${p}`, sizeBytes: 16 * 1024 * 1024 } });
      assert.equal(volume.status, 201, volume.text);
      // a block volume's snapshot (qcow2 files only: nothing boots)
      const blk = await call(sock(), 'POST', `/volumes?project=${p}`, { body: { name: `blk-${p}`, sizeBytes: 16 * 1024 * 1024, type: 'block' } });
      assert.equal(blk.status, 201, blk.text);
      const snap = await call(sock(), 'POST', `/volumes/blk-${p}/snapshots?project=${p}`, { body: { name: `snap-${p}` } });
      assert.equal(snap.status, 201, snap.text);
      fx[p] = { project: p, projectId: project.project.id, container: (created.body as { id: string }).id, image, operation, vm: (vm.body as { id: string }).id, network: (net.body as { id: string }).id, group: (group.body as { id: string }).id, volume: (volume.body as { id: string }).id, snapshot: (snap.body as { id: string }).id };
    }
    for (const user of ['alice', 'rita', 'olga']) {
      const r = await call(tcp(), 'POST', '/auth/login', { body: { user, password: PASSWORD } });
      assert.equal(r.status, 201, r.text);
      tokens[user] = (r.body as { token: string }).token;
    }
    tokens.admin = ((await call(tcp(), 'POST', '/auth/login', { body: { user: 'admin', password: ADMIN_PASSWORD } })).body as { token: string }).token;
  });
  after(async () => {
    delete process.env.NIMBUS_ADMIN_PASSWORD;
    await d?.destroy();
  });

  /** The request that aims `route` at fixture `f`'s project. Unknown path parameters fail the test: teach it the new resource. */
  function aim(r: Route, f: Fixture): { path: string; body: unknown } {
    const path = r.path.replace(/\{(\w+)\}/g, (_m, name: string) => {
      const segment = r.path.slice(0, r.path.indexOf(`{${name}}`)).split('/').filter(Boolean).pop();
      if (name === 'user') return 'alice';
      if (name === 'pool') return 'shared';
      if (segment === 'containers') return f.container;
      if (segment === 'vms') return f.vm;
      if (segment === 'networks') return f.network;
      if (segment === 'disk-images') return `disk-${f.project}`;
      if (segment === 'images') return encodeURIComponent(f.image);
      if (segment === 'operations') return f.operation;
      if (segment === 'projects' || segment === 'quota') return f.project;
      if (segment === 'users' || segment === 'apikeys') return 'nobody-at-all';
      if (segment === 'agents') return 'no-such-agent';
      if (segment === 'hosts') return 'no-such-host';
      if (segment === 'groups') return f.group;
      if (segment === 'volumes') return f.volume;
      if (segment === 'volume-snapshots') return f.snapshot;
      if (segment === 'registries') return '127.0.0.1%3A1';
      assert.fail(`${r.method} ${r.path}: the access test does not know what {${name}} after /${segment ?? ''} names; add it to aim()`);
    });
    const auth = r.auth;
    const fromQuery = auth && 'project' in auth && (auth.project === 'query' || auth.project === 'query-or-all' || auth.project === 'query-list');
    const bodyField = auth && 'project' in auth && typeof auth.project === 'object' && 'body' in auth.project ? auth.project.body : undefined;
    const q = fromQuery ? `${path.includes('?') ? '&' : '?'}project=${f.project}` : '';
    const body = r.method === 'GET' || r.method === 'DELETE' ? undefined : bodyField ? { [bodyField]: f.project, name: 'probe' } : {};
    return { path: path + q, body };
  }

  const nonPublic = () => allRoutes().filter((r) => !(r.auth && 'public' in r.auth));

  test('every route declares who may call it', () => {
    const undeclared = allRoutes().filter((r) => !r.auth).map((r) => `${r.method} ${r.path}`);
    assert.deepEqual(undeclared, [], 'routes without an auth declaration');
  });

  test('over TCP without a token (or with a bad one) every non-public route is 401', async () => {
    for (const r of nonPublic()) {
      const { path, body } = aim(r, fx.A);
      assert.equal((await call(tcp(), r.method, path, { body })).status, 401, `${r.method} ${r.path} without a token`);
      assert.equal((await call(tcp(), r.method, path, { body, token: 'nmbs_forged' })).status, 401, `${r.method} ${r.path} with a forged token`);
    }
    for (const r of allRoutes().filter((x) => x.auth && 'public' in x.auth && x.method === 'GET')) {
      assert.equal((await call(tcp(), r.method, r.path)).status, 200, `${r.method} ${r.path} is public`);
    }
  });

  test('a member of A cannot reach anything of B (404), nor system routes (403)', async () => {
    for (const r of nonPublic()) {
      const auth = r.auth!;
      if ('authenticated' in auth) continue; // acts on the caller's own things; checked by the next test
      const { path, body } = aim(r, fx.B);
      const res = await call(tcp(), r.method, path, { body, token: tokens.alice! });
      const expected = 'global' in auth ? 403 : 404;
      assert.equal(res.status, expected, `alice: ${r.method} ${path} → ${res.status} ${res.text}`);
    }
    // B's things are all still there
    assert.equal((await call(sock(), 'GET', `/containers/${fx.B.container}`)).status, 200);
    assert.equal((await call(sock(), 'GET', `/images/${encodeURIComponent(fx.B.image)}`)).status, 200);
    assert.equal((await call(sock(), 'GET', '/projects/B')).status, 200);
  });

  test('listings a member of A can call show nothing of B', async () => {
    const secrets = [fx.B.projectId, fx.B.container, fx.B.image, fx.B.operation, fx.B.network, 'box-B', 'net-B', 'disk-B', 'snap-B', fx.B.snapshot];
    for (const r of nonPublic().filter((x) => x.method === 'GET' && !x.streams && !x.path.includes('{'))) {
      const { path } = aim(r, fx.A);
      const res = await call(tcp(), 'GET', path, { token: tokens.alice! });
      if (res.status !== 200) continue; // refused outright (403): nothing shown
      for (const s of secrets) assert.ok(!res.text.includes(s), `alice: GET ${path} shows ${s}: ${res.text.slice(0, 300)}`);
    }
    const mine = await call(tcp(), 'GET', '/containers?all=true', { token: tokens.alice! });
    assert.deepEqual((mine.body as { name: string }[]).map((c) => c.name), ['box-A'], 'the default project is A, her first grant');
    const everywhere = await call(tcp(), 'GET', '/containers?all=true&project=*', { token: tokens.alice! });
    assert.deepEqual((everywhere.body as { name: string }[]).map((c) => c.name), ['box-A'], 'project=* means every project she can read');
    const projects = await call(tcp(), 'GET', '/projects', { token: tokens.alice! });
    assert.deepEqual((projects.body as { path: string }[]).map((p) => p.path), ['A']);
  });

  test('events: a member of A is streamed A\'s events and none of B\'s', async () => {
    const text = await new Promise<string>((ok, fail) => {
      let buf = '';
      const req = request({ host: '127.0.0.1', port, path: '/events?since=0', headers: { authorization: `Bearer ${tokens.alice!}` } }, (res) => {
        assert.equal(res.statusCode, 200);
        res.on('data', (c: Buffer) => {
          buf += c.toString();
          if (buf.includes('"marker-A"')) {
            req.destroy();
            ok(buf);
          }
        });
        // Once subscribed, something happens in A: its event ends the wait.
        void call(sock(), 'POST', `/containers?project=A`, { body: { image: fx.A.image, name: 'marker-A', cmd: ['true'] } });
      });
      req.on('error', (e) => (buf.includes('"marker-A"') ? undefined : fail(e)));
      req.end();
    });
    assert.match(text, new RegExp(fx.A.container), 'replayed events of A');
    for (const s of [fx.B.container, fx.B.projectId, fx.B.operation]) assert.ok(!text.includes(s), `event stream leaks ${s}`);
  });

  test('a reader of A can read but not change anything (403); a member cannot administer (403)', async () => {
    for (const r of nonPublic()) {
      const auth = r.auth!;
      if (!('role' in auth)) continue;
      const { path, body } = aim(r, fx.A);
      // Allowed reads are only called where they answer at once (wait and streams block by design).
      if (auth.role === 'reader' && (r.method !== 'GET' || r.streams)) continue;
      const res = await call(tcp(), r.method, path, { body, token: tokens.rita! });
      if (auth.role === 'reader') {
        // Allowed: whatever the answer, it is not an access refusal (stats of a never-started container is a 409).
        assert.ok(![401, 403, 404].includes(res.status), `rita: ${r.method} ${path} → ${res.status} ${res.text}`);
      } else {
        assert.equal(res.status, 403, `rita: ${r.method} ${path} → ${res.status} ${res.text}`);
      }
      if (auth.role === 'admin') {
        const m = await call(tcp(), r.method, path, { body, token: tokens.alice! });
        assert.equal(m.status, 403, `alice (member): ${r.method} ${path} → ${m.status} ${m.text}`);
      }
    }
    assert.equal((await call(sock(), 'GET', `/containers/${fx.A.container}`)).status, 200, 'A\'s container survived');
  });

  test('an admin of a parent manages its descendants, and nothing above or beside them', async () => {
    const olga = { token: tokens.olga! };
    let r = await call(tcp(), 'POST', '/projects', { ...olga, body: { name: 'team', parent: 'org' } });
    assert.equal(r.status, 201, r.text);
    r = await call(tcp(), 'POST', '/projects', { ...olga, body: { name: 'sub', parent: 'org/team' } });
    assert.equal(r.status, 201, 'any depth');
    r = await call(tcp(), 'PUT', '/quota/org%2Fteam', { ...olga, body: { hard: { instances: 1, memory: 512, disk: 1024 } } }); // MiB: an unsized container is given the default 512, and a 1 GiB writable layer
    assert.equal(r.status, 200, r.text);
    r = await call(tcp(), 'PUT', '/quota/org', { ...olga, body: { hard: { instances: 100 } } });
    assert.equal(r.status, 403, 'a project\'s own admin does not set its limits');
    r = await call(tcp(), 'POST', '/projects', { ...olga, body: { name: 'rogue' } });
    assert.equal(r.status, 403, 'root projects are the system\'s');

    r = await call(tcp(), 'POST', '/images/import?project=org', { ...olga, raw: await labelledImage(img, 'org') });
    assert.equal(r.status, 201, r.text);
    const image = (r.body as { image: { digest: string } }[])[0]!.image.digest;
    r = await call(tcp(), 'POST', '/containers?project=org/team', { ...olga, body: { image, name: 'team-box', cmd: ['true'] } });
    assert.equal(r.status, 201, r.text);
    const teamBox = (r.body as { id: string }).id;
    r = await call(tcp(), 'POST', '/containers?project=org/team', { ...olga, body: { image, cmd: ['true'] } });
    assert.equal(r.status, 429, 'the quota she set on the child holds');
    r = await call(tcp(), 'POST', `/containers?project=A`, { ...olga, body: { image, cmd: ['true'] } });
    assert.equal(r.status, 404, 'not beside');
    r = await call(tcp(), 'POST', '/containers?project=org/team', { token: tokens.alice!, body: { image: fx.A.image, cmd: ['true'] } });
    assert.equal(r.status, 404, 'alice has no role on org/team');

    r = await call(tcp(), 'PUT', '/projects/org%2Fteam/roles/alice', { ...olga, body: { role: 'reader' } });
    assert.equal(r.status, 200, r.text);
    r = await call(tcp(), 'GET', `/containers/${teamBox}`, { token: tokens.alice! });
    assert.equal(r.status, 200, 'a granted reader of the child sees it');
    r = await call(tcp(), 'DELETE', `/containers/${teamBox}`, { token: tokens.alice! });
    assert.equal(r.status, 403, '...but cannot remove it');

    // Loans between siblings and pools from the parent, all by the parent's admin, through the CLI.
    const olgaCli = (args: string[]) => d.cli(['--host', `tcp://127.0.0.1:${port}`, ...args], { env: { NIMBUS_TOKEN: tokens.olga! } });
    assert.equal((await olgaCli(['project', 'create', 'lender', '--parent', 'org'])).code, 0);
    assert.equal((await olgaCli(['project', 'create', 'borrower', '--parent', 'org'])).code, 0);
    // memory and disk too: a container without sizes is given the default 512 MiB and a 1 GiB writable layer in a limited project
    let c = await olgaCli(['quota', 'set', 'org/lender', '--instances', '2', '--memory', '1g', '--disk', '2g', '--lendable', 'instances=1', '--lendable', 'memory=512m', '--lendable', 'disk=1g']);
    assert.equal(c.code, 0, c.stderr);
    c = await olgaCli(['quota', 'set', 'org/borrower', '--borrow-limit', 'instances=1', '--borrow-limit', 'memory=512m', '--borrow-limit', 'disk=1g']);
    assert.equal(c.code, 0, c.stderr);
    r = await call(tcp(), 'POST', '/containers?project=org/borrower', { ...olga, body: { image, name: 'on-loan', cmd: ['true'] } });
    assert.equal(r.status, 201, `borrows the lender's idle instance: ${r.text}`);
    const onLoan = (r.body as { id: string }).id;
    c = await olgaCli(['quota', 'loans', 'org/lender', '-o', 'json']);
    assert.equal(c.code, 0, c.stderr);
    const loans = JSON.parse(c.stdout) as { lenderPath: string; borrowerPath: string; resource: string; amount: number; instance: string }[];
    assert.deepEqual(loans.map((l) => [l.lenderPath, l.borrowerPath, l.resource, l.amount, l.instance]).sort(), [['org/lender', 'org/borrower', 'disk', 1024, onLoan], ['org/lender', 'org/borrower', 'instances', 1, onLoan], ['org/lender', 'org/borrower', 'memory', 512, onLoan]]);
    c = await olgaCli(['quota', 'pool', 'create', 'org', 'shared', '--capacity', 'instances=4', '--member', 'lender=1', '--member', 'borrower=3']);
    assert.equal(c.code, 0, c.stderr);
    c = await olgaCli(['quota', 'pool', 'ls', 'org', '-o', 'json']);
    const pools = JSON.parse(c.stdout) as { capacity: { instances: number }; members: { weight: number; deserved: { instances: number } }[] }[];
    assert.deepEqual(pools.map((p) => [p.capacity.instances, p.members.map((m) => [m.weight, m.deserved.instances])]), [[4, [[1, 1], [3, 3]]]]);
    c = await d.cli(['--host', `tcp://127.0.0.1:${port}`, 'quota', 'pool', 'set', 'org', 'shared', '--capacity', 'instances=2'], { env: { NIMBUS_TOKEN: tokens.alice! } });
    assert.match(c.stderr, /NotFound/, 'alice has no business with org');
    assert.equal((await call(tcp(), 'DELETE', `/containers/${onLoan}?force=true`, { ...olga })).status, 204);
    assert.deepEqual(JSON.parse((await olgaCli(['quota', 'loans', 'org/lender', '-o', 'json'])).stdout), [], 'returned on remove');

    r = await call(tcp(), 'DELETE', '/projects/org%2Fteam', { ...olga });
    assert.equal(r.status, 409, 'refused while it has children and resources');
    assert.match(r.text, /child project/);
    assert.equal((await call(tcp(), 'DELETE', '/projects/org%2Fteam%2Fsub', { ...olga })).status, 204);
    r = await call(tcp(), 'DELETE', '/projects/org%2Fteam', { ...olga });
    assert.equal(r.status, 409);
    assert.match(r.text, /1 container/);
    assert.equal((await call(tcp(), 'DELETE', `/containers/${teamBox}?force=true`, { ...olga })).status, 204);
    assert.equal((await call(tcp(), 'DELETE', '/projects/org%2Fteam', { ...olga })).status, 204);
  });

  test('sessions end at logout; API keys work over TCP until revoked', async () => {
    const key = await call(tcp(), 'POST', '/apikeys', { token: tokens.alice!, body: { name: 'ci' } });
    assert.equal(key.status, 201, key.text);
    const secret = (key.body as { key: string }).key;
    assert.equal((await call(tcp(), 'GET', '/containers', { token: secret })).status, 200);
    const listed = await call(tcp(), 'GET', '/apikeys', { token: tokens.alice! });
    assert.ok(!listed.text.includes(secret), 'never listed again');
    assert.equal((await call(tcp(), 'DELETE', '/apikeys/ci', { token: tokens.alice! })).status, 204);
    assert.equal((await call(tcp(), 'GET', '/containers', { token: secret })).status, 401);
    assert.equal((await call(tcp(), 'POST', '/auth/logout', { token: tokens.rita! })).status, 204);
    assert.equal((await call(tcp(), 'GET', '/containers', { token: tokens.rita! })).status, 401);
    assert.ok(!d.output().includes(PASSWORD) && !d.output().includes(secret), 'no secret in the daemon\'s output');
  });

  test('CLI: login stores a 0600 token, --project is honoured everywhere, projects and roles, logout', async (t) => {
    const config = mkdtempSync(join(tmpdir(), 'nimbus-cli-config-'));
    t.after(() => rmSync(config, { recursive: true, force: true }));
    const env = { NIMBUS_CONFIG: config };
    const host = ['--host', `tcp://127.0.0.1:${port}`];
    let r = await d.cli([...host, 'ps', '-a'], { env });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Unauthenticated/, 'TCP without a login');
    r = await d.cli([...host, 'login', 'alice', '--password-stdin'], { env, input: PASSWORD + '\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(join(config, 'token')).mode & 0o777, 0o600);
    r = await d.cli([...host, 'ps', '-a'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /box-A/);
    r = await d.cli([...host, '--project', 'B', 'ps', '-a'], { env });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /NotFound: no such project: B/);
    r = await d.cli([...host, 'ps', '-a', '--project', 'B'], { env });
    assert.match(r.stderr, /NotFound/, '--project after the command too');
    r = await d.cli([...host, 'images', '--project', 'A', '-o', 'json'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(fx.A.image));
    r = await d.cli([...host, 'whoami'], { env });
    assert.match(r.stdout, /^alice via session; default project A/);

    // the socket, without a login, is the local admin
    r = await d.cli(['project', 'create', 'child', '--parent', 'A']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'A/child\n');
    r = await d.cli(['--project', 'A/child', 'role', 'grant', 'rita', 'member']);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(['role', 'ls', '--project', 'A/child']);
    assert.match(r.stdout, /rita\s+member\s+A\/child/);
    assert.match(r.stdout, /alice\s+member\s+A\s+yes/, 'inherited from A');
    r = await d.cli([...host, 'project', 'ls'], { env });
    assert.deepEqual(r.stdout.trim().split('\n').slice(1).map((l) => l.split(/\s{3,}/)[0]), ['A', '  child']);
    r = await d.cli([...host, 'project', 'rm', 'A/child'], { env });
    assert.match(r.stderr, /PermissionDenied/, "a member of A may not remove A's children");
    r = await d.cli(['project', 'rm', 'A/child']);
    assert.equal(r.code, 0, r.stderr);

    r = await d.cli([...host, 'logout'], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(existsSync(join(config, 'token')), false);
  });

  test('images per project: the same image in A and B is each one\'s own; rm and prune in A leave B\'s working', async () => {
    const tar = await labelledImage(img, 'same'); // tagged access/same:v1
    const ref = encodeURIComponent('access/same:v1');
    const inA = await call(tcp(), 'POST', '/images/import?project=A', { token: tokens.alice!, raw: tar });
    assert.equal(inA.status, 201, inA.text);
    const inB = await call(sock(), 'POST', '/images/import?project=B', { raw: tar });
    assert.equal(inB.status, 201, inB.text);
    const [a, b] = [inA, inB].map((r) => (r.body as { image: { digest: string; projectId: string; tags: string[] } }[])[0]!.image);
    assert.equal(a!.digest, b!.digest, 'one content');
    assert.deepEqual([a!.projectId, b!.projectId], [fx.A.projectId, fx.B.projectId], 'each import answers with its own project');
    assert.deepEqual(b!.tags, ['docker.io/access/same:v1']);

    const listed = await call(tcp(), 'GET', '/images', { token: tokens.alice! });
    const mine = (listed.body as { digest: string; projectId: string }[]).filter((i) => i.digest === a!.digest);
    assert.deepEqual(mine.map((i) => i.projectId), [fx.A.projectId], 'alice sees A\'s reference, not B\'s');
    assert.ok(!listed.text.includes(fx.B.projectId), 'nor anything naming B');

    // rm in A: A's reference goes, B's stays and still runs containers (the shared content survived garbage collection).
    let r = await call(tcp(), 'DELETE', `/images/${ref}`, { token: tokens.alice! });
    assert.equal(r.status, 200, r.text);
    assert.equal((await call(tcp(), 'GET', `/images/${ref}`, { token: tokens.alice! })).status, 404);
    r = await call(sock(), 'GET', `/images/${ref}?project=B`);
    assert.equal(r.status, 200, r.text);
    assert.deepEqual((r.body as { tags: string[] }).tags, ['docker.io/access/same:v1']);
    r = await call(sock(), 'POST', '/containers?project=B', { body: { image: 'access/same:v1', name: 'same-in-B', cmd: ['true'] } });
    assert.equal(r.status, 201, r.text);
    const inBox = (r.body as { id: string }).id;
    assert.equal((await call(sock(), 'POST', `/containers/${inBox}/start`)).status, 200);
    r = await call(sock(), 'POST', `/containers/${inBox}/wait`);
    assert.deepEqual(r.body, { exitCode: 0, oomKilled: false }, 'B\'s image still runs after A removed its reference');
    assert.equal((await call(sock(), 'DELETE', `/containers/${inBox}`)).status, 204);

    // prune in A (every image no container of A uses) touches nothing of B, though B's copy is now unused too.
    assert.equal((await call(tcp(), 'POST', '/images/import?project=A', { token: tokens.alice!, raw: tar })).status, 201);
    r = await call(tcp(), 'POST', '/images/prune', { token: tokens.alice!, body: { all: true } });
    assert.equal(r.status, 200, r.text);
    assert.ok((r.body as { deleted: string[] }).deleted.includes(a!.digest), r.text);
    assert.equal((await call(tcp(), 'GET', `/images/${ref}`, { token: tokens.alice! })).status, 404);
    assert.equal((await call(sock(), 'GET', `/images/${ref}?project=B`)).status, 200, 'B\'s reference survives A\'s prune');
    assert.equal((await call(sock(), 'GET', `/images/${encodeURIComponent(fx.A.image)}?project=A`)).status, 200, 'A\'s image in use by box-A survives');
    r = await call(sock(), 'POST', '/images/prune?project=B', { body: { all: true } });
    assert.ok((r.body as { deleted: string[] }).deleted.includes(a!.digest), `B prunes its own: ${r.text}`);
  });

  test('a member cannot put a container on its host\'s network, nor into the namespace of one that is (403); an administrator can', async () => {
    let r = await call(tcp(), 'POST', '/containers', { token: tokens.alice!, body: { image: fx.A.image, network: 'host', cmd: ['true'] } });
    assert.equal(r.status, 403, r.text);
    assert.match(r.text, /only a system administrator may put a container on its host's network/);
    r = await call(sock(), 'POST', '/containers?project=A', { body: { image: fx.A.image, name: 'hostnet-A', network: 'host', cmd: ['sleep', '60'], start: true } });
    assert.equal(r.status, 201, `the administrator: ${r.text}`);
    const hostnet = (r.body as { id: string }).id;
    r = await call(tcp(), 'POST', '/containers', { token: tokens.alice!, body: { image: fx.A.image, network: 'container:hostnet-A', cmd: ['true'] } });
    assert.equal(r.status, 403, `joining it: ${r.text}`);
    assert.equal((await call(sock(), 'DELETE', `/containers/${hostnet}?force=true`)).status, 204);
  });

  test('a pull or a registry login naming a service on this host\'s loopback is refused (403), for members and administrators alike, and nothing reaches it', async (t) => {
    let hits = 0;
    const inner = createServer((_q, res) => {
      hits++;
      res.writeHead(401, { 'www-authenticate': 'Basic realm="x"' }).end('internal');
    });
    await new Promise<void>((r) => inner.listen(0, '127.0.0.1', r));
    t.after(() => new Promise<void>((r) => inner.close(() => r())));
    const target = `127.0.0.1:${(inner.address() as AddressInfo).port}`;
    const opIds: string[] = [];
    for (const who of [{ token: tokens.alice! }, { token: tokens.admin! }]) {
      const pull = await call(tcp(), 'POST', '/images/pull', { ...who, body: { reference: `${target}/x/y:latest` } });
      assert.equal(pull.status, 202, pull.text);
      opIds.push((pull.body as { id: string }).id);
      const op = await call(tcp(), 'GET', `/operations/${(pull.body as { id: string }).id}/wait?timeout=30`, who);
      const error = (op.body as { error?: { code?: string; message?: string } }).error;
      assert.equal(error?.code, 'PermissionDenied', op.text);
      assert.match(error?.message ?? '', /resolves to a loopback, link-local or other non-routable address; .*--allow-registry/);
      const login = await call(tcp(), 'POST', '/registries', { ...who, body: { server: target, username: 'u', password: 'p' } });
      assert.equal(login.status, 403, login.text);
    }
    assert.equal(hits, 0, 'the loopback service got no request');
    // the operations list: a member's are the newest of the projects it reads (chosen in the query), never another's
    const listed = ((await call(tcp(), 'GET', '/operations', { token: tokens.alice! })).body as { id: string }[]).map((o) => o.id);
    assert.ok(listed.includes(opIds[0]!) && !listed.includes(opIds[1]!), JSON.stringify(listed));
    const all = ((await call(tcp(), 'GET', '/operations', { token: tokens.admin! })).body as { id: string }[]).map((o) => o.id);
    assert.ok(all.includes(opIds[0]!) && all.includes(opIds[1]!), 'the administrator reads both');
  });

  test('failed logins over TCP: after 5 for a user from one caller, 429 with Retry-After, even with the right password; another caller behind the same trusted proxy, and the socket, still log in', async () => {
    const from = (address: string) => ({ headers: { 'x-forwarded-for': address } });
    for (let i = 0; i < 5; i++) assert.equal((await call(tcp(), 'POST', '/auth/login', { ...from('198.51.100.1'), body: { user: 'rita', password: 'not-it' } })).status, 401);
    const held = await call(tcp(), 'POST', '/auth/login', { ...from('198.51.100.1'), body: { user: 'rita', password: PASSWORD } });
    assert.equal(held.status, 429, held.text);
    assert.equal((held.body as { error: { code: string } }).error.code, 'TooManyRequests');
    assert.ok(Number(held.headers['retry-after']) > 0, `retry-after: ${held.headers['retry-after']}`);
    assert.equal((await call(tcp(), 'POST', '/auth/login', { ...from('198.51.100.2'), body: { user: 'rita', password: PASSWORD } })).status, 201, 'another caller through the proxy');
    assert.equal((await call(sock(), 'POST', '/auth/login', { body: { user: 'rita', password: PASSWORD } })).status, 201);
  });

  test('a member cannot choose the host a VM migrates to (403, as a container move\'s --to), nor learn host names from the answers; an administrator can', async () => {
    const host = ((await call(sock(), 'GET', `/vms/${fx.A.vm}`)).body as { agent: string }).agent;
    for (const to of [host, 'no-such-host']) {
      const r = await call(tcp(), 'POST', `/vms/${fx.A.vm}/migrate`, { token: tokens.alice!, body: { to } });
      assert.equal(r.status, 403, `to ${to}: ${r.text}`);
      assert.match(r.text, /only a system administrator may pin an instance to a host \(to\)/);
    }
    // the administrator passes the edge: the service's own checks answer (the VM is on that host already)
    const r = await call(tcp(), 'POST', `/vms/${fx.A.vm}/migrate`, { token: tokens.admin!, body: { to: host } });
    assert.equal(r.status, 400, r.text);
  });

  test('a member cannot pin a VM\'s vCPUs to host CPUs (403, nothing made); its VM without pin is made as before; an administrator pins', async () => {
    const configOf = (r: { body: unknown }) => (r.body as { config: { pin?: number[] } }).config;
    let r = await call(tcp(), 'POST', '/vms', { token: tokens.alice!, body: { name: 'pinned-A', image: 'disk-A', cpus: 2, pin: [0] } });
    assert.equal(r.status, 403, r.text);
    assert.match(r.text, /only a system administrator may pin a VM's vCPUs to host CPUs \(pin\)/);
    assert.equal((await call(sock(), 'GET', '/vms/pinned-A?project=A')).status, 404, 'nothing was made');
    r = await call(tcp(), 'POST', '/vms', { token: tokens.alice!, body: { name: 'free-A', image: 'disk-A', cpus: 2 } });
    assert.equal(r.status, 201, `without pin: ${r.text}`);
    assert.equal(configOf(r).pin, undefined);
    const free = (r.body as { id: string }).id;
    r = await call(tcp(), 'POST', '/vms?project=A', { token: tokens.admin!, body: { name: 'pinned-A', image: 'disk-A', cpus: 2, pin: [0] } });
    assert.equal(r.status, 201, `the administrator: ${r.text}`);
    assert.deepEqual(configOf(r).pin, [0]);
    const pinned = (r.body as { id: string }).id;
    for (const id of [free, pinned]) assert.equal((await call(sock(), 'DELETE', `/vms/${id}`)).status, 204);
  });

  test('container names are per project: the same name in A and B, each resolved in its caller\'s scope', async () => {
    let r = await call(tcp(), 'POST', '/containers', { token: tokens.alice!, body: { image: fx.A.image, name: 'web', cmd: ['true'] } });
    assert.equal(r.status, 201, r.text);
    const webA = (r.body as { id: string }).id;
    r = await call(sock(), 'POST', '/containers?project=B', { body: { image: fx.B.image, name: 'web', cmd: ['true'] } });
    assert.equal(r.status, 201, `a name taken in A is free in B: ${r.text}`);
    const webB = (r.body as { id: string }).id;
    r = await call(tcp(), 'POST', '/containers', { token: tokens.alice!, body: { image: fx.A.image, name: 'box-B', cmd: ['true'] } });
    assert.equal(r.status, 201, `B's names do not exist for alice: ${r.text}`);
    const boxB = (r.body as { id: string }).id;
    r = await call(tcp(), 'POST', '/containers', { token: tokens.alice!, body: { image: fx.A.image, name: 'web', cmd: ['true'] } });
    assert.equal(r.status, 409, 'taken in her own project');

    r = await call(tcp(), 'GET', '/containers/web', { token: tokens.alice! });
    assert.equal((r.body as { id: string }).id, webA, r.text);
    assert.equal((await call(tcp(), 'GET', '/containers/web?project=B', { token: tokens.alice! })).status, 404);
    assert.equal((await call(tcp(), 'GET', `/containers/${webB.slice(0, 12)}`, { token: tokens.alice! })).status, 404, 'nor by id prefix');
    assert.equal(((await call(tcp(), 'GET', `/containers/${webA.slice(0, 12)}`, { token: tokens.alice! })).body as { id: string }).id, webA);

    // The local administrator reads both projects: a bare name there is ambiguous, ?project= settles it.
    r = await call(sock(), 'GET', '/containers/web');
    assert.equal(r.status, 400, r.text);
    assert.match(r.text, /different projects.*--project/);
    assert.equal(((await call(sock(), 'GET', '/containers/web?project=B')).body as { id: string }).id, webB);
    const rm = await d.cli(['--project', 'B', 'rm', 'web']);
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal((await call(sock(), 'GET', `/containers/${webB}`)).status, 404);
    assert.equal((await call(tcp(), 'GET', '/containers/web', { token: tokens.alice! })).status, 200, 'A\'s web is untouched');
    for (const id of [webA, boxB]) assert.equal((await call(sock(), 'DELETE', `/containers/${id}`)).status, 204);
  });
});
