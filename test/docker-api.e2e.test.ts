/**
 * The Docker Engine API end to end: the real docker CLI (Debian's 20.10 at /usr/bin/docker when
 * installed, else the one on the machine) against a real nimbusd's HOME/docker.sock, with the
 * loopback registry fixture. DOCKER_CONFIG is a temp dir: the host's docker config is never read.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import tar from 'tar-stream';
import { request } from 'node:http';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { freePort } from '../src/agent/network/network-test-env.js';
import { CLI_MAIN, startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { pushLabelledImage, startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { FRONT_USER, authFront, type AuthFront } from './helpers/registry-auth-front.js';

/** NIMBUS_DOCKER_CLI picks another client (a newer CLI negotiates down to 1.41). */
const DOCKER = [process.env.NIMBUS_DOCKER_CLI ?? '', '/usr/bin/docker', '/usr/local/bin/docker'].find((p) => p && existsSync(p));

let d: DaemonProcess | undefined;
let registry: TestRegistry | undefined;
let config: string;
/** The Docker API's TCP listener (nimbusd --docker-tcp), tcp://127.0.0.1:PORT. */
let dockerTcp: string | undefined;
let IMAGE: string;

const dockerEnv = (env: Record<string, string> = {}) =>
  ({ PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: config, DOCKER_HOST: `unix://${d!.home}/docker.sock`, DOCKER_CONFIG: join(config, 'admin'), ...env });

async function docker(args: string[], env: Record<string, string> = {}, input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await run(DOCKER!, args, { env: dockerEnv(env), timeoutMs: 60_000, ...(input !== undefined ? { input } : {}) });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/**
 * The docker CLI on a terminal of its own (`docker exec -it` wants one): under script(1), its pty
 * set to rows x cols first; `input` is typed once `typeAfter` shows on the screen. The screen and the exit code.
 */
function dockerOnTerminal(args: string[], rows: number, cols: number, input: string, typeAfter: RegExp, beforeTyping?: (scriptPid: number) => Promise<void>, then?: Array<[RegExp, string]>): Promise<{ code: number; screen: string }> {
  return onTerminal([DOCKER!, ...args], dockerEnv({ TERM: 'xterm' }), rows, cols, input, typeAfter, beforeTyping, then);
}

/** The nimbus CLI on a terminal, as dockerOnTerminal (over the daemon's unix socket). */
function nimbusOnTerminal(args: string[], rows: number, cols: number, input: string, typeAfter: RegExp, beforeTyping?: (scriptPid: number) => Promise<void>, then?: Array<[RegExp, string]>): Promise<{ code: number; screen: string }> {
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: config, TERM: 'xterm', NIMBUS_SOCKET: join(d!.home, 'nimbus.sock'), NIMBUS_CONFIG: join(config, 'nimbus-client') };
  return onTerminal([process.execPath, CLI_MAIN, ...args], env, rows, cols, input, typeAfter, beforeTyping, then);
}

function onTerminal(argv: string[], env: Record<string, string>, rows: number, cols: number, input: string, typeAfter: RegExp, beforeTyping?: (scriptPid: number) => Promise<void>, then: Array<[RegExp, string]> = []): Promise<{ code: number; screen: string }> {
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const child = spawn('script', ['-qec', `stty rows ${rows} cols ${cols}; exec ${argv.map(quote).join(' ')}`, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let screen = '';
  let typed = false;
  const later = [...then];
  child.stdout.on('data', (b: Buffer) => {
    screen += b.toString('utf8');
    // more input once the screen shows what it waits for (after the first input)
    if (typed && later.length && later[0]![0].test(screen)) child.stdin.write(later.shift()![1]);
    if (!typed && typeAfter.test(screen)) type();
  });
  function type() {
    typed = true;
    void (beforeTyping?.(child.pid!) ?? Promise.resolve()).then(() => child.stdin.write(input), (e: unknown) => {
      screen += `\n(the test's step before typing failed: ${String(e)})`;
      child.kill('SIGKILL');
    });
  }
  // a program that shows nothing first (docker attach): typed at once when the pattern matches an empty screen
  if (typeAfter.test('')) type();
  child.stderr.on('data', (b: Buffer) => (screen += b.toString('utf8')));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  // stdin stays open until the end: script(1) would hang up on the session at its end-of-file
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      child.stdin.destroy();
      resolve({ code: code ?? -1, screen });
    });
  });
}

async function ok(args: string[]): Promise<string> {
  const r = await docker(args);
  assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function okAs(as: (args: string[]) => Promise<{ code: number; stderr: string }>, args: string[]): Promise<void> {
  const r = await as(args);
  assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
}

/** A raw request on the Docker socket (what the CLI would not let a test send). */
function raw(method: string, path: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: `${d!.home}/docker.sock`, path, method }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw request with a JSON body on the Docker socket. */
function rawJson(method: string, path: string, body: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = request({ socketPath: `${d!.home}/docker.sock`, path, method, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

let loginFront: AuthFront | undefined;
const loginPassword = `registry-pw-${process.pid}-${Date.now()}`;

describe('the docker CLI against nimbusd', { skip: DOCKER ? false : 'no docker CLI on this machine (apt-get install docker.io)', concurrency: false, timeout: 240_000 }, () => {
  before(async () => {
    config = mkdtempSync(join(tmpdir(), 'nimbus-docker-config-'));
    mkdirSync(join(config, 'admin'));
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    // the login test's registry, in front of the real one: made before the daemon, whose administrator names it
    loginFront = await authFront(registry.host, 'bearer', FRONT_USER, loginPassword);
    d = await startDaemonProcess(['--docker-tcp', '127.0.0.1:0']);
    dockerTcp = /nimbusd docker API: (tcp:\/\/127\.0\.0\.1:\d+)/.exec(d.output())?.[1];
    assert.ok(dockerTcp, `the daemon prints its Docker API's TCP address:\n${d.output()}`);
  });
  after(async () => {
    try {
      await d?.destroy();
    } finally {
      await loginFront?.close();
      await registry?.stop();
      rmSync(config, { recursive: true, force: true });
    }
  }, { timeout: 60_000 }); // a daemon that does not stop (an upgraded connection held open) fails here, not hangs

  test('version and info: API 1.41 advertised, newer versions refused in Docker\'s words', async () => {
    assert.equal((await ok(['version', '--format', '{{.Server.APIVersion}}'])).trim(), '1.41');
    const ping = await raw('GET', '/_ping');
    assert.equal(ping.status, 200);
    assert.equal(ping.body, 'OK');
    assert.equal(ping.headers['api-version'], '1.41');
    const tooNew = await raw('GET', '/v1.99/version');
    assert.equal(tooNew.status, 400);
    assert.match((JSON.parse(tooNew.body) as { message: string }).message, /client version 1\.99 is too new/);
    assert.equal((await raw('GET', '/v1.40/version')).status, 200);
    const info = (await ok(['info', '--format', '{{.ServerVersion}} {{.OSType}} {{.Containers}}'])).trim();
    assert.equal((await ok(['info', '--format', '{{json .SecurityOptions}}'])).trim(), '["name=seccomp,profile=default","name=no-new-privileges"]');
    assert.match(info, /^\S+ linux 0$/);
  });

  test('pull with progress, images, tag, inspect, rmi', async () => {
    const pulled = await ok(['pull', IMAGE]);
    assert.match(pulled, /Digest: sha256:[0-9a-f]{64}/);
    assert.match(pulled, /Downloaded newer image for/);
    assert.match(pulled, /[0-9a-f]{12}: Pull complete/);
    const missing = await docker(['pull', `${registry!.host}/nimbus-test/no-such-image:latest`]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /no-such-image/);
    const again = await ok(['pull', IMAGE]);
    assert.match(again, /Image is up to date/);
    await ok(['tag', IMAGE, 'mine/bb:v1']);
    const images = await ok(['images', '--format', '{{.Repository}}:{{.Tag}} {{.ID}}']);
    assert.match(images, new RegExp(`${registry!.host}/nimbus-test/busybox:latest [0-9a-f]{12}`));
    assert.match(images, /mine\/bb:v1 [0-9a-f]{12}/);
    assert.equal((await ok(['images', '--format', '{{.Repository}}:{{.Tag}}', 'mine/bb'])).trim(), 'mine/bb:v1');
    const id = (await ok(['image', 'inspect', '--format', '{{.Id}}', 'mine/bb:v1'])).trim();
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    assert.match(await ok(['rmi', 'mine/bb:v1']), /Untagged: mine\/bb:v1/);
    const gone = await docker(['image', 'inspect', 'mine/bb:v1']);
    assert.notEqual(gone.code, 0);
    assert.match(gone.stderr, /No such image/);
  });

  test('run -d, then ps (filters, Names, Status), logs (both streams, --tail), inspect, stop, rm', async () => {
    const id = (await ok(['run', '-d', '--name', 'web', '-e', 'WHO=nimbus', '--label', 'app=web', '--memory', '64m', '--pids-limit', '50', IMAGE,
      // stdout and stderr are two pipes: the pause makes "last" the last line whatever order the first two land in
      'sh', '-c', 'echo hello $WHO; echo oops >&2; sleep 0.3; echo last; exec sleep 1000'])).trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    const ps = (await ok(['ps', '--filter', 'label=app=web', '--format', '{{.Names}}|{{.Status}}|{{.ID}}'])).trim();
    assert.match(ps, /^web\|Up (Less than a second|\d+ seconds?)\|[0-9a-f]{12}$/);
    assert.equal((await ok(['ps', '--filter', 'name=nomatch', '-q'])).trim(), '');
    let logs = { code: 1, stdout: '', stderr: '' };
    for (const end = Date.now() + 15_000; !logs.stdout.includes('last') && Date.now() < end;) {
      logs = await docker(['logs', 'web']);
      if (!logs.stdout.includes('last')) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(logs.stdout, 'hello nimbus\nlast\n');
    assert.equal(logs.stderr, 'oops\n');
    assert.equal((await ok(['logs', '--tail', '1', 'web'])).trim(), 'last');
    assert.match(await ok(['logs', '--timestamps', 'web']), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z hello nimbus$/m);
    assert.equal((await ok(['inspect', '--format', '{{.State.Running}} {{.Name}} {{.HostConfig.Memory}}', 'web'])).trim(), 'true /web 67108864');
    // -f follows until the container exits
    const followed = await ok(['run', '-d', IMAGE, 'sh', '-c', 'echo a; sleep 0.5; echo b']);
    assert.equal(await ok(['logs', '-f', followed.trim()]), 'a\nb\n');
    await ok(['rm', followed.trim()]);
    await ok(['stop', '-t', '1', 'web']);
    const stopped = (await ok(['ps', '-a', '--filter', 'name=^web$', '--format', '{{.Status}}'])).trim();
    assert.match(stopped, /^Exited \(137\) (Less than a second|\d+ seconds?) ago$/);
    await ok(['start', 'web']);
    await ok(['kill', 'web']);
    await ok(['rm', 'web']);
    assert.equal((await ok(['ps', '-a', '-q'])).trim(), '');
    const missing = await docker(['rm', 'web']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /No such container: web/);
  });

  test('run --rm prints the output and exits with the container\'s code; rm -f of a running one', async () => {
    const r = await docker(['run', '--rm', IMAGE, 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, 'out\n');
    assert.match(r.stderr, /err/);
    assert.equal((await ok(['ps', '-a', '-q'])).trim(), '', 'the --rm container is gone');
    // --storage-opt size: the writable layer a filesystem of its own; writing past it fails as on a full disk
    const sized = await docker(['run', '--rm', '--storage-opt', 'size=32m', IMAGE, 'sh', '-c', 'df -m / | tail -1; dd if=/dev/zero of=/big bs=1M count=48']);
    assert.notEqual(sized.code, 0);
    assert.match(sized.stderr, /No space left on device/);
    assert.ok(Number(/^\S+\s+(\d+)/.exec(sized.stdout.trim())?.[1]) <= 32, sized.stdout);
    assert.match((await docker(['run', '--rm', '--storage-opt', 'dm.basesize=10G', IMAGE, 'true'])).stderr, /--storage-opt dm\.basesize is not supported: only size/);
    // without --rm: attach and wait (next-exit) before the start, the container stays
    const kept = await docker(['run', '--name', 'once', IMAGE, 'sh', '-c', 'echo kept; exit 5']);
    assert.equal(kept.code, 5, kept.stderr);
    assert.equal(kept.stdout, 'kept\n');
    assert.equal((await ok(['wait', 'once'])).trim(), '5');
    assert.match(await ok(['ps', '-a', '--format', '{{.Names}} {{.State}}']), /^once exited$/m);
    await ok(['start', 'once']);
    assert.equal((await ok(['wait', 'once'])).trim(), '5');
    await ok(['rm', 'once']);
    await ok(['run', '-d', '--name', 'busy', '--storage-opt', 'size=64m', IMAGE, 'sleep', '1000']);
    assert.equal((await ok(['inspect', '-f', '{{.HostConfig.StorageOpt.size}}', 'busy'])).trim(), String(64 * 1024 * 1024), 'inspect says it back');
    // exec without a TTY: output framed, exit code, -e, -u, -w, -d
    const ex = await docker(['exec', '-e', 'X=1', '-u', '1000', '-w', '/tmp', 'busy', 'sh', '-c', 'echo $X $(id -u) $(pwd); echo e >&2; exit 4']);
    assert.equal(ex.code, 4, ex.stderr);
    assert.equal(ex.stdout, '1 1000 /tmp\n');
    assert.equal(ex.stderr, 'e\n');
    await ok(['exec', '-d', 'busy', 'touch', '/tmp/detached']);
    assert.equal((await docker(['exec', 'busy', 'sh', '-c', 'for i in $(seq 50); do [ -e /tmp/detached ] && exit 0; sleep 0.1; done; exit 1'])).code, 0);
    // -t without a terminal on this side: the command's terminal only, its output raw (CRLF: the pty's)
    const tty = await docker(['exec', '-t', 'busy', 'sh', '-c', 'tty; exit 2']);
    assert.equal(tty.code, 2, tty.stderr);
    assert.match(tty.stdout, /^\/dev\/pts\/\d+\r+\n$/);
    // -i without -t: the input is the command's stdin, its end the command's end-of-file
    const cat = await docker(['exec', '-i', 'busy', 'sh', '-c', 'cat; echo done'], {}, 'piped in\n');
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'piped in\ndone\n');
    await ok(['restart', '-t', '0', 'busy']);
    assert.equal((await ok(['inspect', '--format', '{{.State.Status}}', 'busy'])).trim(), 'running');
    const refused = await docker(['rm', 'busy']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /cannot remove a running container/);
    await ok(['rm', '-f', 'busy']);
  });

  test('exec -it on a terminal: the command\'s tty sized as the client\'s (resize), typed input reaches it, its exit code is the CLI\'s', async () => {
    await ok(['run', '-d', '--name', 'term', IMAGE, 'sleep', '1000']);
    try {
      // the CLI resizes just after the start (API 1.41 has no ConsoleSize): the command waits for it
      // (up to 5 s: a loaded host is slow to deliver it; a resize that never comes shows as the wrong
      // size). Each command sleeps a moment before it exits: script(1) may stop reading the terminal
      // when its child ends, before the last lines are drained (seen once at load 9).
      const r = await dockerOnTerminal(['exec', '-it', 'term', 'sh', '-c', 'i=0; while [ "$(stty size)" != "33 101" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; stty size; tty; echo ready; read line; echo "got:$line"; sleep 0.3; exit 6'], 33, 101, 'typed-in\r', /ready/);
      assert.equal(r.code, 6, r.screen);
      assert.match(r.screen, /33 101\r+\n\/dev\/pts\/\d+\r+\nready\r+\n/, r.screen);
      assert.match(r.screen, /got:typed-in\r+\n/, r.screen);
      // an interactive shell: its prompt, a line typed, exit with a code
      const sh = await dockerOnTerminal(['exec', '-it', 'term', 'sh'], 20, 60, 'echo $((6*7)); stty size; sleep 0.3; exit 9\r', /# /);
      assert.equal(sh.code, 9, sh.screen);
      assert.match(sh.screen, /\r+\n42\r+\n20 60\r+\n/, sh.screen);
      // the same through `nimbus exec -it` (the exec WebSocket over the daemon's socket): raw, sized, resized on SIGWINCH, its code
      const n = await nimbusOnTerminal(['exec', '-it', 'term', 'sh', '-c', 'stty size; echo ready; read line; echo "got:$line"; stty size; sleep 0.3; exit 5'], 31, 99, 'from-nimbus\r', /ready/);
      assert.equal(n.code, 5, n.screen);
      assert.match(n.screen, /31 99\r+\nready\r+\n/, n.screen);
      assert.match(n.screen, /got:from-nimbus\r+\n/, n.screen);
      // `nimbus exec -t` without a terminal here: POST …/exec with tty (24x80), output only, its code
      const t = await d!.cli(['exec', '-t', 'term', 'sh', '-c', 'tty; stty size; exit 3']);
      assert.equal(t.code, 3, t.stderr);
      assert.match(t.stdout, /^\/dev\/pts\/\d+\r+\n24 80\r+\n$/);
      assert.match((await d!.cli(['exec', '-i', 'term', 'true'])).stderr, /-i needs -t/);
      // the CLI's terminal resized under it (the kernel sends it SIGWINCH): the command's follows
      const resized = await nimbusOnTerminal(['exec', '-it', 'term', 'sh', '-c', 'stty size; echo ready; read line; until [ "$(stty size)" = "40 120" ]; do sleep 0.02; done; stty size; sleep 0.3'], 31, 99, '\r', /ready/, async (scriptPid) => {
        const cli = (await run('pgrep', ['-P', String(scriptPid)])).stdout.trim().split('\n')[0]!;
        const tty = readlinkSync(`/proc/${cli}/fd/0`);
        assert.match(tty, /^\/dev\/pts\/\d+$/);
        assert.equal((await run('stty', ['-F', tty, 'rows', '40', 'cols', '120'])).code, 0);
      });
      assert.equal(resized.code, 0, resized.screen);
      assert.match(resized.screen, /31 99\r+\nready\r+\n\r+\n40 120\r+\n/, resized.screen);
      // a resize of an exec without a TTY is refused
      const made = await rawJson('POST', '/containers/term/exec', { Cmd: ['true'] });
      assert.equal(made.status, 201, made.body);
      const resize = await raw('POST', `/exec/${(JSON.parse(made.body) as { Id: string }).Id}/resize?h=10&w=10`);
      assert.equal(resize.status, 409, resize.body);
    } finally {
      await ok(['rm', '-f', 'term']);
    }
  });

  test('run -it, run -i and attach: the main process on a terminal sized as the client\'s, its stdin, detach keys, its exit code', async () => {
    // the CLI resizes just after the start: the shell waits for a size (bounded) before it prints it
    const waitSize = (size: string) => `for i in $(seq 60); do [ "$(stty size)" = "${size}" ] && break; sleep 0.05; done; stty size`;
    const it = await dockerOnTerminal(['run', '-it', '--rm', IMAGE, 'sh'], 27, 91, `${waitSize('27 91')}; echo $((6*7)); tty; exit 3\r`, /# /);
    assert.equal(it.code, 3, it.screen);
    assert.match(it.screen, /\r+\n27 91\r+\n42\r+\n\/dev\/pts\/\d+\r+\n/, it.screen);
    // run -i without -t: the piped input is the process's stdin, its end the process's end-of-file; stdout and stderr apart
    const cat = await docker(['run', '-i', '--rm', IMAGE, 'sh', '-c', 'cat; echo eof; echo err >&2'], {}, 'piped data\n');
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'piped data\neof\n');
    assert.equal(cat.stderr, 'err\n');
    // nimbus run -it: the same terminal through the Nimbus API's attach WebSocket
    const n = await nimbusOnTerminal(['run', '-it', '--rm', IMAGE, 'sh'], 26, 88, `${waitSize('26 88')}; echo $((7*6)); exit 7\r`, /# /);
    assert.equal(n.code, 7, n.screen);
    assert.match(n.screen, /\r+\n26 88\r+\n42\r+\n/, n.screen);
    assert.equal((await ok(['ps', '-a', '-q'])).trim(), '', 'the --rm containers are gone');
    // attach to a run -dit container: sized as this client, input and output; ^P^Q detaches and it keeps running
    await ok(['run', '-dit', '--name', 'att', IMAGE, 'sh']);
    try {
      assert.equal((await ok(['inspect', '--format', '{{.Config.Tty}} {{.Config.OpenStdin}} {{.Config.StdinOnce}}', 'att'])).trim(), 'true true false');
      const first = await dockerOnTerminal(['attach', 'att'], 22, 70, `${waitSize('22 70')}; echo first-$((1+1))\r`, /^/, async () => new Promise((r) => setTimeout(r, 300)), [[/first-2\r+\n/, '\x10\x11']]);
      // the detach keys typed once the output is seen: the CLI ends (exit 1 "read escape sequence", as against dockerd), the shell stays
      assert.equal(first.code, 1, first.screen);
      assert.match(first.screen, /22 70\r+\nfirst-2\r+\n/, first.screen);
      assert.match(first.screen, /read escape sequence/, first.screen);
      assert.equal((await ok(['inspect', '--format', '{{.State.Status}}', 'att'])).trim(), 'running');
      // nimbus attach: sized as its terminal, typed into; its ctrl-p ctrl-q detaches (exit 0) and leaves it running
      const viaNimbus = await nimbusOnTerminal(['attach', 'att'], 21, 77, `${waitSize('21 77')}; echo via-$((3+3))\r`, /^/, async () => new Promise((r) => setTimeout(r, 300)), [[/via-6\r+\n/, '\x10\x11']]);
      assert.equal(viaNimbus.code, 0, viaNimbus.screen);
      assert.match(viaNimbus.screen, /21 77\r+\nvia-6\r+\n[\s\S]*detached/, viaNimbus.screen);
      assert.equal((await ok(['inspect', '--format', '{{.State.Status}}', 'att'])).trim(), 'running');
      const second = await dockerOnTerminal(['attach', 'att'], 22, 70, `echo second-$((2+2)); exit 5\r`, /^/, async () => new Promise((r) => setTimeout(r, 300)));
      assert.equal(second.code, 5, second.screen);
      assert.match(second.screen, /second-4\r+\n/, second.screen);
      assert.equal((await ok(['wait', 'att'])).trim(), '5');
      // logs of a container with a terminal are its raw bytes (the CLI reads Config.Tty to know it gets no frames)
      const logs = await ok(['logs', 'att']);
      assert.match(logs, /first-2\r?\n[\s\S]*second-4\r?\n/);
      assert.doesNotMatch(logs, /[\x01\x02]\x00\x00\x00/, 'no multiplexing headers');
      // a resize of a container without a terminal is refused
      const made = await rawJson('POST', '/containers/create', { Image: IMAGE, Cmd: ['true'] });
      assert.equal(made.status, 201, made.body);
      const resize = await raw('POST', `/containers/${(JSON.parse(made.body) as { Id: string }).Id}/resize?h=10&w=10`);
      assert.equal(resize.status, 409, resize.body);
      await ok(['rm', (JSON.parse(made.body) as { Id: string }).Id]);
    } finally {
      await ok(['rm', '-f', 'att']);
    }
  });

  test('an image not pulled yet: create answers 404, the CLI pulls and runs', async () => {
    const single = `${registry!.host}/nimbus-test/busybox:single`;
    const r = await docker(['run', '--rm', single, 'echo', 'pulled and ran']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /Unable to find image/);
    assert.equal(r.stdout.trim().split('\n').pop(), 'pulled and ran');
  });

  test('network create, ls, inspect, run on it, rm; unsupported flags refused by name', async () => {
    // the subnet comes from the daemon's test pool: files run in parallel, a fixed one could collide
    const id = (await ok(['network', 'create', '--label', 'purpose=test', 'dnet'])).trim();
    assert.match(id, /\S+/);
    assert.match(await ok(['network', 'ls', '--format', '{{.Name}} {{.Driver}}']), /^dnet bridge$/m);
    assert.equal((await ok(['network', 'ls', '-q', '--filter', 'label=purpose=test'])).trim(), id.slice(0, 12));
    const subnet = (await ok(['network', 'inspect', '--format', '{{range .IPAM.Config}}{{.Subnet}}{{end}}', 'dnet'])).trim();
    const prefix = /^(\d+\.\d+\.\d+)\.0\/24$/.exec(subnet)?.[1];
    assert.ok(prefix, subnet);
    const r = await docker(['run', '--rm', '--network', 'dnet', IMAGE, 'sh', '-c', 'ip -4 addr show eth0']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes(`inet ${prefix}.`), r.stdout);
    await ok(['network', 'rm', 'dnet']);
    assert.doesNotMatch(await ok(['network', 'ls', '--format', '{{.Name}}']), /^dnet$/m);
    // a host's kernel interfaces are never bound, not even for an administrator (volumes: test/volumes.e2e.test.ts)
    const bind = await docker(['run', '--rm', '-v', '/proc:/host-proc', IMAGE, 'true']);
    assert.notEqual(bind.code, 0);
    assert.match(bind.stderr, /host path \/proc cannot be bound into a container/);
  });

  test('-p publishes a port; pause and unpause; network connect and disconnect; logs --since', async () => {
    const port = await freePort();
    await ok(['run', '-d', '--name', 'served', '-p', `127.0.0.1:${port}:8080`, IMAGE,
      'sh', '-c', 'mkdir -p /www && echo hello-docker > /www/index.html && exec busybox httpd -f -p 8080 -h /www']);
    assert.match(await ok(['ps', '--format', '{{.Names}} {{.Ports}}']), new RegExp(`^served 127\\.0\\.0\\.1:${port}->8080/tcp$`, 'm'));
    let body = '';
    for (let i = 0; i < 50 && body !== 'hello-docker'; i++) {
      body = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) }).then(async (r) => (await r.text()).trim(), () => '');
      if (body !== 'hello-docker') await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(body, 'hello-docker');
    await ok(['pause', 'served']);
    assert.match(await ok(['ps', '--format', '{{.Status}}', '--filter', 'name=served']), /^Up .* \(Paused\)$/m);
    await ok(['unpause', 'served']);
    await ok(['network', 'create', 'side']);
    await ok(['network', 'connect', 'side', 'served']);
    assert.match(await ok(['network', 'inspect', '--format', '{{range .Containers}}{{.Name}} {{end}}', 'side']), /served/);
    await ok(['network', 'disconnect', 'side', 'served']);
    assert.doesNotMatch(await ok(['network', 'inspect', '--format', '{{range .Containers}}{{.Name}} {{end}}', 'side']), /served/);
    const future = String(Math.floor(Date.now() / 1000) + 3600);
    assert.equal(await ok(['logs', '--since', future, 'served']), '');
    await ok(['rm', '-f', 'served']);
    await ok(['network', 'rm', 'side']);
  });

  test('anonymous volumes (-v /path, an image\'s VOLUME) go with rm -v and --rm, named ones stay; --volumes-from; -P and -p PORT on ports the host chooses', async () => {
    const listed = async () => (await ok(['volume', 'ls', '-q'])).trim().split('\n').filter(Boolean);
    const had = new Set(await listed());
    const fresh = async () => (await listed()).filter((v) => !had.has(v)).sort();
    const disk = async () => (await d!.api<{ resources: { disk: { used: number } } }>('GET', '/quota/default')).body.resources.disk.used;
    const diskBefore = await disk();
    await ok(['run', '-d', '--name', 'anon', '-v', '/data', '-v', 'keepvol:/keep', IMAGE, 'sh', '-c', 'echo shared > /data/f; exec sleep 3600']);
    const made = await fresh();
    const anon = made.find((v) => /^[0-9a-f]{64}$/.test(v));
    assert.ok(anon && made.includes('keepvol') && made.length === 2, made.join(' '));
    assert.match(await ok(['volume', 'inspect', '--format', '{{json .Labels}}', anon]), /com\.docker\.volume\.anonymous/);
    assert.equal(await disk(), diskBefore + 2 * 1024, 'the anonymous volume is charged to the quota like the named one (MiB)');
    // --volumes-from: the same volumes, read-only with :ro
    const from = await docker(['run', '--rm', '--volumes-from', 'anon:ro', IMAGE, 'sh', '-c', 'cat /data/f; touch /data/g 2>/dev/null || echo read-only']);
    assert.equal(from.code, 0, from.stderr);
    assert.deepEqual(from.stdout.trim().split('\n'), ['shared', 'read-only']);
    // rm -v: the anonymous volume goes, the named one stays; its quota is given back
    await ok(['rm', '-f', '-v', 'anon']);
    assert.deepEqual(await fresh(), ['keepvol']);
    assert.equal(await disk(), diskBefore + 1024);
    // --rm: likewise
    const rm = await docker(['run', '--rm', '-v', '/scratch', IMAGE, 'sh', '-c', 'test -d /scratch && echo mounted']);
    assert.equal(rm.stdout.trim(), 'mounted', rm.stderr);
    assert.deepEqual(await fresh(), ['keepvol']);
    await ok(['volume', 'rm', 'keepvol']);
    assert.equal(await disk(), diskBefore);

    // an image with a VOLUME and an exposed port: -P publishes it, -p 8081 another, both on ports the host chose
    const exposing = `${registry!.host}/nimbus-test/exposing:v1`;
    await pushLabelledImage(registry!, 'nimbus-test/exposing', 'v1', '2026-01-01T00:00:00Z', {}, { ExposedPorts: { '8080/tcp': {} }, Volumes: { '/vol': {} } });
    await ok(['pull', exposing]);
    await ok(['run', '-d', '--name', 'pall', '-P', '-p', '8081', exposing, 'sh', '-c',
      'mkdir -p /www && echo chosen > /www/index.html && busybox httpd -p 8081 -h /www && exec busybox httpd -f -p 8080 -h /www']);
    const ports = (await ok(['port', 'pall'])).trim().split('\n').sort();
    assert.equal(ports.length, 2, ports.join('\n'));
    const hostPorts = ports.map((l) => {
      const m = /^(8080|8081)\/tcp -> 0\.0\.0\.0:(\d+)$/.exec(l);
      assert.ok(m, l);
      assert.ok(Number(m[2]) >= 49153 && Number(m[2]) <= 65535, `${m[2]} is in dockerd's range`);
      return Number(m[2]);
    });
    assert.match(await ok(['ps', '--format', '{{.Ports}}', '--filter', 'name=pall']), new RegExp(`0\\.0\\.0\\.0:${hostPorts[0]}->8080/tcp`));
    for (const port of hostPorts) {
      let body = '';
      for (let i = 0; i < 50 && body !== 'chosen'; i++) {
        body = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(2000) }).then(async (r) => (await r.text()).trim(), () => '');
        if (body !== 'chosen') await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(body, 'chosen', `port ${port} answers`);
    }
    assert.match(await ok(['inspect', '--format', '{{range .Mounts}}{{.Type}} {{.Destination}}{{end}}', 'pall']), /^volume \/vol$/m, 'the image\'s VOLUME is an anonymous volume');
    await ok(['rm', '-f', '-v', 'pall']);
    assert.deepEqual(await fresh(), []);
    await ok(['rmi', exposing]);
  });

  test('cp both ways: files, directories, tar streams, running and stopped containers; hostile paths and tars stay inside the container', async () => {
    const work = mkdtempSync(join(tmpdir(), 'nimbus-cp-'));
    const sh = (script: string) => run('sh', ['-c', script], { env: { ...dockerEnv(), DOCKER: DOCKER! }, timeoutMs: 60_000 });
    try {
      // /etc/shadow of the container is known text; links to it (absolute, and '..' past the root) and a link to the host's root
      await ok(['run', '-d', '--name', 'cpbox', IMAGE, 'sh', '-c',
        'echo container-shadow > /etc/shadow; mkdir -p /data/sub; echo inside > /data/sub/f; ln -s /etc/shadow /data/abs; ln -s ../../../../../etc/shadow /data/up; ln -s / /data/root; touch /data/ready; exec sleep 1000']);
      assert.equal((await docker(['exec', 'cpbox', 'sh', '-c', 'for i in $(seq 100); do [ -e /data/ready ] && exit 0; sleep 0.05; done; exit 1'])).code, 0);

      // out: a file, a directory into a local directory
      await ok(['cp', 'cpbox:/data/sub/f', join(work, 'f')]);
      assert.equal(readFileSync(join(work, 'f'), 'utf8'), 'inside\n');
      await ok(['cp', 'cpbox:/data/sub', work]);
      assert.equal(readFileSync(join(work, 'sub', 'f'), 'utf8'), 'inside\n');
      // in: a file into a directory, under a new name, a directory; and back out
      writeFileSync(join(work, 'in.txt'), 'from the host\n');
      await ok(['cp', join(work, 'in.txt'), 'cpbox:/tmp/']);
      await ok(['cp', join(work, 'in.txt'), 'cpbox:/tmp/renamed.txt']);
      mkdirSync(join(work, 'dir', 'inner'), { recursive: true });
      writeFileSync(join(work, 'dir', 'inner', 'x'), 'x\n');
      await ok(['cp', join(work, 'dir'), 'cpbox:/tmp/']);
      assert.equal(await ok(['exec', 'cpbox', 'cat', '/tmp/in.txt', '/tmp/renamed.txt', '/tmp/dir/inner/x']), 'from the host\nfrom the host\nx\n', 'the container was thawed after each copy');
      await ok(['cp', 'cpbox:/tmp/dir', join(work, 'back')]);
      assert.equal(readFileSync(join(work, 'back', 'inner', 'x'), 'utf8'), 'x\n');

      // tar streams both ways
      const listed = await sh('"$DOCKER" cp cpbox:/data/sub - | tar -tf -');
      assert.equal(listed.code, 0, listed.stderr);
      assert.deepEqual(listed.stdout.trim().split('\n').sort(), ['sub/', 'sub/f']);
      const piped = await sh(`tar -C ${work} -cf - in.txt | "$DOCKER" cp - cpbox:/data/sub`);
      assert.equal(piped.code, 0, piped.stderr);
      assert.equal(await ok(['exec', 'cpbox', 'cat', '/data/sub/in.txt']), 'from the host\n');

      // a path that is not there: dockerd's error and exit code
      const missing = await docker(['cp', 'cpbox:/nope', work]);
      assert.equal(missing.code, 1);
      // 20.10 words it itself, newer clients print dockerd's message
      assert.match(missing.stderr, /No such container:path: cpbox:\/nope|Could not find the file \/nope in container cpbox/);

      // links to /etc/shadow, followed (-L): the container's file, never the host's
      for (const link of ['/data/abs', '/data/up']) {
        await ok(['cp', '-L', `cpbox:${link}`, join(work, 'shadow')]);
        assert.equal(readFileSync(join(work, 'shadow'), 'utf8'), 'container-shadow\n', link);
        rmSync(join(work, 'shadow'));
      }
      const viaRoot = await sh('"$DOCKER" cp cpbox:/data/root/etc/shadow - | tar -xOf -');
      assert.equal(viaRoot.stdout, 'container-shadow\n', viaRoot.stderr);
      // a tar that writes through a symlink of its own (esc -> /): refused, nothing written anywhere
      const hostile = tar.pack();
      hostile.entry({ name: 'esc', type: 'symlink', linkname: '/' });
      hostile.entry({ name: 'esc/tmp/nimbus-cp-escaped' }, 'escaped\n');
      hostile.entry({ name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 });
      hostile.finalize();
      const chunks: Buffer[] = [];
      for await (const c of hostile as AsyncIterable<Buffer>) chunks.push(c);
      writeFileSync(join(work, 'hostile.tar'), Buffer.concat(chunks));
      const refused = await sh(`"$DOCKER" cp - cpbox:/data/ < ${join(work, 'hostile.tar')}`);
      assert.notEqual(refused.code, 0);
      assert.match(refused.stderr, /is a symlink; refusing to follow it/);
      assert.equal(existsSync('/tmp/nimbus-cp-escaped'), false, 'not on the host');
      assert.notEqual((await docker(['exec', 'cpbox', 'test', '-e', '/tmp/nimbus-cp-escaped'])).code, 0, 'nor in the container');

      // nimbus cp, over the Nimbus API: out (as a new name, and into a directory), in (as a new name)
      for (const [from, to] of [['cpbox:/data/sub/f', join(work, 'nimbus-f')], ['cpbox:/data/sub', join(work, 'dir')], [join(work, 'dir'), 'cpbox:/tmp/ndir']]) {
        const r = await d!.cli(['cp', from!, to!]);
        assert.equal(r.code, 0, `nimbus cp ${from} ${to}: ${r.stderr}`);
      }
      assert.equal(readFileSync(join(work, 'nimbus-f'), 'utf8'), 'inside\n');
      assert.equal(readFileSync(join(work, 'dir', 'sub', 'f'), 'utf8'), 'inside\n');
      assert.equal(await ok(['exec', 'cpbox', 'cat', '/tmp/ndir/inner/x', '/tmp/ndir/sub/f']), 'x\ninside\n');
      const nimbus = `"${process.execPath}" ${CLI_MAIN}`;
      const nimbusStreams = await run('sh', ['-c', `tar -C ${work} -cf - in.txt | ${nimbus} cp - cpbox:/data/ && ${nimbus} cp cpbox:/data/in.txt - | tar -xOf -`], {
        env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: config, NIMBUS_SOCKET: join(d!.home, 'nimbus.sock'), NIMBUS_CONFIG: join(config, 'nimbus-client') }, timeoutMs: 60_000,
      });
      assert.equal(nimbusStreams.stdout, 'from the host\n', nimbusStreams.stderr);
      const nimbusMissing = await d!.cli(['cp', 'cpbox:/nope', '-']);
      assert.equal(nimbusMissing.code, 1);
      assert.match(nimbusMissing.stderr, /no such file or directory: "\/nope"/);

      // a stopped container: in and out, and its next start sees the file
      await ok(['stop', '-t', '0', 'cpbox']);
      await ok(['cp', join(work, 'in.txt'), 'cpbox:/tmp/while-stopped.txt']);
      await ok(['cp', 'cpbox:/tmp/while-stopped.txt', join(work, 'stopped.txt')]);
      assert.equal(readFileSync(join(work, 'stopped.txt'), 'utf8'), 'from the host\n');
      await ok(['start', 'cpbox']);
      assert.equal(await ok(['exec', 'cpbox', 'cat', '/tmp/while-stopped.txt']), 'from the host\n');
      // the writes are the container's writable layer, not the image's
      assert.notEqual((await docker(['run', '--rm', IMAGE, 'test', '-e', '/tmp/in.txt'])).code, 0);
    } finally {
      await docker(['rm', '-f', 'cpbox']);
      rmSync(work, { recursive: true, force: true });
    }
  });

  test('a tenant\'s token and project in HttpHeaders: its docker CLI sees its own project only; docker-env tells what to set', async () => {
    const api = d!.api.bind(d);
    assert.equal((await api('POST', '/projects', { name: 'tenant' })).status, 201);
    assert.equal((await api('POST', '/users', { name: 'tina', password: 'tenant-password-1' })).status, 201);
    assert.equal((await api('PUT', '/projects/tenant/roles/tina', { role: 'member' })).status, 200);
    const login = await api<{ token: string }>('POST', '/auth/login', { user: 'tina', password: 'tenant-password-1' });
    assert.equal(login.status, 201);
    const tenantConfig = join(config, 'tina');
    mkdirSync(tenantConfig);
    writeFileSync(join(tenantConfig, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': login.body.token, 'X-Nimbus-Project': 'tenant' } }));
    const asTina = (args: string[]) => docker(args, { DOCKER_CONFIG: tenantConfig });

    await ok(['run', '-d', '--name', 'admins', IMAGE, 'sleep', '1000']);
    assert.equal((await asTina(['ps', '-a', '-q'])).stdout.trim(), '', 'the default project\'s container is not listed');
    assert.equal((await asTina(['images', '-q'])).stdout.trim(), '', 'nor its images');
    // (not rm -f: the CLI makes a missing container a success there)
    for (const verb of ['stop', 'rm', 'logs', 'inspect', 'attach']) {
      const r = await asTina([verb, 'admins']);
      assert.notEqual(r.code, 0, verb);
      assert.match(r.stderr, /No such (container|object): admins/i, verb);
    }
    assert.match(await ok(['ps', '--format', '{{.Names}}']), /^admins$/m, 'still there, still running');
    // docker cp: another project's container is not there to read or write
    const cpOut = await asTina(['cp', 'admins:/etc/passwd', '-']);
    assert.notEqual(cpOut.code, 0);
    assert.match(cpOut.stderr, /No such container/);
    const planted = join(config, 'planted.txt');
    writeFileSync(planted, 'from another project\n');
    assert.notEqual((await asTina(['cp', planted, 'admins:/tmp/'])).code, 0);
    assert.notEqual((await docker(['exec', 'admins', 'test', '-e', '/tmp/planted.txt'])).code, 0, 'nothing was written into it');
    // the image is pulled again, into the tenant's project (quota and audit are the project's)
    const r = await asTina(['run', '--rm', IMAGE, 'echo', 'tenant ran']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /Unable to find image/);
    assert.equal(r.stdout.trim().split('\n').pop(), 'tenant ran');
    assert.match((await asTina(['images', '--format', '{{.Repository}}'])).stdout, /nimbus-test\/busybox/);
    const projectContainers = await api<unknown[]>('GET', '/containers?all=true&project=tenant');
    assert.deepEqual(projectContainers.body, []);
    await ok(['rm', '-f', 'admins']);

    // the project's quota holds for its docker CLI as for the Nimbus API
    assert.equal((await api('PUT', '/quota/tenant', { hard: { instances: 1 } })).status, 200);
    await okAs(asTina, ['run', '-d', '--name', 'first', IMAGE, 'sleep', '1000']);
    const second = await asTina(['run', '-d', '--name', 'second', IMAGE, 'sleep', '1000']);
    assert.notEqual(second.code, 0);
    assert.match(second.stderr, /instances: need 1, free 0/);
    await okAs(asTina, ['rm', '-f', 'first']);

    writeFileSync(join(tenantConfig, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': 'not-a-token' } }));
    const bad = await asTina(['ps']);
    assert.notEqual(bad.code, 0);

    const env = await d!.cli(['docker-env']);
    assert.equal(env.code, 0, env.stderr);
    assert.match(env.stdout, new RegExp(`^export DOCKER_HOST=unix://${d!.home}/docker.sock$`, 'm'));
    const tenantEnv = await d!.cli(['docker-env', '--project', 'tenant'], { env: { NIMBUS_TOKEN: login.body.token } });
    assert.equal(tenantEnv.code, 0, tenantEnv.stderr);
    assert.match(tenantEnv.stdout, /"HttpHeaders": \{"X-Nimbus-Token":"[^"]+","X-Nimbus-Project":"tenant"\}/);
    assert.match(tenantEnv.stdout, new RegExp(`^export DOCKER_HOST=${dockerTcp}$`, 'm'), 'a tenant is sent to the TCP listener');
    assert.doesNotMatch(tenantEnv.stdout, /docker\.sock/, 'the host\'s socket path is not a tenant\'s business');

    // over TCP: the tenant's token works; nobody is the local administrator there
    writeFileSync(join(tenantConfig, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': login.body.token, 'X-Nimbus-Project': 'tenant' } }));
    await okAs(asTina, ['-H', dockerTcp!, 'run', '-d', '--name', 'over-tcp', IMAGE, 'sleep', '1000']);
    assert.equal((await asTina(['-H', dockerTcp!, 'ps', '--format', '{{.Names}}'])).stdout.trim(), 'over-tcp');
    const anonymous = await docker(['-H', dockerTcp!, 'ps']);
    assert.notEqual(anonymous.code, 0, 'no token, no answer over TCP');
    assert.match(anonymous.stderr, /authentication required/);
    await okAs(asTina, ['-H', dockerTcp!, 'rm', '-f', 'over-tcp']);
  });

  test('docker login keeps the credentials for the project: its pulls use them without X-Registry-Auth, another project\'s do not; wrong ones refused in dockerd\'s words; nimbus registry ls and logout', async () => {
    const password = loginPassword;
    const front = loginFront!;
    const image = `${front.host}/nimbus-test/busybox:single`;
    const loginConfig = join(config, 'login');
    const otherConfig = join(config, 'other-project');
    mkdirSync(loginConfig);
    mkdirSync(otherConfig);
    assert.equal((await d!.api('POST', '/projects', { name: 'reg-other' })).status, 201);
    // the local administrator acting in another project (X-Nimbus-Project), with no docker login of its own
    writeFileSync(join(otherConfig, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Project': 'reg-other' } }));
    const asOther = (args: string[]) => docker(args, { DOCKER_CONFIG: otherConfig });

    const before = await docker(['pull', image]);
    assert.notEqual(before.code, 0, 'the registry wants credentials');
    assert.match(before.stderr, /refused anonymous access/);
    const wrong = await docker(['login', front.host, '-u', FRONT_USER, '--password-stdin'], { DOCKER_CONFIG: loginConfig }, 'not-the-password\n');
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, new RegExp(`Error response from daemon: Get "http://${front.host.replace(/\./g, '\\.')}/v2/": unauthorized: authentication required`));
    assert.deepEqual((await d!.api('GET', '/registries')).body, [], 'nothing kept');
    const login = await docker(['login', front.host, '-u', FRONT_USER, '--password-stdin'], { DOCKER_CONFIG: loginConfig }, `${password}\n`);
    assert.equal(login.code, 0, login.stderr);
    assert.match(login.stdout, /Login Succeeded/);

    // the admin config has no auths for the registry: the CLI sends no credentials, the project's are used
    const pulled = await docker(['pull', image]);
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.match(pulled.stdout, /Digest: sha256:/);
    const other = await asOther(['pull', image]);
    assert.notEqual(other.code, 0, 'another project does not get them');
    assert.match(other.stderr, /refused anonymous access/);

    const ls = await d!.cli(['registry', 'ls']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, new RegExp(`^${front.host.replace(/\./g, '\\.')}\\s+${FRONT_USER}\\s`, 'm'));
    const listed = await d!.api<Array<Record<string, unknown>>>('GET', '/registries');
    assert.deepEqual(Object.keys(listed.body[0]!).sort(), ['createdAt', 'server', 'updatedAt', 'updatedBy', 'username'], 'server and user name, no password');
    // the nimbus CLI logs the other project in (checked against the registry as docker login is)
    const cliWrong = await d!.cli(['--project', 'reg-other', 'registry', 'login', front.host, '-u', FRONT_USER, '--password-stdin'], { input: 'nope\n' });
    assert.equal(cliWrong.code, 1);
    assert.match(cliWrong.stderr, /unauthorized: authentication required/);
    const cliLogin = await d!.cli(['--project', 'reg-other', 'registry', 'login', front.host, '-u', FRONT_USER, '--password-stdin'], { input: `${password}\n` });
    assert.equal(cliLogin.code, 0, cliLogin.stderr);
    const otherAgain = await asOther(['pull', image]);
    assert.equal(otherAgain.code, 0, otherAgain.stderr);

    const out = await d!.cli(['registry', 'logout', front.host]);
    assert.equal(out.code, 0, out.stderr);
    const after = await docker(['pull', image]);
    assert.notEqual(after.code, 0, 'logged out: the project\'s pulls have no credentials again');
    assert.match(after.stderr, /refused anonymous access/);
    assert.equal((await d!.cli(['registry', 'logout', front.host])).code, 1, 'nothing left to forget');
    // the password is sealed at rest and never logged
    for (const f of ['nimbus.db', 'nimbus.db-wal']) {
      const file = join(d!.home, f);
      if (existsSync(file)) assert.ok(!readFileSync(file).includes(password), `${f} holds the password in clear`);
    }
    assert.ok(!d!.output().includes(password), 'the daemon logged the password');
  });

  test('docker images --filter dangling, label, reference (globs), before, since; image prune --filter; unknown filters refused by name', async () => {
    const repo = 'nimbus-test/filters';
    await pushLabelledImage(registry!, repo, 'old', '2020-01-01T00:00:00Z', { tier: 'web' });
    await pushLabelledImage(registry!, repo, 'new', '2025-01-01T00:00:00Z', { tier: 'db' });
    const name = `${registry!.host}/${repo}`;
    await ok(['pull', `${name}:old`]);
    await ok(['pull', `${name}:new`]);
    const list = async (...args: string[]) => (await ok(['images', '--format', '{{.Tag}}', ...args])).trim().split('\n').filter(Boolean).sort();
    const mine = ['--filter', `reference=*/${repo}`];
    assert.deepEqual(await list(...mine), ['new', 'old']);
    assert.deepEqual(await list(`${registry!.host}/nimbus-test/fil*`), ['new', 'old'], 'the positional reference is a glob too');
    assert.deepEqual(await list('--filter', `reference=${repo}`), [], 'globs match the whole familiar name');
    assert.deepEqual(await list(...mine, '--filter', 'label=tier=web'), ['old']);
    assert.deepEqual(await list(...mine, '--filter', 'label=tier'), ['new', 'old']);
    assert.deepEqual(await list(...mine, '--filter', `since=${name}:old`), ['new']);
    assert.deepEqual(await list(...mine, '--filter', `before=${name}:new`), ['old']);
    const missing = await docker(['images', '--filter', 'since=no-such:image']);
    assert.match(missing.stderr, /No such image: no-such:image/);
    const unknown = await docker(['images', '--filter', 'color=blue']);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /Error response from daemon: invalid filter 'color'/);

    // the tag moves: the new image is left dangling
    const newId = (await ok(['image', 'inspect', '--format', '{{.Id}}', `${name}:new`])).trim();
    await ok(['tag', `${name}:old`, `${name}:new`]);
    const dangling = (await ok(['images', '--filter', 'dangling=true', '--no-trunc', '-q'])).trim().split('\n');
    assert.ok(dangling.includes(newId), `dangling: ${dangling.join(' ')}`);
    assert.doesNotMatch(await ok(['image', 'prune', '-f', '--filter', 'label=tier=web']), /deleted:/i, 'the dangling one is tier=db');
    assert.match(await ok(['image', 'prune', '-f', '--filter', 'label=tier=db']), new RegExp(`deleted: ${newId}`, 'i'));
    assert.ok(!(await ok(['images', '--filter', 'dangling=true', '--no-trunc', '-q'])).includes(newId));
    const badPrune = await docker(['image', 'prune', '-f', '--filter', 'reference=x']);
    assert.match(badPrune.stderr, /invalid filter 'reference'/);
    await ok(['rmi', `${name}:old`, `${name}:new`]);
  });
});
