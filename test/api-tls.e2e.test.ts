/**
 * nimbusd serving HTTPS on its TCP listeners (--tls-cert/--tls-key, a certificate made with
 * openssl as an administrator would): the CLI over https:// with the CA given (--tls-ca), and
 * refused with the reason without it; a container's stdin and output over wss://; a plain HTTP client gets no answer; the real docker CLI
 * with --tlsverify against the Docker API's listener, and not without TLS; `nimbus docker-env`
 * says DOCKER_TLS_VERIFY; a `nimbusd agent` joins and registers over https:// with
 * --control-plane-ca; SIGHUP serves a renewed certificate (and refuses a broken pair, keeping the
 * old); a key of another certificate, or a certificate without its key, stops the start with the
 * reason.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { testNetworkEnv } from '../src/agent/network/network-test-env.js';
import { untilOutput } from '../scripts/fixtures/child-output.js';
import { DAEMON_MAIN, startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { DOCKER_CLI } from './helpers/docker-cli.js';
import { call } from './helpers/http.js';
import { imageArchives } from './helpers/registry-images.js';
import { buildTestImages } from '../scripts/fixtures/images.js';

const PASSWORD = 'api-tls-admin-pw';

/** A CA and a server certificate for 127.0.0.1 (its IP in subjectAltName), as `openssl` makes them. */
async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string; otherKey: string }> {
  const f = (n: string) => join(dir, n);
  const ok = async (args: string[]) => {
    const r = await run('openssl', args);
    assert.equal(r.code, 0, `openssl ${args.join(' ')}: ${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await ok(['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=nimbus test API CA']);
  await ok(['req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1']);
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await ok(['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.pem'), '-days', '1', '-extfile', f('ext.cnf')]);
  return { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key'), otherKey: f('ca.key') };
}

/** The status a GET of path on the HTTPS listener at port answers, its certificate checked against caFile. */
function httpsStatus(port: number, path: string, caFile: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path, ca: readFileSync(caFile) }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

/** What a plain HTTP request to port gets: a status, or the error that ended it. */
function plainHttp(port: number): Promise<string> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/info', timeout: 5000 }, (res) => {
      res.resume();
      resolve(`HTTP ${res.statusCode}`);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    req.end();
  });
}

describe('HTTPS on the TCP listeners', { concurrency: false, timeout: 300_000 }, () => {
  let d: DaemonProcess;
  let dir: string;
  let certs: Awaited<ReturnType<typeof makeCertificates>>;
  let apiPort: number;
  let dockerPort: number;
  let token: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'nimbus-api-tls-'));
    certs = await makeCertificates(dir);
    d = await startDaemonProcess(['--tcp', '127.0.0.1:0', '--docker-tcp', '127.0.0.1:0', '--tls-cert', certs.cert, '--tls-key', certs.key], { NIMBUS_ADMIN_PASSWORD: PASSWORD });
    apiPort = Number(/ready: .* tcp:127\.0\.0\.1:(\d+)/.exec(d.output())?.[1]);
    dockerPort = Number(/docker API: tcp:\/\/127\.0\.0\.1:(\d+)/.exec(d.output())?.[1]);
    assert.ok(apiPort > 0 && dockerPort > 0, d.output());
    const login = await call({ socketPath: d.socket }, 'POST', '/auth/login', { body: { user: 'admin', password: PASSWORD } });
    assert.equal(login.status, 201, login.text);
    token = (login.body as { token: string }).token;
  });
  after(async () => {
    await d?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('the CLI over https:// with the CA; without it, the reason and what to do', async () => {
    const env = { NIMBUS_TOKEN: token, NIMBUS_SOCKET: '' };
    const info = await d.cli(['--host', `https://127.0.0.1:${apiPort}`, '--tls-ca', certs.ca, 'info', '-o', 'json'], { env });
    assert.equal(info.code, 0, info.stderr);
    assert.ok(JSON.parse(info.stdout), 'an answer over TLS');
    const byEnv = await d.cli(['ps'], { env: { ...env, NIMBUS_HOST: `https://127.0.0.1:${apiPort}`, NIMBUS_TLS_CA: certs.ca } });
    assert.equal(byEnv.code, 0, byEnv.stderr);
    const untrusted = await d.cli(['--host', `https://127.0.0.1:${apiPort}`, 'info'], { env });
    assert.equal(untrusted.code, 1);
    assert.match(untrusted.stderr, /presented a certificate this client does not trust \(UNABLE_TO_VERIFY_LEAF_SIGNATURE.*--tls-ca/);
    assert.ok(!untrusted.stderr.includes(token), 'the token is not in the message');
    const missing = await d.cli(['--host', `https://127.0.0.1:${apiPort}`, '--tls-ca', join(dir, 'none.pem'), 'info'], { env });
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /cannot read the CA file .*none\.pem/);
  });

  test('a container\'s stdin and output over the attach WebSocket, through wss://', async () => {
    const { dockerSave } = await imageArchives(await buildTestImages(), dir);
    const imported = await call({ socketPath: d.socket }, 'POST', '/images/import', { raw: readFileSync(dockerSave) });
    assert.equal(imported.status, 201, imported.text);
    const env = { NIMBUS_TOKEN: token, NIMBUS_SOCKET: '', NIMBUS_HOST: `https://127.0.0.1:${apiPort}`, NIMBUS_TLS_CA: certs.ca };
    const cat = await d.cli(['run', '-i', '--rm', 'imported/saved:v1', 'cat'], { input: 'through TLS\n', env });
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'through TLS\n');
  });

  test('without a token, TCP over TLS is nobody: both APIs answer 401', async () => {
    for (const [port, path] of [[apiPort, '/containers'], [dockerPort, '/v1.41/containers/json']] as const) {
      assert.equal(await httpsStatus(port, path, certs.ca), 401, `${path} on port ${port}`);
    }
  });

  test('a plain HTTP client gets no answer from either listener', async () => {
    for (const port of [apiPort, dockerPort]) {
      const got = await plainHttp(port);
      assert.doesNotMatch(got, /^HTTP 2/, `port ${port}: ${got}`);
    }
    const plain = await d.cli(['--host', `tcp://127.0.0.1:${apiPort}`, 'info'], { env: { NIMBUS_TOKEN: token, NIMBUS_SOCKET: '' } });
    assert.equal(plain.code, 1);
  });

  test('GET /info says the Docker API is TLS, and nimbus docker-env tells the docker CLI to verify it', async () => {
    const info = await call({ socketPath: d.socket }, 'GET', '/info');
    assert.deepEqual((info.body as { dockerApi: { tcp?: string; tls?: boolean } }).dockerApi.tls, true);
    const env = await d.cli(['--host', `https://127.0.0.1:${apiPort}`, '--tls-ca', certs.ca, 'docker-env'], { env: { NIMBUS_TOKEN: token, NIMBUS_SOCKET: '' } });
    assert.equal(env.code, 0, env.stderr);
    assert.match(env.stdout, new RegExp(`export DOCKER_HOST=tcp://127\\.0\\.0\\.1:${dockerPort}\\nexport DOCKER_TLS_VERIFY=1\\n`));
  });

  test('the docker CLI with --tlsverify and the CA; refused in clear', { skip: !DOCKER_CLI && 'no docker CLI on this machine' }, async () => {
    const config = join(dir, 'docker-config');
    rmSync(config, { recursive: true, force: true });
    mkdirSync(config, { recursive: true });
    writeFileSync(join(config, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': token } }));
    const docker = (args: string[]) => run(DOCKER_CLI!, args, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: config, DOCKER_CONFIG: config }, timeoutMs: 60_000 });
    const ok = await docker(['--tlsverify', '--tlscacert', certs.ca, '-H', `tcp://127.0.0.1:${dockerPort}`, 'version', '--format', '{{.Server.APIVersion}}']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout.trim(), /^1\.\d+$/);
    const ps = await docker(['--tlsverify', '--tlscacert', certs.ca, '-H', `tcp://127.0.0.1:${dockerPort}`, 'ps']);
    assert.equal(ps.code, 0, ps.stderr);
    const clear = await docker(['-H', `tcp://127.0.0.1:${dockerPort}`, 'version', '--format', '{{.Server.APIVersion}}']);
    assert.notEqual(clear.code, 0, 'no answer in clear');
    // over TLS as in clear, nobody on TCP is the local administrator: no token, no containers
    writeFileSync(join(config, 'config.json'), '{}');
    const anonymous = await docker(['--tlsverify', '--tlscacert', certs.ca, '-H', `tcp://127.0.0.1:${dockerPort}`, 'ps']);
    assert.notEqual(anonymous.code, 0, `ps without a token over TLS: ${anonymous.stdout}`);
    assert.match(anonymous.stderr, /token|authenticat|401/i);
  });

  test('nimbusd agent joins and registers over https:// with --control-plane-ca', async () => {
    const join_ = (await d.cliOk(['agent', 'join-token', '--ttl', '5m'])).trim();
    const home = mkdtempSync(join(tmpdir(), 'nimbus-tls-agent-'));
    let out = '';
    const child = spawn(process.execPath, ['--enable-source-maps', DAEMON_MAIN, 'agent', '--name', 'tls-agent', '--home', home, '--listen', '127.0.0.1:0',
      '--control-plane', `https://127.0.0.1:${apiPort}`, '--control-plane-ca', certs.ca, '--join-token', join_], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NIMBUS_LOG_LEVEL: 'warn', ...testNetworkEnv() } });
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    try {
      await untilOutput(child, 'registered with', 'the agent did not register over https', () => out);
      const list = JSON.parse(await d.cliOk(['agent', 'ls', '-o', 'json'])) as Array<{ name: string; state: string }>;
      assert.deepEqual(list.find((a) => a.name === 'tls-agent')?.state, 'up');
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      await d.cli(['agent', 'rm', 'tls-agent']);
      rmSync(home, { recursive: true, force: true });
    }
  });

  test('SIGHUP reads the certificate again: new connections get the renewed one; a pair that cannot serve is refused and the old one serves on', async () => {
    const second = join(dir, 'second');
    mkdirSync(second);
    const renewed = await makeCertificates(second);
    const env = { NIMBUS_TOKEN: token, NIMBUS_SOCKET: '', NIMBUS_HOST: `https://127.0.0.1:${apiPort}` };
    const hup = async (said: RegExp) => {
      const before = d.output().length;
      d.child.kill('SIGHUP');
      const end = Date.now() + 10_000;
      while (!said.test(d.output().slice(before))) {
        assert.ok(Date.now() < end, `no "${said}" after SIGHUP: ${d.output().slice(before)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    copyFileSync(renewed.cert, certs.cert);
    copyFileSync(renewed.key, certs.key);
    await hup(/TLS certificate reloaded on 2 listeners/);
    assert.equal((await d.cli(['info'], { env: { ...env, NIMBUS_TLS_CA: renewed.ca } })).code, 0, 'the renewed certificate, by its own CA');
    const old = await d.cli(['info'], { env: { ...env, NIMBUS_TLS_CA: certs.ca } });
    assert.equal(old.code, 1);
    assert.match(old.stderr, /does not trust/, 'the first CA no longer signs what is served');
    const docker = await httpsStatus(dockerPort, '/_ping', renewed.ca);
    assert.equal(docker, 200, 'the Docker API\'s listener took it too');
    // a key of another certificate: refused, the renewed pair serves on
    copyFileSync(certs.otherKey, certs.key);
    await hup(/the TLS certificate was not reloaded, the old one serves on: .*cannot serve/);
    assert.equal((await d.cli(['info'], { env: { ...env, NIMBUS_TLS_CA: renewed.ca } })).code, 0);
    assert.equal(d.child.exitCode, null, 'still running');
  });

  test('a key of another certificate, or a certificate alone, stops the start with the reason', async () => {
    for (const [args, reason] of [
      [['--tls-cert', certs.cert, '--tls-key', certs.otherKey], /cannot serve: .*(key values mismatch|KEY_VALUES_MISMATCH)/i],
      [['--tls-cert', certs.cert], /--tls-cert and --tls-key go together/],
    ] as const) {
      const home = mkdtempSync(join(tmpdir(), 'nimbus-tls-bad-'));
      try {
        const r = await run(process.execPath, [DAEMON_MAIN, '--home', home, '--socket', join(home, 'n.sock'), '--tcp', '127.0.0.1:0', ...args], { env: { ...process.env, ...testNetworkEnv() }, timeoutMs: 60_000 });
        assert.notEqual(r.code, 0, r.stdout);
        assert.match(r.stderr, reason);
      } finally {
        rmSync(home, { recursive: true, force: true });
      }
    }
  });
});
