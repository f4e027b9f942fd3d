/**
 * Secrets are never logged (docs/security.md): a daemon at debug level is driven through
 * logins (good and bad passwords), tokens (valid, revoked, forged), API keys and an agent
 * registration with a protocol secret; none of them may appear in anything it printed, nor may
 * a listing serve one back.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { makeKeyAndCsr } from '../src/core/pki.js';
import { call } from './helpers/http.js';

let d: DaemonProcess;
let port = 0;
const secrets: string[] = [];
const secret = (prefix: string) => {
  const s = `${prefix}-${randomBytes(12).toString('hex')}`;
  secrets.push(s);
  return s;
};

before(async () => {
  process.env.NIMBUS_ADMIN_PASSWORD = secret('adminpw');
  // 127.0.0.1:1 is the registry that does not answer below: named, so the login tries it
  d = await startDaemonProcess(['--tcp', '127.0.0.1:0', '--allow-registry', '127.0.0.1:1'], { NIMBUS_LOG_LEVEL: 'debug' });
  port = Number(/tcp:127\.0\.0\.1:(\d+)/.exec(d.output())![1]);
});
after(async () => {
  delete process.env.NIMBUS_ADMIN_PASSWORD;
  await d?.destroy();
});

test('passwords, tokens, API keys and agent secrets never reach the log or a listing', async () => {
  const tcp = { port };
  const sock = { socketPath: d.socket };
  const password = secret('userpw');
  assert.equal((await call(sock, 'POST', '/users', { body: { name: 'carol', password } })).status, 201);
  // a wrong password, a forged token and a malformed header: refused, and not echoed
  const wrong = await call(tcp, 'POST', '/auth/login', { body: { user: 'carol', password: secret('wrongpw') } });
  assert.equal(wrong.status, 401, wrong.text);
  assert.equal((await call(tcp, 'GET', '/containers', { token: secret('forged') })).status, 401);
  const login = await call(tcp, 'POST', '/auth/login', { body: { user: 'carol', password } });
  assert.equal(login.status, 201, login.text);
  const token = (login.body as { token: string }).token;
  secrets.push(token);
  const key = await call(tcp, 'POST', '/apikeys', { token, body: { name: 'ci' } });
  assert.equal(key.status, 201, key.text);
  const apiKey = (key.body as { key?: string; token?: string }).key ?? (key.body as { token: string }).token;
  assert.ok(apiKey, key.text);
  secrets.push(apiKey);
  assert.equal((await call(tcp, 'GET', '/auth/whoami', { token: apiKey })).status, 200);
  const keys = await call(tcp, 'GET', '/apikeys', { token });
  assert.equal(keys.status, 200, keys.text);
  assert.ok(!keys.text.includes(apiKey), 'a listing never serves a key back');
  assert.equal((await call(tcp, 'POST', '/auth/logout', { token })).status, 204);
  assert.equal((await call(tcp, 'GET', '/auth/whoami', { token })).status, 401, 'a revoked token is refused');
  // an agent that does not answer: its secret is not in the error nor in the log
  const agentSecret = secret('agenttoken');
  const reg = await call(sock, 'POST', '/agents', { body: { name: 'ghost', url: `unix:${d.home}/no-agent.sock`, token: agentSecret, protocol: { min: 2, max: 2 } } });
  assert.equal(reg.status, 502, reg.text);
  assert.ok(!reg.text.includes(agentSecret));
  // a join token is shown once, to its issuer; redeeming a forged one echoes nothing of it
  const jt = await call(sock, 'POST', '/agents/join-tokens', { body: {} });
  assert.equal(jt.status, 201, jt.text);
  const joinToken = (jt.body as { token: string }).token;
  secrets.push(joinToken, joinToken.split('.')[2]!);
  const forged = `${joinToken.split('.').slice(0, 2).join('.')}.${secret('forgedjoin')}.${joinToken.split('.')[3]}`;
  const { csr } = await makeKeyAndCsr('ghost2');
  const bad = await call(tcp, 'POST', '/agents/join', { body: { joinToken: forged, name: 'ghost2', csr, protocol: { min: 2, max: 2 } } });
  assert.equal(bad.status, 401, bad.text);
  assert.ok(!bad.text.includes(forged.split('.')[2]!));

  // registry passwords (nimbus registry login, docker login): a registry that does not answer refuses them, none is echoed
  const registryPassword = secret('registrypw');
  const reg2 = await call(sock, 'POST', '/registries', { body: { server: '127.0.0.1:1', username: 'u', password: registryPassword } });
  assert.equal(reg2.status, 502, reg2.text);
  assert.ok(!reg2.text.includes(registryPassword));
  const dockerPassword = secret('dockerpw');
  const dockerLogin = await call({ socketPath: `${d.home}/docker.sock` }, 'POST', '/auth', { body: { username: 'u', password: dockerPassword, serveraddress: 'http://127.0.0.1:1/' } });
  assert.equal(dockerLogin.status, 502, dockerLogin.text);
  assert.ok(!dockerLogin.text.includes(dockerPassword));

  const printed = d.output();
  assert.match(printed, /debug|"level"/i, 'the daemon did log at debug level');
  for (const s of secrets) assert.ok(!printed.includes(s), `a secret (${s.split('-')[0]}) reached the daemon's output`);
});
