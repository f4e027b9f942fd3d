/**
 * Image builds end to end against a real nimbusd: the docker CLI's legacy builder
 * (`DOCKER_BUILDKIT=0 docker build`) and `nimbus build`, FROM an image of the loopback registry
 * fixture the build pulls through Nimbus; the built image runs. A build over the project's memory
 * quota is refused with the ledger's explanation; a failing RUN step fails the build with its
 * output and leaves nothing behind (no build directory, mount, cgroup, quota held); an image built
 * in one project is not visible in another; a reader may not build.
 */
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../src/core/exec.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';

const DOCKER = [process.env.NIMBUS_DOCKER_CLI ?? '', '/usr/bin/docker', '/usr/local/bin/docker'].find((p) => p && existsSync(p));
const buildahHere = (() => {
  try {
    execFileSync('buildah', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

let d: DaemonProcess;
let registry: TestRegistry;
let tmp: string;
let BASE: string;

async function docker(args: string[], configDir = join(tmp, 'admin')): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await run(DOCKER!, args, {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: tmp, DOCKER_HOST: `unix://${d.home}/docker.sock`, DOCKER_CONFIG: configDir, DOCKER_BUILDKIT: '0' },
    timeoutMs: 120_000,
  });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** A context directory with these files. */
function context(name: string, files: Record<string, string>): string {
  const dir = join(tmp, name);
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(join(dir, f, '..'), { recursive: true });
    writeFileSync(join(dir, f), text);
  }
  return dir;
}

/** What a build may have left on the host: its directories, mounts under them, its cgroups. */
function leftovers(): string[] {
  const out: string[] = [];
  const builds = join(d.home, 'builds');
  if (existsSync(builds) && readdirSync(builds).length) out.push(`build dirs: ${readdirSync(builds).join(',')}`);
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(builds));
  if (mounts.length) out.push(`mounts: ${mounts.length}`);
  // this agent's own cgroup parent: other suites' agents build beside it under /nimbus-build
  const mine = `nimbus-build/${createHash('sha256').update(d.home).digest('hex').slice(0, 12)}`;
  for (const c of ['memory', 'cpu', 'pids', 'unified']) if (existsSync(`/sys/fs/cgroup/${c}/${mine}`)) out.push(`cgroup ${c}/${mine}`);
  return out;
}

const twoStage = () => [
  `FROM ${BASE} AS builder`,
  'ARG GREETING=unset',
  'RUN echo "built with $GREETING" > /built.txt',
  `FROM ${BASE}`,
  'COPY --from=builder /built.txt /built.txt',
  'COPY . /ctx/',
  'CMD ["cat", "/built.txt"]',
].join('\n');

describe('image builds against a real nimbusd', { skip: !buildahHere ? 'buildah is not installed (scripts/bootstrap installs it)' : !DOCKER ? 'no docker CLI' : false, concurrency: false, timeout: 300_000 }, () => {
  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'nimbus-build-e2e-'));
    mkdirSync(join(tmp, 'admin'));
    registry = await startTestRegistryWithImages();
    BASE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
  });
  after(async () => {
    try {
      await d?.destroy();
    } finally {
      await registry?.stop();
      rmSync(tmp, { recursive: true, force: true });
    }
  }, { timeout: 60_000 });

  test('DOCKER_BUILDKIT=0 docker build: steps stream, the FROM image is pulled through Nimbus, the image runs', async () => {
    const dir = context('docker-ctx', {
      Dockerfile: twoStage(),
      '.dockerignore': 'secret.txt\n',
      'hello.txt': 'hello from the context\n',
      'secret.txt': 'not for the image\n',
    });
    const started = Date.now();
    const b = await docker(['build', '-t', 'built:v1', '--build-arg', 'GREETING=docker-cli', dir]);
    const ms = Date.now() - started;
    assert.equal(b.code, 0, `${b.stdout}\n${b.stderr}`);
    assert.match(b.stdout, /^Step 1\/7 : FROM \S+ AS builder$/m);
    assert.match(b.stdout, /^Step 3\/7 : RUN echo/m);
    assert.match(b.stdout, /^Step 7\/7 : CMD/m);
    assert.match(b.stdout, /Pulling \S+ through Nimbus/);
    assert.match(b.stdout, /^Successfully built [0-9a-f]{12}$/m);
    assert.match(b.stdout, /^Successfully tagged built:v1$/m);
    assert.doesNotMatch(b.stdout, /nimbus-build-|Copying blob/, 'buildah\'s own commit is not shown');
    const ran = await docker(['run', '--rm', 'built:v1']);
    assert.equal(ran.code, 0, ran.stderr);
    assert.equal(ran.stdout, 'built with docker-cli\n');
    assert.equal((await docker(['run', '--rm', 'built:v1', 'cat', '/ctx/hello.txt'])).stdout, 'hello from the context\n');
    const secret = await docker(['run', '--rm', 'built:v1', 'ls', '/ctx']);
    assert.doesNotMatch(secret.stdout, /secret/, '.dockerignore honoured');
    assert.match((await docker(['images', '--format', '{{.Repository}}:{{.Tag}}'])).stdout, /^built:v1$/m);
    const quiet = await docker(['build', '-q', '--build-arg', 'GREETING=quiet', dir]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.match(quiet.stdout, /^sha256:[0-9a-f]{64}\n$/, 'docker build -q prints the image id alone');
    assert.deepEqual(leftovers(), []);
    console.log(`# docker build of a two-stage Dockerfile took ${ms} ms (FROM pulled through Nimbus)`);
  });

  test('nimbus build -t -f --build-arg --target: progress shown, the image is the project\'s', async () => {
    const dir = context('cli-ctx', {
      'docker/Build.file': twoStage(),
      'hello.txt': 'hi\n',
    });
    const started = Date.now();
    const b = await d.cli(['build', '-t', 'cli-built:v2', '-f', join(dir, 'docker/Build.file'), '--build-arg', 'GREETING=nimbus-cli', '--target', 'builder', dir]);
    const ms = Date.now() - started;
    assert.equal(b.code, 0, `${b.stdout}\n${b.stderr}`);
    assert.match(b.stdout, /^Step 1\/7 : FROM /m);
    assert.match(b.stdout, /^Successfully tagged docker\.io\/library\/cli-built:v2$/m);
    const img = await d.api<{ tags: string[]; config: { config?: { Cmd?: string[] } } }>('GET', '/images/cli-built:v2');
    assert.equal(img.status, 200);
    const ran = await docker(['run', '--rm', 'cli-built:v2', 'cat', '/built.txt']);
    assert.equal(ran.stdout, 'built with nimbus-cli\n');
    assert.equal((await docker(['run', '--rm', 'cli-built:v2', 'ls', '/ctx'])).code !== 0, true, '--target stopped at the builder stage');
    console.log(`# nimbus build (FROM already in the project) took ${ms} ms`);
  });

  test('a failing RUN step fails the build with its output; nothing is left and the quota is given back', async () => {
    const dir = context('fail-ctx', { Dockerfile: `FROM ${BASE}\nRUN echo "failing-step-output" && exit 7\n` });
    const b = await docker(['build', '-t', 'broken:v1', dir]);
    assert.notEqual(b.code, 0);
    assert.match(b.stdout, /failing-step-output/, 'the step\'s output streamed');
    assert.match(b.stderr, /the build failed at STEP 2\/2: RUN/);
    assert.match(b.stderr, /failing-step-output/);
    assert.notEqual((await docker(['image', 'inspect', 'broken:v1'])).code, 0);
    assert.deepEqual(leftovers(), []);
    const q = await d.api<{ resources: Record<string, { used: number }> }>('GET', '/quota/default');
    assert.equal(q.body.resources.memory!.used, 0, `no memory held: ${JSON.stringify(q.body.resources)}`);
  });

  test('a build over the project\'s memory quota is refused with the ledger\'s explanation', async () => {
    assert.equal((await d.api('POST', '/projects', { name: 'small' })).status, 201);
    assert.equal((await d.api('PUT', '/quota/small', { hard: { memory: 512 } })).status, 200);
    const dir = context('quota-ctx', { Dockerfile: `FROM ${BASE}\nRUN true\n` });
    const refused = await d.cli(['build', '--project', 'small', '-t', 'big:v1', dir]);
    assert.equal(refused.code, 1, refused.stdout);
    assert.match(refused.stderr, /QuotaExceeded/);
    assert.match(refused.stderr, /memory: need 1024, free 512/);
    // within it: admitted
    const fits = await d.cli(['build', '--project', 'small', '--memory', '256m', '-t', 'small:v1', dir]);
    assert.equal(fits.code, 0, fits.stderr);
    const q = await d.api<{ resources: Record<string, { used: number }> }>('GET', '/quota/small');
    assert.equal(q.body.resources.memory!.used, 0, `the build's memory is given back once it ends: ${JSON.stringify(q.body.resources)}`);
    // it was held while the build ran: admitted (256 MiB, 1 CPU) and released, in the ledger's audit
    const audit = await d.api<{ kind: string; instance?: string; data?: { demand?: Record<string, number> } }[]>('GET', '/quota-audit?project=small');
    const admits = audit.body.filter((e) => e.kind === 'admit' && e.instance?.startsWith('build-'));
    assert.equal(admits.length, 1, JSON.stringify(audit.body));
    assert.deepEqual({ memory: admits[0]!.data?.demand?.memory, cpus: admits[0]!.data?.demand?.cpus }, { memory: 256, cpus: 1 });
    assert.ok(audit.body.some((e) => e.kind === 'release' && e.instance === admits[0]!.instance), 'and released');
    assert.deepEqual(leftovers(), []);
  });

  test('the build cache: a rebuild reuses every step, a changed file re-runs from its COPY on; never another project\'s; it goes with the images', async () => {
    const p = await d.api<{ id: string }>('POST', '/projects', { name: 'cached' });
    assert.equal(p.status, 201);
    const cfg = join(tmp, 'cached-cfg');
    mkdirSync(cfg);
    writeFileSync(join(cfg, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Project': 'cached' } }));
    const dir = context('cache-ctx', {
      Dockerfile: [`FROM ${BASE}`, 'RUN echo prepared > /prepared', 'COPY input.txt /input.txt', 'RUN cat /prepared /input.txt > /out'].join('\n'),
      'input.txt': 'one\n',
    });
    const build = async (tag: string, config = cfg, extra: string[] = []) => {
      const t0 = Date.now();
      const r = await docker(['build', ...extra, '-t', tag, dir], config);
      assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
      return { ms: Date.now() - t0, hits: r.stdout.match(/Using cache/g)?.length ?? 0 };
    };
    const id = async (tag: string) => (await docker(['image', 'inspect', '--format', '{{.Id}}', tag], cfg)).stdout.trim();
    const cold = await build('cached:v1');
    assert.equal(cold.hits, 0, 'a first build has nothing to reuse');
    const warm = await build('cached:v2');
    assert.equal(warm.hits, 3, 'RUN, COPY and RUN from the cache');
    assert.equal(await id('cached:v2'), await id('cached:v1'), 'the same image');
    assert.ok(warm.ms < cold.ms, `the cached build (${warm.ms} ms) is faster than the cold one (${cold.ms} ms)`);
    writeFileSync(join(dir, 'input.txt'), 'two\n');
    const changed = await build('cached:v3');
    assert.equal(changed.hits, 1, 'the RUN before the changed COPY only');
    assert.equal((await docker(['run', '--rm', 'cached:v3', 'cat', '/out'], cfg)).stdout, 'prepared\ntwo\n');
    // --no-cache: every step runs again, though the cache holds them all
    assert.equal((await build('cached:v4', cfg, ['--no-cache'])).hits, 0, 'docker build --no-cache reuses no step');
    assert.equal((await docker(['run', '--rm', 'cached:v4', 'cat', '/out'], cfg)).stdout, 'prepared\ntwo\n');
    // the same context in another project: nothing of this project's cache
    writeFileSync(join(dir, 'input.txt'), 'one\n');
    assert.equal((await build('other:v1', join(tmp, 'admin'))).hits, 0, 'the default project does not hit the cached project\'s steps');
    assert.equal((await docker(['rmi', 'other:v1'])).code, 0);
    const store = join(d.home, 'build-cache', p.body.id);
    assert.equal(readdirSync(store).length, 1, 'one store: one set of FROM images');
    // the images go, then the cache goes with them (garbage collection), and the project can go
    assert.equal((await docker(['rmi', 'cached:v1', 'cached:v2', 'cached:v3', 'cached:v4'], cfg)).code, 0);
    assert.equal(existsSync(store), false, 'the project\'s build cache went with its images');
    // the FROM image the build pulled into the project, and the network `docker run` made, go too
    assert.equal((await docker(['rmi', BASE], cfg)).code, 0);
    const rm = await d.api('DELETE', '/projects/cached');
    assert.equal(rm.status, 204, JSON.stringify(rm.body));
    assert.deepEqual(leftovers(), []);
    console.log(`# docker build cold ${cold.ms} ms, cached ${warm.ms} ms, one file changed ${changed.ms} ms`);
  });

  test('tenants: an image built in one project is not visible in another; a reader may not build', async () => {
    assert.equal((await d.api('POST', '/projects', { name: 'tenant' })).status, 201);
    assert.equal((await d.api('POST', '/users', { name: 'tina', password: 'tenant-password-1' })).status, 201);
    assert.equal((await d.api('PUT', '/projects/tenant/roles/tina', { role: 'member' })).status, 200);
    assert.equal((await d.api('POST', '/users', { name: 'rita', password: 'reader-password-1' })).status, 201);
    assert.equal((await d.api('PUT', '/projects/tenant/roles/rita', { role: 'reader' })).status, 200);
    const as = async (user: string, password: string) => {
      const login = await d.api<{ token: string }>('POST', '/auth/login', { user, password });
      const dir = join(tmp, user);
      mkdirSync(dir);
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ HttpHeaders: { 'X-Nimbus-Token': login.body.token, 'X-Nimbus-Project': 'tenant' } }));
      return dir;
    };
    const tina = await as('tina', 'tenant-password-1');
    const rita = await as('rita', 'reader-password-1');
    assert.notEqual((await docker(['image', 'inspect', 'built:v1'], tina)).code, 0, 'the default project\'s build is not the tenant\'s');
    assert.doesNotMatch((await docker(['images', '--format', '{{.Repository}}'], tina)).stdout, /built/);
    const dir = context('tenant-ctx', { Dockerfile: `FROM ${BASE}\nRUN echo tenant > /who\n` });
    const r = await docker(['build', '-t', 'tenant-built:v1', dir], rita);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /member|permission|denied/i);
    const hostNet = await docker(['build', '--network', 'host', dir], tina);
    assert.notEqual(hostNet.code, 0);
    assert.match(hostNet.stderr, /host network is for system administrators only/);
    const t = await docker(['build', '-t', 'tenant-built:v1', dir], tina);
    assert.equal(t.code, 0, t.stderr);
    assert.notEqual((await docker(['image', 'inspect', 'tenant-built:v1'])).code, 0, 'nor is the tenant\'s build the default project\'s');
    assert.deepEqual(leftovers(), []);
  });
});
