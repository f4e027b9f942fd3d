/**
 * `docker commit`, `docker export` and `docker import` through the real docker CLI against a real
 * nimbusd and the loopback registry fixture: a container's changes (a file added, one modified,
 * one of the image's deleted, a directory replaced) committed with --change, run again from the
 * new image; its filesystem exported as a tar and imported back as a one-layer image; a hostile
 * tarball and a URL refused; another project's container neither committed nor exported; a
 * reader of a project may not commit or import.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { run } from '../src/core/exec.js';
import { makeTar } from '../scripts/fixtures/images.js';
import type { DaemonProcess } from './helpers/daemon-process.js';
import { startDockerTenants, type DockerTenants } from './helpers/docker-tenants.js';
import { DOCKER_CLI, dockerCli, type DockerCli } from './helpers/docker-cli.js';

let env: DockerTenants | undefined;
let d: DaemonProcess;
let home: string;
let IMAGE: string;
/** The administrator in the default project, and the administrator acting in project "other". */
let admin: DockerCli;
let other: DockerCli;

/** A tar from headers given by hand (what a hostile client could send). */
async function tarOf(headers: Array<Parameters<tar.Pack['entry']>[0]>): Promise<Buffer> {
  const pack = tar.pack();
  for (const h of headers) pack.entry(h, '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

/** The names in a tar (leading "./" dropped, directories without their trailing "/"). */
async function tarNames(file: string): Promise<string[]> {
  const r = await run('tar', ['-tf', file]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.split('\n').filter(Boolean).map((n) => n.replace(/^\.\//, '').replace(/\/$/, '')).filter((n) => n && n !== '.');
}

describe('docker commit, export and import against nimbusd', { skip: DOCKER_CLI ? false : 'no docker CLI on this machine (apt-get install docker.io)', concurrency: false, timeout: 300_000 }, () => {
  before(async () => {
    env = await startDockerTenants('nimbus-docker-commit-');
    ({ d, home, image: IMAGE, admin, other } = env);
    // the container every test reads: changed as a tenant's would be, then left running
    await admin.ok(['run', '-d', '--name', 'box', '-e', 'FROM_RUN=1', IMAGE, 'sleep', '600']);
    await admin.ok(['exec', 'box', 'sh', '-c', [
      'echo added > /added.txt',
      'echo extra:x:2000: >> /etc/group',
      'rm /etc/nimbus-release',
      'rm -rf /home && mkdir /home && echo fresh > /home/only.txt',
    ].join(' && ')]);
  });
  after(() => env?.stop(), { timeout: 60_000 });

  test('docker commit: the writable layer (added, modified, deleted, a replaced directory) and --change, -m, -a; the new image runs', async () => {
    const id = (await admin.ok(['commit', '-c', 'CMD ["cat", "/added.txt"]', '-c', 'ENV COMMITTED=yes', '-c', 'LABEL stage=one', '-m', 'first commit', '-a', 'Tess Ter', 'box', 'committed:v1'])).trim();
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    assert.equal((await admin.ok(['inspect', '-f', '{{.State.Status}}', 'box'])).trim(), 'running', 'thawed after the commit');
    assert.equal((await admin.ok(['run', '--rm', 'committed:v1'])).trim(), 'added', 'the CMD of --change');
    const seen = await admin.ok(['run', '--rm', 'committed:v1', 'sh', '-c',
      'tail -n1 /etc/group; test -e /etc/nimbus-release && echo still-there || echo deleted; ls /home; echo "$COMMITTED $FROM_RUN"; cat /data/opaque/new.txt']);
    assert.deepEqual(seen.trim().split('\n'), ['extra:x:2000:', 'deleted', 'only.txt', 'yes 1', 'only this is visible']);
    const inspect = JSON.parse(await admin.ok(['image', 'inspect', 'committed:v1'])) as Array<{ Id: string; Author: string; Comment: string; Config: { Cmd: string[]; Env: string[]; Labels: Record<string, string> }; RootFS: { Layers: string[] } }>;
    const img = inspect[0]!;
    assert.equal(img.Id, id);
    assert.deepEqual(img.Config.Cmd, ['cat', '/added.txt']);
    assert.ok(img.Config.Env.includes('COMMITTED=yes') && img.Config.Env.includes('FROM_RUN=1'), img.Config.Env.join(' '));
    assert.equal(img.Config.Labels.stage, 'one');
    assert.equal(img.Author, 'Tess Ter');
    assert.equal(img.Comment, 'first commit');
    const base = JSON.parse(await admin.ok(['image', 'inspect', IMAGE])) as Array<{ RootFS: { Layers: string[] } }>;
    assert.deepEqual(img.RootFS.Layers.slice(0, -1), base[0]!.RootFS.Layers, 'the image\'s layers, then one more');
    assert.equal(img.RootFS.Layers.length, base[0]!.RootFS.Layers.length + 1);
    assert.match(await admin.ok(['images', '--format', '{{.Repository}}:{{.Tag}}']), /^committed:v1$/m);
    // saved as any image: the archive's manifest lists the new layer after the image's
    const saved = join(home, 'committed.tar');
    await admin.ok(['save', '-o', saved, 'committed:v1']);
    const savedManifest = JSON.parse((await run('tar', ['-xOf', saved, 'manifest.json'])).stdout) as Array<{ RepoTags: string[]; Layers: string[] }>;
    assert.deepEqual(savedManifest[0]!.RepoTags, ['committed:v1']);
    assert.equal(savedManifest[0]!.Layers.length, img.RootFS.Layers.length);
    // a commit of the commit's container: layers stack
    await admin.ok(['run', '--name', 'second', 'committed:v1', 'sh', '-c', 'rm /added.txt']);
    await admin.ok(['commit', '--pause=false', 'second', 'committed:v2']);
    assert.equal((await admin.ok(['run', '--rm', 'committed:v2', 'sh', '-c', 'test -e /added.txt && echo there || echo gone'])).trim(), 'gone');
    await admin.ok(['rm', 'second']);
  });

  test('docker commit refuses a --change it does not take, naming it; an unknown container is Docker\'s words', async () => {
    const bad = await admin.run(['commit', '-c', 'RUN echo hi', 'box', 'never:v1']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /RUN is not a valid change command/);
    const later = await admin.run(['commit', '-c', 'HEALTHCHECK CMD true', 'box', 'never:v1']);
    assert.notEqual(later.code, 0);
    assert.match(later.stderr, /HEALTHCHECK is not supported by Nimbus yet/);
    const none = await admin.run(['commit', 'nosuchbox', 'never:v1']);
    assert.notEqual(none.code, 0);
    assert.match(none.stderr, /No such container: nosuchbox/);
    assert.doesNotMatch(await admin.ok(['images', '--format', '{{.Repository}}']), /^never$/m);
  });

  test('docker export: the merged filesystem as a tar (deletions applied, mounts not included); docker import brings it back as a one-layer image', async () => {
    const out = join(home, 'box.tar');
    await admin.ok(['export', '-o', out, 'box']);
    const names = await tarNames(out);
    for (const want of ['added.txt', 'etc/group', 'bin/busybox', 'home/only.txt', 'data/opaque/new.txt']) assert.ok(names.includes(want), `${want} in the export`);
    for (const gone of ['etc/nimbus-release', 'home/app', 'data/removed.txt', 'data/opaque/old.txt']) assert.ok(!names.includes(gone), `${gone} not in the export`);
    assert.ok(!names.some((n) => n.startsWith('proc/') || n.includes('.wh.')), 'no mount content, no whiteouts');
    const group = await run('tar', ['-xOf', out, './etc/group']);
    assert.match(group.stdout, /extra:x:2000:/);

    const imported = (await admin.ok(['import', '-c', 'CMD ["cat", "/home/only.txt"]', '-c', 'ENV IMPORTED=1', '-m', 'from the export', out, 'imported:v1'])).trim();
    assert.match(imported, /^sha256:[0-9a-f]{64}$/);
    assert.equal((await admin.ok(['run', '--rm', 'imported:v1'])).trim(), 'fresh');
    assert.equal((await admin.ok(['run', '--rm', 'imported:v1', 'sh', '-c', 'echo $IMPORTED; tail -n1 /etc/group; test -e /etc/nimbus-release || echo deleted'])).trim(), '1\nextra:x:2000:\ndeleted');
    const inspect = JSON.parse(await admin.ok(['image', 'inspect', 'imported:v1'])) as Array<{ Comment: string; RootFS: { Layers: string[] } }>;
    assert.equal(inspect[0]!.RootFS.Layers.length, 1);
    assert.equal(inspect[0]!.Comment, 'from the export');
    // gzip-compressed, from stdin
    const gz = join(home, 'box.tar.gz');
    writeFileSync(gz, gzipSync(readFileSync(out)));
    const viaStdin = await run('sh', ['-c', `"${DOCKER_CLI}" import - imported:gz < "${gz}"`], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: join(home, 'admin'), DOCKER_HOST: `unix://${d.home}/docker.sock`, DOCKER_CONFIG: join(home, 'admin') },
    });
    assert.equal(viaStdin.code, 0, viaStdin.stderr);
    assert.equal((await admin.ok(['run', '--rm', 'imported:gz', 'cat', '/added.txt'])).trim(), 'added');
  });

  test('nimbus commit, nimbus export and nimbus image import-rootfs do the same over the Nimbus API', async () => {
    const cli = async (args: string[]) => {
      const r = await d.cli(args);
      assert.equal(r.code, 0, `nimbus ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const id = (await cli(['commit', '-c', 'CMD ["cat", "/etc/group"]', '-c', 'USER 1000', '-m', 'via nimbus', '-a', 'cli', 'box', 'cli-made:v1'])).trim();
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    assert.match(await admin.ok(['run', '--rm', 'cli-made:v1']), /extra:x:2000:/);
    const [inspect] = JSON.parse(await cli(['image', 'inspect', 'cli-made:v1', '-o', 'json'])) as Array<{ config: { config: { User: string; Cmd: string[] }; author: string; comment: string } }>;
    assert.equal(inspect!.config.config.User, '1000');
    assert.equal(inspect!.config.author, 'cli');
    assert.equal(inspect!.config.comment, 'via nimbus');
    const bad = await d.cli(['commit', '-c', 'COPY a b', 'box']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /COPY is not a valid change command/);

    const out = join(home, 'cli-export.tar');
    await cli(['export', 'box', '-o', out]);
    const names = await tarNames(out);
    assert.ok(names.includes('added.txt') && !names.includes('etc/nimbus-release'), names.slice(0, 20).join(' '));
    const imported = (await cli(['image', 'import-rootfs', '-c', 'CMD ["cat", "/added.txt"]', out, 'cli-imported:v1'])).trim();
    assert.match(imported, /^sha256:[0-9a-f]{64}$/);
    assert.equal((await admin.ok(['run', '--rm', 'cli-imported:v1'])).trim(), 'added');
    const missing = await d.cli(['export', 'nosuchbox', '-o', join(home, 'none.tar')]);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /nosuchbox/);
  });

  test('docker import refuses a hostile tarball (../ escape, device node), a file that is no tar, and a URL; no image is left of them', async () => {
    const escape = join(home, 'escape.tar');
    writeFileSync(escape, await makeTar([{ name: 'ok.txt', type: 'file', content: 'fine\n' }, { name: '../../escaped.txt', type: 'file', content: 'out\n' }]));
    const r = await admin.run(['import', escape, 'evil:v1']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /escapes the layer root/);
    // the refused layer went with the collection after the refusal: no blob holds the tarball's bytes
    const layerHex = createHash('sha256').update(readFileSync(escape)).digest('hex');
    assert.ok(!existsSync(join(d.home, 'content', 'blobs', 'sha256', layerHex)), 'the refused layer is not kept');
    assert.ok(!existsSync(join(d.home, '..', 'escaped.txt')) && !existsSync(join(d.home, 'escaped.txt')), 'nothing written outside');
    const device = join(home, 'device.tar');
    writeFileSync(device, await tarOf([{ name: 'mem', type: 'character-device', devmajor: 1, devminor: 1 }]));
    const dev = await admin.run(['import', device, 'evil:v2']);
    assert.notEqual(dev.code, 0);
    assert.match(dev.stderr, /character-device entries are not allowed/);
    const notTar = join(home, 'not.tar');
    writeFileSync(notTar, 'hello, not a tar at all'.repeat(40));
    const nt = await admin.run(['import', notTar, 'evil:v3']);
    assert.notEqual(nt.code, 0);
    assert.match(nt.stderr, /not a tar archive/);
    const url = await admin.run(['import', 'http://127.0.0.1:9/rootfs.tar', 'evil:v4']);
    assert.notEqual(url.code, 0);
    assert.match(url.stderr, /server-side request forgery/);
    assert.doesNotMatch(await admin.ok(['images', '--format', '{{.Repository}}']), /^evil$/m);
  });

  test('another project\'s container is neither committed nor exported; a reader may export but not commit or import', async () => {
    for (const args of [['commit', 'box', 'stolen:v1'], ['export', '-o', join(home, 'stolen.tar'), 'box']]) {
      const r = await other.run(args);
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, /No such container: box/, args.join(' '));
    }
    assert.doesNotMatch(await other.ok(['images', '--format', '{{.Repository}}']), /stolen/);

    assert.equal((await d.api('POST', '/projects', { name: 'tenant' })).status, 201);
    for (const [user, role] of [['tina', 'member'], ['rita', 'reader']] as const) {
      assert.equal((await d.api('POST', '/users', { name: user, password: `${user}-password-1` })).status, 201);
      assert.equal((await d.api('PUT', `/projects/tenant/roles/${user}`, { role })).status, 200);
    }
    const as = async (user: string) => {
      const login = await d.api<{ token: string }>('POST', '/auth/login', { user, password: `${user}-password-1` });
      assert.equal(login.status, 201);
      const dir = join(home, user);
      mkdirSync(dir, { recursive: true });
      return dockerCli(`${d.home}/docker.sock`, dir, { 'X-Nimbus-Token': login.body.token, 'X-Nimbus-Project': 'tenant' });
    };
    const tina = await as('tina');
    const rita = await as('rita');
    await tina.ok(['pull', IMAGE]);
    await tina.ok(['run', '--name', 'tbox', IMAGE, 'sh', '-c', 'echo tenant > /who']);
    const refused = await rita.run(['commit', 'tbox', 'reader-made:v1']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /permission|denied|role|forbidden/i);
    const tarFile = join(home, 'tbox.tar');
    await rita.ok(['export', '-o', tarFile, 'tbox']);
    assert.ok((await tarNames(tarFile)).includes('who'));
    const noImport = await rita.run(['import', tarFile, 'reader-made:v2']);
    assert.notEqual(noImport.code, 0);
    assert.match(noImport.stderr, /permission|denied|role|forbidden/i);
    // the member commits its own container; the default project does not see the image
    await tina.ok(['commit', 'tbox', 'tenant-made:v1']);
    assert.equal((await tina.ok(['run', '--rm', 'tenant-made:v1', 'cat', '/who'])).trim(), 'tenant');
    assert.doesNotMatch(await admin.ok(['images', '--format', '{{.Repository}}']), /tenant-made|reader-made/);
    assert.notEqual((await admin.run(['commit', 'tbox', 'x:v1'])).code, 0, 'the tenant\'s container is not the default project\'s either');
    await tina.ok(['rm', 'tbox']);
  });
});
