/**
 * Image builds on an agent (src/agent/images/build.ts) with the real buildah, FROM an image the
 * agent pulled from the loopback registry fixture: a two-stage Dockerfile with a build arg, a RUN
 * step writing a file, COPY of context files and a .dockerignore; the built image's layers hold
 * what they should and not the ignored file. A failing RUN step fails the build with its output
 * and leaves nothing behind (no build directory, mount, cgroup or buildah process). A hostile
 * context (a path out of it, a write through a symlink) is refused before buildah runs. Nothing a
 * Dockerfile, a context or a base image says reaches the host: no RUN --mount (buildah 1.28 finds its
 * source on the host), no ONBUILD trigger with one, no Dockerfile through cpp, no ignore file read
 * through a symlink, and nothing fetched from the host's network by a build without it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { LocalAgent } from '../src/agent/local-agent.js';
import { compileOptions } from '../src/core/config.js';
import { hasCode } from '../src/core/errors.js';
import type { AgentImage, BuildRequest } from '../src/agent/agent.js';
import { blobOf, makeTar, manifestOf, pushBlob, pushManifest, type TarEntry } from '../scripts/fixtures/images.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';

const buildahHere = (() => {
  try {
    execFileSync('buildah', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/** Every file of the image's layers (later layers over earlier ones), with its bytes. */
async function imageFiles(agent: LocalAgent, img: AgentImage): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const content = (agent as unknown as { content: { readBlob(d: string): Promise<Buffer> } }).content;
  for (const l of img.layers) {
    let raw = await content.readBlob(l.digest);
    if (raw[0] === 0x1f && raw[1] === 0x8b) raw = gunzipSync(raw);
    const extract = tar.extract();
    const done = new Promise<void>((resolve, reject) => {
      extract.on('entry', (h, stream, next) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: unknown) => {
          chunks.push(c as Buffer);
        });
        stream.on('end', () => {
          const name = h.name.replace(/^\.?\//, '');
          if (h.type === 'file') files.set(name, Buffer.concat(chunks));
          next();
        });
      });
      extract.on('finish', resolve);
      extract.on('error', reject);
    });
    extract.end(raw);
    await done;
  }
  return files;
}

function leftovers(home: string): string[] {
  const out: string[] = [];
  const builds = join(home, 'builds');
  if (existsSync(builds) && readdirSync(builds).length) out.push(`build dirs: ${readdirSync(builds).join(',')}`);
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(builds));
  if (mounts.length) out.push(`mounts: ${mounts.join('; ')}`);
  // this agent's own cgroup parent: other suites' agents build beside it under /nimbus-build
  const mine = `nimbus-build/${createHash('sha256').update(home).digest('hex').slice(0, 12)}`;
  for (const c of ['memory', 'cpu', 'pids', 'unified']) if (existsSync(`/sys/fs/cgroup/${c}/${mine}`)) out.push(`cgroup ${c}/${mine}`);
  return out;
}

describe('image builds on an agent (buildah)', { skip: buildahHere ? false : 'buildah is not installed (scripts/bootstrap installs it)' }, () => {
  let reg: TestRegistry;
  let home: string;
  let agent: LocalAgent;
  let base: AgentImage;
  let baseRef: string;
  before(async () => {
    reg = await startTestRegistryWithImages();
    home = mkdtempSync(join(tmpdir(), 'nimbus-build-'));
    agent = await LocalAgent.create(compileOptions({ home, warmPerImage: 0 }, {}));
    baseRef = `${reg.host}/nimbus-test/busybox:latest`;
    base = await agent.pullImage(baseRef, { insecureRegistries: [reg.host] }, () => undefined);
  });
  after(async () => {
    await agent?.close();
    await reg?.stop();
    rmSync(home, { recursive: true, force: true });
  });

  const request = (over: Partial<BuildRequest> = {}): BuildRequest => ({
    id: `b${Math.random().toString(36).slice(2, 10)}`,
    projectId: 'p1',
    dockerfile: 'Dockerfile',
    buildArgs: {},
    network: 'none',
    baseImages: [{ name: baseRef, manifestDigest: base.manifestDigest }],
    resources: { cpus: 1, memoryBytes: 512 * 1024 * 1024 },
    ...over,
  });

  test('a two-stage build with a build arg, a RUN step, COPY and .dockerignore; nothing left after', async () => {
    const dockerfile = [
      `FROM ${baseRef} AS builder`,
      'ARG GREETING=unset',
      'RUN echo "built with $GREETING" > /built.txt && (wget -q -T 2 -O- http://127.0.0.1:1/ 2>&1 || echo "no network") >> /built.txt',
      `FROM ${baseRef}`,
      'COPY --from=builder /built.txt /built.txt',
      'COPY . /ctx/',
      'CMD ["cat", "/built.txt"]',
    ].join('\n');
    const context = await makeTar([
      { name: 'Dockerfile', type: 'file', content: dockerfile },
      { name: '.dockerignore', type: 'file', content: 'secret.txt\n' },
      { name: 'hello.txt', type: 'file', content: 'hello from the context\n' },
      { name: 'secret.txt', type: 'file', content: 'must not be in the image\n' },
      { name: 'sub/inner.txt', type: 'file', content: 'inner\n' },
    ]);
    const lines: string[] = [];
    const started = Date.now();
    const img = await agent.buildImage(request({ buildArgs: { GREETING: 'hello-nimbus' } }), Readable.from([context]), (p) => lines.push(p.line));
    const ms = Date.now() - started;
    assert.ok(lines.some((l) => /^\[1\/2\] STEP 1\/3: FROM /.test(l)), `step lines streamed: ${lines.join('\n')}`);
    assert.ok(lines.some((l) => /^\[1\/2\] STEP 3\/3: RUN /.test(l)));
    const files = await imageFiles(agent, img);
    assert.match(files.get('built.txt')?.toString() ?? '', /^built with hello-nimbus\n/);
    assert.match(files.get('built.txt')?.toString() ?? '', /no network|refused/, 'RUN steps run without the host network');
    assert.equal(files.get('ctx/hello.txt')?.toString(), 'hello from the context\n');
    assert.equal(files.get('ctx/sub/inner.txt')?.toString(), 'inner\n');
    assert.equal(files.has('ctx/secret.txt'), false, '.dockerignore is honoured');
    assert.ok(files.has('bin/busybox'), 'the FROM image is the base');
    assert.deepEqual(img.config.config?.Cmd, ['cat', '/built.txt']);
    assert.deepEqual(leftovers(home), []);
    console.log(`# a two-stage build took ${ms} ms`);
  });

  test('FROM by digest, and FROM an ARG: the images handed over are found by buildah without a registry', async () => {
    const byDigest = `${reg.host}/nimbus-test/busybox@${base.manifestDigest}`;
    const context = await makeTar([{ name: 'Dockerfile', type: 'file', content: `ARG BASE\nFROM $BASE\nRUN echo digest-ok > /d\n` }]);
    const img = await agent.buildImage(request({ buildArgs: { BASE: byDigest }, baseImages: [{ name: byDigest, manifestDigest: base.manifestDigest }] }), Readable.from([context]), () => undefined);
    assert.equal((await imageFiles(agent, img)).get('d')?.toString(), 'digest-ok\n');
    assert.deepEqual(leftovers(home), []);
  });

  test('a failing RUN step fails the build with its output and leaves nothing behind', async () => {
    const context = await makeTar([
      { name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nRUN echo "boom-output-1234" && exit 3\n` },
    ]);
    const lines: string[] = [];
    await assert.rejects(agent.buildImage(request(), Readable.from([context]), (p) => lines.push(p.line)), (e: unknown) => {
      assert.ok(hasCode(e, 'InvalidArgument'), String(e));
      assert.match((e as Error).message, /the build failed at STEP 2\/2: RUN/);
      assert.match((e as Error).message, /boom-output-1234/);
      return true;
    });
    assert.ok(lines.includes('boom-output-1234'), 'the step output streamed');
    assert.deepEqual(leftovers(home), []);
  });

  test('the whole build runs in its cgroup with the memory it was given: a RUN step over it is killed', async () => {
    const context = await makeTar([{
      name: 'Dockerfile', type: 'file',
      content: `FROM ${baseRef}\nRUN grep -q "memory:/nimbus-build/" /proc/self/cgroup && echo in-the-build-cgroup\nRUN head -c 400000000 /dev/zero | tail > /dev/null && echo survived\n`,
    }]);
    const lines: string[] = [];
    await assert.rejects(agent.buildImage(request({ resources: { cpus: 1, memoryBytes: 96 * 1024 * 1024 } }), Readable.from([context]), (p) => lines.push(p.line)), /the build failed at STEP 3\/3/);
    assert.ok(lines.includes('in-the-build-cgroup'), lines.join('\n'));
    assert.ok(!lines.includes('survived'), 'the step over the memory limit was killed');
    assert.deepEqual(leftovers(home), []);
  });

  test('a build whose caller goes away mid-RUN is killed and leaves nothing (no process, runc state, mount, cgroup)', async () => {
    const context = await makeTar([{ name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nRUN echo sleeping-now && sleep 6017\n` }]);
    const ac = new AbortController();
    const runcBefore = spawnSync('runc', ['list', '-q']).stdout.toString();
    const started = Date.now();
    await assert.rejects(agent.buildImage(request(), Readable.from([context]), (p) => {
      if (p.line === 'sleeping-now') setTimeout(() => ac.abort(), 200);
    }, ac.signal), (e: unknown) => hasCode(e, 'Unavailable') && /cancelled/.test(String(e)));
    assert.ok(Date.now() - started < 60_000, 'the RUN step did not run its course');
    assert.equal(spawnSync('pgrep', ['-f', 'sleep 6017']).status, 1, 'the RUN step\'s process is gone');
    assert.equal(spawnSync('runc', ['list', '-q']).stdout.toString(), runcBefore, 'no runc container left in its default root');
    assert.deepEqual(leftovers(home), []);
  });

  test('what an agent that died mid-build left (its directory, a mount, a process in its cgroup) is removed before its next build', async (t) => {
    const home2 = mkdtempSync(join(tmpdir(), 'nimbus-build-sweep-'));
    const left = join(home2, 'builds', 'p9', 'bdead', 'storage', 'overlay');
    mkdirSync(left, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'leftover', left]);
    const cg = `/sys/fs/cgroup/memory/nimbus-build/${createHash('sha256').update(home2).digest('hex').slice(0, 12)}/bdead`;
    mkdirSync(cg, { recursive: true });
    const sleeper = spawn('/bin/sh', ['-c', `echo $$ > ${cg}/cgroup.procs && exec sleep 1000`], { stdio: 'ignore', detached: true });
    const exited = new Promise((r) => sleeper.once('exit', r));
    let agent2: LocalAgent | undefined;
    t.after(async () => {
      await agent2?.close(); // before its home goes: its warm-up writes there
      try {
        process.kill(sleeper.pid!, 'SIGKILL');
      } catch {
        /* gone: the sweep did it */
      }
      spawnSync('umount', ['-l', left]);
      for (const d of [cg, join(cg, '..'), join(cg, '../..')]) spawnSync('rmdir', [d]);
      rmSync(home2, { recursive: true, force: true });
    });
    for (let i = 0; i < 50 && !readFileSync(`${cg}/cgroup.procs`, 'utf8').trim(); i++) await new Promise((r) => setTimeout(r, 20));
    agent2 = await LocalAgent.create(compileOptions({ home: home2, warmPerImage: 0 }, {}));
    const base2 = await agent2.pullImage(baseRef, { insecureRegistries: [reg.host] }, () => undefined);
    const context = await makeTar([{ name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nRUN true\n` }]);
    await agent2.buildImage(request({ baseImages: [{ name: baseRef, manifestDigest: base2.manifestDigest }] }), Readable.from([context]), () => undefined);
    await exited;
    assert.equal(existsSync(join(home2, 'builds', 'p9')), false, 'the leftover directory went');
    assert.equal(readFileSync('/proc/self/mountinfo', 'utf8').includes(left), false, 'its mount went');
    assert.equal(existsSync(cg), false, 'its cgroup went');
    assert.deepEqual(leftovers(home2), []);
  });

  test('a hostile context is refused before buildah runs: a path out of it, a write through a symlink', async () => {
    const escape = await makeTar([{ name: '../evil', type: 'file', content: 'x' }, { name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\n` }]);
    await assert.rejects(agent.buildImage(request(), Readable.from([escape]), () => undefined), /outside the context/);
    const through = await makeTar([
      { name: 'link', type: 'symlink', linkname: '/tmp' },
      { name: 'link/evil', type: 'file', content: 'x' },
      { name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\n` },
    ]);
    await assert.rejects(agent.buildImage(request(), Readable.from([through]), () => undefined), /through a symlink/);
    assert.equal(existsSync('/tmp/evil'), false);
    const dfLink = await makeTar([{ name: 'Dockerfile', type: 'symlink', linkname: '/etc/passwd' }]);
    await assert.rejects(agent.buildImage(request(), Readable.from([dfLink]), () => undefined), /symlink/);
    // a symlink in the context to a host file: COPY resolves it inside the context, never on the host
    const host = readFileSync('/etc/hostname');
    const leak = await makeTar([
      { name: 'leak', type: 'symlink', linkname: '/etc/hostname' },
      { name: 'up', type: 'symlink', linkname: '../../../../../../../../etc/hostname' },
      { name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nCOPY leak up /got/\n` },
    ]);
    const copied = await agent.buildImage(request(), Readable.from([leak]), () => undefined).catch((e: unknown) => e);
    console.log(`# COPY of symlinks to host files: ${copied instanceof Error ? `refused (${copied.message.slice(0, 600)})` : 'built'}`);
    if (!(copied instanceof Error)) {
      const files = await imageFiles(agent, copied as AgentImage);
      for (const [name, bytes] of files) assert.ok(!name.startsWith('got/') || !bytes.equals(host), `${name} holds the host's /etc/hostname`);
    }
    // buildah would fetch a remote ADD from the host's network, whatever the RUN steps get
    const remote = await makeTar([{ name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nARG U=http://169.254.169.254/latest\nADD $U /meta\n` }]);
    await assert.rejects(agent.buildImage(request(), Readable.from([remote]), () => undefined), (e: unknown) => hasCode(e, 'PermissionDenied') && /169\.254/.test(String(e)));
    assert.deepEqual(leftovers(home), []);
  });

  /** An image of the registry fixture's busybox whose config says more (ONBUILD triggers, an environment), pulled onto the agent. */
  const baseWith = async (repo: string, config: Record<string, unknown>, docker: boolean): Promise<BuildRequest['baseImages'][number]> => {
    const amd = reg.images.amd64;
    const cfg = JSON.parse(amd.config.data.toString()) as { config?: Record<string, unknown> };
    cfg.config = { ...(cfg.config ?? {}), ...config };
    const configBlob = blobOf(Buffer.from(JSON.stringify(cfg)), docker ? 'application/vnd.docker.container.image.v1+json' : amd.config.mediaType);
    const layers = docker ? amd.layers.map((l) => ({ ...l, mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip' })) : amd.layers;
    const manifest = docker
      ? blobOf(Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
        config: { mediaType: configBlob.mediaType, digest: configBlob.digest, size: configBlob.size },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      })), 'application/vnd.docker.distribution.manifest.v2+json')
      : manifestOf(configBlob, layers);
    for (const b of [configBlob, ...amd.layers]) await pushBlob(reg.host, repo, b);
    await pushManifest(reg.host, repo, 'latest', manifest);
    const name = `${reg.host}/${repo}:latest`;
    const img = await agent.pullImage(name, { insecureRegistries: [reg.host] }, () => undefined);
    return { name, manifestDigest: img.manifestDigest };
  };

  test('a RUN step reaches no host path: RUN --mount however spelt, and an ONBUILD trigger with one, are refused', async (t) => {
    const hostDir = mkdtempSync(join(tmpdir(), 'nimbus-build-host-'));
    t.after(() => rmSync(hostDir, { recursive: true, force: true }));
    writeFileSync(join(hostDir, 'secret.txt'), 'HOST-FILE-7c1e\n');
    // buildah 1.28 joins a cache mount's id onto a host directory as it is
    const cacheId = `${'../'.repeat(16)}${hostDir.slice(1)}`;
    const cases: [string, TarEntry[]][] = [
      ['a bind of a context symlink', [
        { name: 's', type: 'symlink', linkname: hostDir },
        { name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nRUN --mount=type=bind,source=s,target=/m cat /m/secret.txt\n` },
      ]],
      ['a cache id out of the cache directory', [{ name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nRUN --mount=type=cache,id=${cacheId},target=/m cat /m/secret.txt\n` }]],
      ['a bind of a symlink another stage made', [{
        name: 'Dockerfile', type: 'file',
        content: `FROM ${baseRef} AS s\nRUN ln -s ${hostDir} /l\nFROM ${baseRef}\nRUN --mount=type=bind,from=s,source=/l,target=/m cat /m/secret.txt\n`,
      }]],
      ['a flag split over a continuation', [{ name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nRUN --mo\\\n# a comment\nunt=type=cache,id=${cacheId},target=/m cat /m/secret.txt\n` }]],
      ['a flag split by the escape directive\'s character', [{ name: 'Dockerfile', type: 'file', content: `# escape=\`\nFROM ${baseRef}\nRUN \`\n  --mount=type=cache,id=${cacheId},target=/m cat /m/secret.txt\n` }]],
      // buildah drops an ONBUILD line from an OCI-format stage (a warning) today; refused all the same
      ['an ONBUILD trigger of an earlier stage', [{
        name: 'Dockerfile', type: 'file',
        content: `FROM ${baseRef} AS s\nONBUILD RUN --mount=type=cache,id=${cacheId},target=/m cat /m/secret.txt\nFROM s\nRUN true\n`,
      }]],
    ];
    const refused = async (what: string, context: Buffer, req: BuildRequest) => {
      const lines: string[] = [];
      await assert.rejects(agent.buildImage(req, Readable.from([context]), (p) => lines.push(p.line)), (e: unknown) => {
        assert.ok(hasCode(e, 'InvalidArgument'), `${what}: ${String(e)}`);
        assert.match((e as Error).message, /RUN takes no flags/, what);
        return true;
      }, what);
      assert.ok(!lines.some((l) => l.includes('HOST-FILE-7c1e')), `${what}: a RUN step read the host's file`);
    };
    for (const [what, entries] of cases) await refused(what, await makeTar(entries), request());
    // a docker-format base image's ONBUILD trigger: buildah runs it as the build's first step
    const base = await baseWith('nimbus-test/onbuild', { OnBuild: [`RUN --mount=type=cache,id=${cacheId},target=/m cat /m/secret.txt`] }, true);
    await refused('a base image\'s ONBUILD trigger', await makeTar([{ name: 'Dockerfile', type: 'file', content: `FROM ${base.name}\nRUN true\n` }]), request({ baseImages: [base] }));
    assert.deepEqual(leftovers(home), []);
  });

  test('a build without the network fetches nothing from the host\'s network, however its remote ADD is spelt', async (t) => {
    let fetched = 0;
    const server = createServer((_req, res) => {
      fetched++;
      res.end('HOST-NETWORK-5b2d\n');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.after(() => server.close());
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const base = await baseWith('nimbus-test/env', { Env: ['PATH=/bin', `U=${url}/from-the-base-image`] }, false);
    const cases: [string, string, BuildRequest['baseImages'][number]?][] = [
      ['split over a continuation', `FROM ${baseRef}\nADD http:/\\\n/${url.slice(7)}/continued /x\nRUN cat /x\n`],
      ['an ENV of the legacy form', `FROM ${baseRef}\nENV U ${url}/legacy-env\nADD $U /x\nRUN cat /x\n`],
      ['quoted', `FROM ${baseRef}\nADD "${url}/quoted" /x\nRUN cat /x\n`],
      ['escaped', `FROM ${baseRef}\nADD http\\://${url.slice(7)}/escaped /x\nRUN cat /x\n`],
      ['an ENV of the base image', `FROM ${base.name}\nADD $U /x\nRUN cat /x\n`, base],
    ];
    for (const [what, dockerfile, from] of cases) {
      const lines: string[] = [];
      const context = await makeTar([{ name: 'Dockerfile', type: 'file', content: dockerfile }]);
      const got = await agent.buildImage(request(from ? { baseImages: [from] } : {}), Readable.from([context]), (p) => lines.push(p.line)).catch((e: unknown) => e);
      assert.ok(got instanceof Error, `${what}: the build fetched its remote ADD`);
      assert.ok(!lines.some((l) => l.includes('HOST-NETWORK-5b2d')), what);
    }
    assert.equal(fetched, 0, 'nothing reached the host\'s loopback');
    assert.deepEqual(leftovers(home), []);
  });

  test('buildah reads no host file through the Dockerfile\'s name or the ignore files: *.in (cpp) and symlinked ignore files are refused', async (t) => {
    const hostDir = mkdtempSync(join(tmpdir(), 'nimbus-build-host-'));
    t.after(() => rmSync(hostDir, { recursive: true, force: true }));
    writeFileSync(join(hostDir, 'secret.txt'), 'HOST-FILE-7c1e\n');
    const lines: string[] = [];
    const cpp = await makeTar([{ name: 'Dockerfile.in', type: 'file', content: `FROM ${baseRef}\n#include "${hostDir}/secret.txt"\n` }]);
    await assert.rejects(agent.buildImage(request({ dockerfile: 'Dockerfile.in' }), Readable.from([cpp]), (p) => lines.push(p.line)), (e: unknown) => {
      assert.ok(hasCode(e, 'InvalidArgument'), String(e));
      assert.match((e as Error).message, /C preprocessor/);
      assert.doesNotMatch((e as Error).message, /HOST-FILE-7c1e/);
      return true;
    });
    assert.ok(!lines.some((l) => l.includes('HOST-FILE-7c1e')), 'cpp included the host\'s file');
    // buildah reads the ignore file on the host: a file of the context named like a host file's line is left out
    for (const ignore of ['.dockerignore', '.containerignore', 'Dockerfile.dockerignore']) {
      const context = await makeTar([
        { name: ignore, type: 'symlink', linkname: join(hostDir, 'secret.txt') },
        { name: 'HOST-FILE-7c1e', type: 'file', content: 'x' },
        { name: 'Dockerfile', type: 'file', content: `FROM ${baseRef}\nCOPY . /ctx/\n` },
      ]);
      const got = await agent.buildImage(request(), Readable.from([context]), () => undefined).catch((e: unknown) => e);
      if (!(got instanceof Error)) {
        const files = await imageFiles(agent, got as AgentImage);
        assert.fail(`${ignore} as a symlink was taken (the host file ${files.has('ctx/HOST-FILE-7c1e') ? 'was not' : 'was'} read as ignore patterns)`);
      }
      assert.ok(hasCode(got, 'InvalidArgument') && /is a symlink/.test(got.message), `${ignore}: ${String(got)}`);
    }
    assert.deepEqual(leftovers(home), []);
  });
});
