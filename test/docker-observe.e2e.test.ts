/**
 * `docker events`, `docker stats`, `docker system df`, the prunes, `docker save` and `docker
 * load` through the real docker CLI against a real nimbusd and the loopback registry fixture;
 * each sees and touches the project its client acts in, never another's.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { run } from '../src/core/exec.js';
import { join } from 'node:path';
import type { DaemonProcess } from './helpers/daemon-process.js';
import { startDockerTenants, type DockerTenants } from './helpers/docker-tenants.js';
import { DOCKER_CLI, rawDockerRequest, type DockerCli } from './helpers/docker-cli.js';

let env: DockerTenants | undefined;
let d: DaemonProcess;
let home: string;
let IMAGE: string;
/** The administrator in the default project, and the administrator acting in project "other". */
let admin: DockerCli;
let other: DockerCli;

describe('docker events, stats, system df and prune against nimbusd', { skip: DOCKER_CLI ? false : 'no docker CLI on this machine (apt-get install docker.io)', concurrency: false, timeout: 240_000 }, () => {
  before(async () => {
    env = await startDockerTenants('nimbus-docker-observe-');
    ({ d, home, image: IMAGE, admin, other } = env);
    await other.ok(['pull', IMAGE]);
  });
  after(() => env?.stop(), { timeout: 60_000 });

  test('docker stats: a busy container\'s CPU share, memory and pids; --no-stream waits for a second sample', async () => {
    await admin.ok(['run', '-d', '--name', 'busy', '--memory', '64m', IMAGE, 'sh', '-c', 'while true; do :; done']);
    const t0 = Date.now();
    const line = (await admin.ok(['stats', '--no-stream', '--format', '{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}', 'busy'])).trim();
    const took = Date.now() - t0;
    const [name, cpu, mem, pids] = line.split('|');
    assert.equal(name, 'busy', line);
    // a spinning shell on a 2-core host under test load: well above idle, at most one CPU's worth and a little
    const pct = Number(cpu!.replace('%', ''));
    assert.ok(pct > 10 && pct <= 110, `CPU ${cpu}`);
    assert.match(mem!, /^[\d.]+[KM]iB \/ 64MiB$/, 'the limit is the container\'s --memory');
    assert.ok(Number(pids) >= 1, line);
    assert.ok(took >= 900, `two samples a second apart (${took} ms)`);
    // streamed: the documents keep coming, each with the previous one as precpu
    const stream = await rawDockerRequest(`${d.home}/docker.sock`, 'GET', '/containers/busy/stats?stream=false&one-shot=true');
    const doc = JSON.parse(stream.body) as { name: string; cpu_stats: { cpu_usage: { total_usage: number }; online_cpus: number }; precpu_stats: { system_cpu_usage: number } };
    assert.equal(doc.name, '/busy');
    assert.ok(doc.cpu_stats.cpu_usage.total_usage > 0 && doc.cpu_stats.online_cpus >= 1, stream.body);
    assert.equal(doc.precpu_stats.system_cpu_usage, 0, 'one-shot: no second sample');
    // another project's container does not exist for this client
    const hidden = await other.run(['stats', '--no-stream', 'busy']);
    assert.notEqual(hidden.code, 0);
    assert.match(hidden.stderr, /No such container: busy/);
    await admin.ok(['rm', '-f', 'busy']);
  });

  test('docker events: the project\'s lifecycle in Docker\'s words, replayed with --since, ended by --until, filtered; never another project\'s', async () => {
    const since = Math.floor(Date.now() / 1000) - 1;
    await admin.ok(['run', '--name', 'once', '--label', 'team=a', IMAGE, 'true']);
    await other.ok(['run', '--name', 'theirs', IMAGE, 'true']);
    await admin.ok(['rm', 'once']);
    await admin.ok(['network', 'create', 'evnet']);
    await admin.ok(['network', 'rm', 'evnet']);
    const until = Math.ceil(Date.now() / 1000) + 1;
    const all = (await admin.ok(['events', '--since', String(since), '--until', String(until), '--format', '{{.Type}} {{.Action}} {{.Actor.Attributes.name}}'])).trim().split('\n');
    for (const want of ['container create once', 'container start once', 'container die once', 'container destroy once', 'network create evnet', 'network destroy evnet']) {
      assert.ok(all.includes(want), `${want} in:\n${all.join('\n')}`);
    }
    assert.ok(all.indexOf('container create once') < all.indexOf('container destroy once'), 'in order');
    assert.ok(!all.some((l) => l.includes('theirs')), `another project's events: ${all.join('\n')}`);
    // the label keeps the test before's `busy` out: its die (rm -f) can fall inside `since`'s second
    const filtered = (await admin.ok(['events', '--since', String(since), '--until', String(until), '--filter', 'type=container', '--filter', 'event=die', '--filter', 'label=team=a', '--format', '{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}'])).trim();
    assert.equal(filtered, 'die once 0');
    const theirs = (await other.ok(['events', '--since', String(since), '--until', String(until), '--filter', 'container=theirs', '--format', '{{.Action}}'])).trim().split('\n');
    assert.deepEqual(theirs.slice(0, 3), ['create', 'start', 'die']);
    const bad = await admin.run(['events', '--since', String(since), '--until', String(until), '--filter', 'nonsense=1']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /invalid filter 'nonsense'/);
    await other.ok(['rm', 'theirs']);
  });

  test('prune: stopped containers (label filters honoured), unused networks, unused images; system df counts the project\'s', async () => {
    const keep = (await admin.ok(['create', '--name', 'keep', '--label', 'keep=1', IMAGE, 'true'])).trim();
    const gone = (await admin.ok(['create', '--name', 'gone', IMAGE, 'true'])).trim();
    await admin.ok(['run', '-d', '--name', 'alive', IMAGE, 'sleep', '600']);
    await other.ok(['create', '--name', 'notmine', IMAGE, 'true']);
    const pruned = await admin.ok(['container', 'prune', '-f', '--filter', 'label!=keep']);
    assert.match(pruned, new RegExp(gone));
    assert.doesNotMatch(pruned, new RegExp(keep));
    const left = (await admin.ok(['ps', '-a', '--format', '{{.Names}}'])).trim().split('\n').sort();
    assert.deepEqual(left, ['alive', 'keep']);
    assert.equal((await other.ok(['ps', '-a', '--format', '{{.Names}}'])).trim(), 'notmine', 'another project\'s stopped container stays');

    await admin.ok(['network', 'create', 'unused']);
    await admin.ok(['network', 'create', 'used']);
    await admin.ok(['network', 'connect', 'used', 'alive']);
    const nets = await admin.ok(['network', 'prune', '-f']);
    assert.match(nets, /unused/);
    assert.doesNotMatch(nets, /\bused\b/);
    assert.deepEqual((await admin.ok(['network', 'ls', '--format', '{{.Name}}'])).trim().split('\n').sort(), ['bridge', 'used']);

    const df = await admin.ok(['system', 'df', '--format', '{{.Type}} {{.TotalCount}} {{.Active}}']);
    assert.match(df, /^Images 1 1$/m);
    assert.match(df, /^Containers 2 1$/m);
    const verbose = await admin.ok(['system', 'df', '-v']);
    assert.match(verbose, /nimbus-test\/busybox/);
    // writable layers measured on their host: 3 MiB written in alive's shows in ps -s and system df
    await admin.ok(['exec', 'alive', 'dd', 'if=/dev/zero', 'of=/written', 'bs=1M', 'count=3']);
    const sizes = Object.fromEntries((await admin.ok(['ps', '-a', '-s', '--format', '{{.Names}} {{.Size}}'])).trim().split('\n').map((l) => [l.slice(0, l.indexOf(' ')), l.slice(l.indexOf(' ') + 1)]));
    assert.match(sizes.alive ?? '', /^3\.\d+MB \(virtual \d/, `ps -s: ${JSON.stringify(sizes)}`);
    assert.match(sizes.keep ?? '', /^\d+(\.\d+)?[kK]?B \(virtual /, 'an unstarted one: almost nothing');
    const dfRows = (await admin.ok(['system', 'df', '-v', '--format', '{{json .Containers}}'])).trim();
    const dfContainers = JSON.parse(dfRows) as Array<{ Names: string; Size: string }>;
    assert.match(dfContainers.find((c) => c.Names === 'alive')?.Size ?? '', /^3\.\d+MB$/, dfRows);

    // the image is in use: -a keeps it; once nothing uses it, it goes
    assert.doesNotMatch(await admin.ok(['image', 'prune', '-a', '-f']), /sha256/);
    await admin.ok(['rm', '-f', 'alive', 'keep']);
    await admin.ok(['network', 'rm', 'used']);
    const images = await admin.ok(['image', 'prune', '-a', '-f']);
    assert.match(images, /^untagged: .*nimbus-test\/busybox:latest$/im);
    assert.match(images, /^deleted: sha256:[0-9a-f]{64}$/im);
    assert.equal((await admin.ok(['images', '-q'])).trim(), '');
    assert.notEqual((await other.ok(['images', '-q'])).trim(), '', 'another project\'s reference stays');
    await other.ok(['rm', '-f', 'notmine']);
  });

  test('rename: the new name resolves on the network at once, the old one no longer; a taken name is a 409; the nimbus CLI too', async () => {
    await admin.ok(['network', 'create', 'rn']);
    await admin.ok(['run', '-d', '--name', 'old-name', '--network', 'rn', '--network-alias', 'kept-alias', IMAGE, 'sleep', '600']);
    await admin.ok(['run', '-d', '--name', 'asker', '--network', 'rn', IMAGE, 'sleep', '600']);
    const address = (await admin.ok(['inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', 'old-name'])).trim();
    assert.match(address, /^\d+\.\d+\.\d+\.\d+$/);
    const resolve = async (name: string) => (await admin.run(['exec', 'asker', 'busybox', 'nslookup', name])).stdout;
    assert.match(await resolve('old-name'), new RegExp(address.replaceAll('.', '\\.')));
    await admin.ok(['rename', 'old-name', 'new-name']);
    assert.deepEqual((await admin.ok(['ps', '--format', '{{.Names}}'])).trim().split('\n').sort(), ['asker', 'new-name']);
    assert.match(await resolve('new-name'), new RegExp(address.replaceAll('.', '\\.')), 'the new name resolves');
    assert.match(await resolve('kept-alias'), new RegExp(address.replaceAll('.', '\\.')), 'aliases stay');
    assert.doesNotMatch(await resolve('old-name'), new RegExp(address.replaceAll('.', '\\.')), 'the old one no longer');
    const taken = await admin.run(['rename', 'new-name', 'asker']);
    assert.notEqual(taken.code, 0);
    assert.match(taken.stderr, /already in use/);
    assert.equal((await admin.run(['rename', 'no-such', 'x'])).code !== 0, true);
    // the nimbus CLI, over the Nimbus API
    const cli = await d.cli(['rename', 'new-name', 'third-name']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(await resolve('third-name'), new RegExp(address.replaceAll('.', '\\.')));
    const events = (await admin.ok(['events', '--since', '0', '--until', String(Math.ceil(Date.now() / 1000) + 1), '--filter', 'event=rename', '--format', '{{.Actor.Attributes.oldName}}>{{.Actor.Attributes.name}}'])).trim().split('\n');
    assert.deepEqual(events, ['old-name>new-name', 'new-name>third-name']);
    await admin.ok(['rm', '-f', 'third-name', 'asker']);
    await admin.ok(['network', 'rm', 'rn']);
  });

  test('top: the container\'s processes with their host pids, from docker and nimbus; ps options refused; not another project\'s', async () => {
    await admin.ok(['run', '-d', '--name', 'topped', IMAGE, 'sh', '-c', 'sleep 600 & sleep 700']);
    const pid = (await admin.ok(['inspect', '-f', '{{.State.Pid}}', 'topped'])).trim();
    const top = await admin.ok(['top', 'topped']);
    assert.match(top.split('\n')[0]!, /^UID\s+PID\s+PPID\s+C\s+STIME\s+TTY\s+TIME\s+CMD/);
    // the shell runs its last command in its own place: the container's first process is `sleep 700`
    assert.match(top, new RegExp(`^\\S+\\s+${pid}\\s+.*sleep 700$`, 'm'), top);
    assert.match(top, new RegExp(`^\\S+\\s+\\d+\\s+${pid}\\s+.*sleep 600$`, 'm'), 'its child, by its parent pid');
    const bad = await admin.run(['top', 'topped', 'aux']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /ps options are not supported/);
    assert.match((await other.run(['top', 'topped'])).stderr, /No such container: topped/);
    const cli = await d.cli(['top', 'topped']);
    assert.equal(cli.code, 0, cli.stderr);
    assert.match(cli.stdout, /sleep 700/);
    await admin.ok(['rm', '-f', 'topped']);
  });

  test('health checks: starting, then healthy, unhealthy after its retries; ps, inspect, the ps filter and the events say so', async () => {
    await admin.ok(['run', '-d', '--name', 'checked', '--health-cmd', 'test -f /tmp/ok', '--health-interval', '300ms', '--health-retries', '2',
      IMAGE, 'sh', '-c', 'sleep 1; touch /tmp/ok; sleep 600']);
    const status = async () => (await admin.ok(['ps', '--filter', 'name=checked', '--format', '{{.Status}}'])).trim();
    const waitStatus = async (want: RegExp) => {
      for (let i = 0; i < 100; i++) {
        const s = await status();
        if (want.test(s)) return s;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`status never matched ${want}: ${await status()}`);
    };
    assert.match(await status(), /\((health: starting|healthy)\)$/);
    await waitStatus(/\(healthy\)$/);
    assert.equal((await admin.ok(['ps', '-q', '--filter', 'health=healthy'])).trim().length > 0, true);
    await admin.ok(['exec', 'checked', 'rm', '/tmp/ok']);
    await waitStatus(/\(unhealthy\)$/);
    const state = JSON.parse(await admin.ok(['inspect', '-f', '{{json .State.Health}}', 'checked'])) as { Status: string; FailingStreak: number; Log: Array<{ ExitCode: number }> };
    assert.equal(state.Status, 'unhealthy');
    assert.ok(state.FailingStreak >= 2, JSON.stringify(state));
    assert.ok(state.Log.length <= 5 && state.Log.at(-1)!.ExitCode === 1, JSON.stringify(state));
    const config = JSON.parse(await admin.ok(['inspect', '-f', '{{json .Config.Healthcheck}}', 'checked'])) as { Test: string[]; Interval: number; Retries: number };
    assert.deepEqual([config.Test, config.Interval, config.Retries], [['CMD-SHELL', 'test -f /tmp/ok'], 300_000_000, 2]);
    const events = (await admin.ok(['events', '--since', '0', '--until', String(Math.ceil(Date.now() / 1000) + 1), '--filter', 'container=checked', '--format', '{{.Action}}'])).trim().split('\n');
    assert.ok(events.includes('health_status: healthy') && events.includes('health_status: unhealthy'), events.join('\n'));
    await admin.ok(['rm', '-f', 'checked']);
  });

  test('save and load: an archive both layouts read (OCI and docker save\'s manifest.json); loaded back it runs; a tampered one is refused', async () => {
    await admin.ok(['pull', IMAGE]);
    const archive = join(home, 'saved.tar');
    await admin.ok(['save', '-o', archive, IMAGE]);
    const members = (await run('tar', ['-tf', archive])).stdout.trim().split('\n');
    for (const m of ['oci-layout', 'index.json', 'manifest.json']) assert.ok(members.includes(m), `${m} in ${members.join(' ')}`);
    const blobs = members.filter((m) => m.startsWith('blobs/sha256/'));
    assert.ok(blobs.length >= 3, 'manifest, config and layers');
    await admin.ok(['rmi', IMAGE]);
    assert.equal((await admin.ok(['images', '-q'])).trim(), '');
    assert.match(await admin.ok(['load', '-i', archive]), new RegExp(`Loaded image: ${IMAGE.replaceAll('.', '\\.')}`));
    assert.equal((await admin.ok(['run', '--rm', IMAGE, 'echo', 'loaded'])).trim(), 'loaded');
    const missing = await admin.run(['save', '-o', join(home, 'x.tar'), 'no-such-image']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr, /No such image: no-such-image/);

    // one byte of the largest blob changed: its digest no longer holds, and nothing is loaded
    const dir = join(home, 'tampered');
    assert.equal((await run('mkdir', ['-p', dir])).code, 0);
    assert.equal((await run('tar', ['-xf', archive, '-C', dir])).code, 0);
    const largest = readdirSync(join(dir, 'blobs', 'sha256')).map((f) => join(dir, 'blobs', 'sha256', f)).sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
    const bytes = readFileSync(largest);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = bytes[at]! ^ 0xff;
    writeFileSync(largest, bytes);
    const tampered = join(home, 'tampered.tar');
    assert.equal((await run('tar', ['-cf', tampered, '-C', dir, '.'])).code, 0);
    // no project holds the image any more, so its content is gone too: the load must read every byte
    // (content already held under a digest is not read from an archive again, tampered or not)
    await admin.ok(['rmi', IMAGE]);
    await other.ok(['rmi', IMAGE]);
    const refused = await admin.run(['load', '-i', tampered]);
    assert.notEqual(refused.code, 0, refused.stdout);
    assert.match(refused.stderr, /digest|sha256/i);
    assert.equal((await admin.ok(['images', '-q'])).trim(), '', 'nothing half-loaded');
  });
});
