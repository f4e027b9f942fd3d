import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Conflict, InvalidArgument, NotFound, QuotaExceeded, Unavailable } from '../../core/errors.js';
import type { ContainerRecord } from '../../store/records.js';
import { anonymousMounts, containerInspect, containerSummary, familiarName, frame, humanDuration, matchesContainerFilters, parseFilters, statusString, toContainerInput, type ContainerLike } from './mapping.js';
import { withExposedPorts } from '../../control/networks/publish-all.js';
import { parseVolumesFrom } from '../../core/volumes-from.js';
import { checkBody } from './schemas.js';
import { dockerError, inDockerWords, noSuchImage } from './errors.js';
import { unversioned } from './server.js';
import { layerLine, matchesImageFilters, pullReference, registryAuth } from './images.js';
import { toNetworkInput } from './networks.js';

/** The body `docker run -d --name web -e A=1 -p 8080:80 --memory 64m --cpus 1.5 --pids-limit 50 --restart on-failure:3 --label k=v -w /srv -u 1000 busybox sh` sends (zero values included, as the CLI sends them). */
const CLI_BODY = {
  Hostname: '', Domainname: '', User: '1000', AttachStdin: false, AttachStdout: false, AttachStderr: false,
  ExposedPorts: { '80/tcp': {} }, Tty: false, OpenStdin: false, StdinOnce: false, Env: ['A=1'], Cmd: ['sh'], Image: 'busybox', Volumes: {},
  WorkingDir: '/srv', Entrypoint: null, OnBuild: null, Labels: { k: 'v' },
  HostConfig: {
    Binds: null, ContainerIDFile: '', LogConfig: { Type: '', Config: {} }, NetworkMode: 'default',
    PortBindings: { '80/tcp': [{ HostIp: '', HostPort: '8080' }] }, RestartPolicy: { Name: 'on-failure', MaximumRetryCount: 3 }, AutoRemove: false,
    VolumeDriver: '', VolumesFrom: null, CapAdd: null, CapDrop: null, CgroupnsMode: '', Dns: [], DnsOptions: [], DnsSearch: [], ExtraHosts: null,
    GroupAdd: null, IpcMode: '', Cgroup: '', Links: null, OomScoreAdj: 0, PidMode: '', Privileged: false, PublishAllPorts: false,
    ReadonlyRootfs: false, SecurityOpt: null, UTSMode: '', UsernsMode: '', ShmSize: 0, ConsoleSize: [0, 0], Isolation: '', CpuShares: 0,
    Memory: 67108864, NanoCpus: 1500000000, CgroupParent: '', BlkioWeight: 0, BlkioWeightDevice: [], CpuPeriod: 0, CpuQuota: 0,
    CpuRealtimePeriod: 0, CpuRealtimeRuntime: 0, CpusetCpus: '', CpusetMems: '', Devices: [], DeviceCgroupRules: null, DeviceRequests: null,
    KernelMemory: 0, KernelMemoryTCP: 0, MemoryReservation: 0, MemorySwap: 0, MemorySwappiness: null, OomKillDisable: false, PidsLimit: 50,
    Ulimits: null, CpuCount: 0, CpuPercent: 0, IOMaximumIOps: 0, IOMaximumBandwidth: 0, MaskedPaths: null, ReadonlyPaths: null,
  },
  NetworkingConfig: { EndpointsConfig: {} },
};

function rec(over: Partial<ContainerLike> = {}): ContainerLike {
  const base: ContainerRecord = {
    id: 'a'.repeat(64), name: 'web', projectId: 'p', imageDigest: 'sha256:' + 'b'.repeat(64),
    config: { image: 'docker.io/library/busybox:latest', cmd: ['sleep', '9'], env: ['A=1'], restart: { name: 'no' }, autoRemove: false, labels: { app: 'web', tier: 'front' }, ports: [{ protocol: 'tcp', hostPort: 8080, containerPort: 80 }] },
    status: 'running', runtime: 'runc', pid: 42, exitCode: null, oomKilled: false, restartCount: 0, stoppedByUser: false,
    createdAt: '2026-01-01T00:00:00.000Z', startedAt: '2026-01-01T00:00:00.000Z', finishedAt: null, warnings: [], host: 'h',
  };
  return { ...base, ...over };
}

describe('Docker create body → Nimbus container input', () => {
  test('the CLI\'s full body (zero values everywhere) maps to the settings it asked for', () => {
    const input = toContainerInput(checkBody('container', CLI_BODY), 'web');
    assert.deepEqual(input, {
      image: 'busybox', name: 'web', cmd: ['sh'], env: ['A=1'], workdir: '/srv', user: '1000', memoryBytes: 67108864, cpus: 1.5, pidsLimit: 50,
      restart: { name: 'on-failure', maxRetries: 3 }, autoRemove: false, labels: { k: 'v' }, ports: [{ protocol: 'tcp', hostPort: 8080, containerPort: 80 }],
    });
  });

  test('--rm, --network, --entrypoint "", links and aliases', () => {
    const input = toContainerInput(checkBody('container', {
      Image: 'busybox', Entrypoint: [''], HostConfig: { AutoRemove: true, NetworkMode: 'net1', Links: ['/db:database'], PidsLimit: -1 },
      NetworkingConfig: { EndpointsConfig: { net1: { Aliases: ['api'] } } },
    }), undefined);
    assert.equal(input.autoRemove, true);
    assert.equal(input.network, 'net1');
    assert.deepEqual(input.entrypoint, []);
    assert.deepEqual(input.links, [{ container: 'db', alias: 'database' }]);
    assert.deepEqual(input.aliases, ['api']);
    assert.equal(input.pidsLimit, undefined, '-1 is unlimited');
    assert.equal(input.name, undefined);
  });

  test('--storage-opt size=SIZE is the writable layer\'s size (binary units, as Docker reads them); any other option is refused; inspect says it back', () => {
    const body = (StorageOpt: Record<string, string>) => checkBody('container', { Image: 'busybox', HostConfig: { StorageOpt } });
    assert.equal(toContainerInput(body({ size: '10G' }), undefined).storageBytes, 10 * 1024 ** 3);
    assert.equal(toContainerInput(body({ size: '512m' }), undefined).storageBytes, 512 * 1024 ** 2);
    assert.equal(toContainerInput(checkBody('container', { Image: 'busybox' }), undefined).storageBytes, undefined);
    assert.throws(() => toContainerInput(body({ size: 'lots' }), undefined), (e: unknown) => e instanceof InvalidArgument && /--storage-opt size/.test(e.message));
    assert.throws(() => toContainerInput(body({ 'dm.basesize': '10G' }), undefined), (e: unknown) => e instanceof InvalidArgument && /only size/.test(e.message));
  });

  test('-v, --mount and --tmpfs become the create\'s mounts, in that order', () => {
    const input = toContainerInput(checkBody('container', {
      Image: 'busybox',
      HostConfig: {
        Binds: ['data:/data', '/srv/www:/www:ro'],
        Mounts: [{ Type: 'volume', Source: 'logs', Target: '/logs', ReadOnly: true }, { Type: 'tmpfs', Target: '/scratch', TmpfsOptions: { SizeBytes: 1048576, Mode: 0o700 } }],
        Tmpfs: { '/run/app': 'size=64m,mode=1777' },
      },
    }), undefined);
    assert.deepEqual(input.mounts, [
      { type: 'volume', source: 'data', target: '/data' },
      { type: 'bind', source: '/srv/www', target: '/www', readonly: true },
      { type: 'volume', source: 'logs', target: '/logs', readonly: true },
      { type: 'tmpfs', target: '/scratch', sizeBytes: 1048576, mode: 0o700 },
      { type: 'tmpfs', target: '/run/app', sizeBytes: 64 * 1024 * 1024, mode: 0o1777 },
    ]);
    // nocopy (-v vol:/p:nocopy, --mount …,volume-nocopy): a volume made now starts empty, not with the image's files
    const nocopy = toContainerInput(checkBody('container', {
      Image: 'busybox',
      HostConfig: { Binds: ['a:/a:ro,nocopy'], Mounts: [{ Type: 'volume', Source: 'b', Target: '/b', VolumeOptions: { NoCopy: true } }, { Type: 'volume', Target: '/c', VolumeOptions: { NoCopy: true } }] },
    }), undefined);
    assert.deepEqual(nocopy.mounts, [
      { type: 'volume', source: 'a', target: '/a', readonly: true, nocopy: true },
      { type: 'volume', source: 'b', target: '/b', nocopy: true },
      { type: 'volume', target: '/c', nocopy: true },
    ]);
    assert.throws(() => toContainerInput(checkBody('container', { Image: 'busybox', HostConfig: { Binds: ['/srv:/s:nocopy'] } }), undefined), /nocopy is for volumes, not host paths/);
  });

  test('a healthcheck in nanoseconds becomes milliseconds; zeros are the defaults; Volumes a mount covers are no anonymous volume', () => {
    const input = toContainerInput(checkBody('container', {
      Image: 'busybox', Healthcheck: { Test: ['CMD-SHELL', 'test -f /ok'], Interval: 2_000_000_000, Timeout: 0, Retries: 5, StartPeriod: 10_000_000_000 },
      Volumes: { '/data': {} }, HostConfig: { Binds: ['data:/data:rw'] },
    }), undefined);
    assert.deepEqual(input.healthcheck, { test: ['CMD-SHELL', 'test -f /ok'], intervalMs: 2000, retries: 5, startPeriodMs: 10_000 });
    assert.equal(input.mounts?.length, 1);
    assert.equal(toContainerInput(checkBody('container', { Image: 'busybox', Healthcheck: {} }), undefined).healthcheck, undefined, 'no Test: none');
  });

  test('-v /path and --mount without a source are anonymous volumes; Volumes a mount covers are not; the image\'s VOLUMEs likewise', () => {
    const input = toContainerInput(checkBody('container', {
      Image: 'busybox', Volumes: { '/data': {}, '/named': {}, '/cache/': {} },
      HostConfig: { Binds: ['n:/named'], Mounts: [{ Type: 'volume', Target: '/m' }] },
    }), undefined);
    assert.deepEqual(input.mounts, [
      { type: 'volume', source: 'n', target: '/named' },
      { type: 'volume', target: '/m' },
      { type: 'volume', target: '/data' },
      { type: 'volume', target: '/cache' },
    ]);
    // an image's VOLUME /data is covered by -v x:/data; /logs is not
    assert.deepEqual(anonymousMounts(['/data', '/logs/'], [{ type: 'volume', source: 'x', target: '/data' }]), [{ type: 'volume', target: '/logs' }]);
  });

  test('--volumes-from CONTAINER[:ro|rw]', () => {
    assert.deepEqual(parseVolumesFrom(['a', 'b:ro', 'c:rw']), [{ container: 'a' }, { container: 'b', mode: 'ro' }, { container: 'c', mode: 'rw' }]);
    assert.deepEqual(parseVolumesFrom(undefined), []);
    assert.throws(() => parseVolumesFrom([':ro']), /invalid --volumes-from/);
    assert.throws(() => parseVolumesFrom(['a:ro:x']), /invalid --volumes-from/);
  });

  test('-p PORT is a host port the host chooses (0); -P adds the request\'s ExposedPorts (the service adds the image\'s)', () => {
    const p = toContainerInput(checkBody('container', { Image: 'busybox', ExposedPorts: { '80/tcp': {} }, HostConfig: { PortBindings: { '80/tcp': [{ HostIp: '', HostPort: '' }], '53/udp': [{ HostPort: '5353' }] } } }), undefined);
    assert.deepEqual(p.ports, [{ protocol: 'tcp', hostPort: 0, containerPort: 80 }, { protocol: 'udp', hostPort: 5353, containerPort: 53 }]);
    assert.equal(p.publishAll, undefined);
    const all = toContainerInput(checkBody('container', { Image: 'busybox', ExposedPorts: { '80/tcp': {}, '9000/tcp': {}, '7/sctp': {} }, HostConfig: { PublishAllPorts: true, PortBindings: { '80/tcp': [{ HostPort: '8080' }] } } }), undefined);
    assert.deepEqual(all.ports, [{ protocol: 'tcp', hostPort: 8080, containerPort: 80 }, { protocol: 'tcp', hostPort: 0, containerPort: 9000 }], 'a port -p publishes keeps its host port; sctp is passed over');
    assert.equal(all.publishAll, true);
    assert.deepEqual(withExposedPorts(undefined, ['80/tcp', '53/udp', '8080', 'x/tcp', '0/tcp']), [
      { protocol: 'tcp', hostPort: 0, containerPort: 80 }, { protocol: 'udp', hostPort: 0, containerPort: 53 }, { protocol: 'tcp', hostPort: 0, containerPort: 8080 },
    ]);
    // -p 8000-8010:80-90 and -p 80-90 arrive expanded (one key per port, the CLI's nat.ParsePortSpecs);
    // -p 127.0.0.1:8000-8010:80/udp as one key with a HostPort range: one port of it, the host's choice
    const ranged = toContainerInput(checkBody('container', { Image: 'busybox', HostConfig: { PortBindings: {
      '80/tcp': [{ HostIp: '', HostPort: '8000' }], '81/tcp': [{ HostIp: '', HostPort: '8001' }], '53/udp': [{ HostIp: '127.0.0.1', HostPort: '8000-8010' }], '90/tcp': [{ HostPort: '7000-7000' }],
    } } }), undefined);
    assert.deepEqual(ranged.ports, [
      { protocol: 'tcp', hostPort: 8000, containerPort: 80 }, { protocol: 'tcp', hostPort: 8001, containerPort: 81 },
      { protocol: 'udp', hostPort: 8000, hostPortEnd: 8010, containerPort: 53, hostIp: '127.0.0.1' }, { protocol: 'tcp', hostPort: 7000, containerPort: 90 },
    ]);
    // what ps and port show once the host chose: the chosen port
    const shown = containerSummary(rec({ config: { ...rec().config, ports: [{ protocol: 'tcp', hostPort: 49200, containerPort: 80 }] } })).Ports;
    assert.deepEqual(shown, [{ IP: '0.0.0.0', PrivatePort: 80, PublicPort: 49200, Type: 'tcp' }]);
  });

  test('-t and -i become the main process\'s terminal and stdin; StdinOnce only with OpenStdin; inspect shows them', () => {
    const it = toContainerInput(checkBody('container', { Image: 'busybox', Tty: true, OpenStdin: true, StdinOnce: true, AttachStdin: true }), undefined);
    assert.equal(it.tty, true);
    assert.equal(it.openStdin, true);
    assert.equal(it.stdinOnce, true);
    const dit = toContainerInput(checkBody('container', { Image: 'busybox', Tty: true, OpenStdin: true }), undefined);
    assert.equal(dit.stdinOnce, undefined, 'docker run -dit keeps stdin open across attaches');
    const plain = toContainerInput(checkBody('container', { Image: 'busybox', Tty: false, OpenStdin: false, StdinOnce: true }), undefined);
    assert.deepEqual([plain.tty, plain.openStdin, plain.stdinOnce], [undefined, undefined, undefined]);
    const cfg = containerInspect(rec({ config: { ...rec().config, tty: true, openStdin: true, stdinOnce: true } })).Config as Record<string, unknown>;
    assert.deepEqual([cfg.Tty, cfg.OpenStdin, cfg.StdinOnce], [true, true, true], 'attach and logs read Tty for the framing');
  });

  test('what Nimbus does not do is refused with the flag\'s name, never ignored', () => {
    const refused: Array<[Record<string, unknown>, RegExp]> = [
      [{ HostConfig: { Binds: ['data:/x:z'] } }, /volume option "z" is not supported/],
      [{ HostConfig: { Mounts: [{ Type: 'npipe', Source: 'x', Target: '/x' }] } }, /mount type "npipe" is not supported/],
      [{ HostConfig: { Privileged: true } }, /--privileged/],
      [{ HostConfig: { VolumesFrom: ['other:rx'] } }, /invalid --volumes-from "other:rx"/],
      [{ HostConfig: { PortBindings: { '80/tcp': [{ HostPort: '8010-8000' }] } } }, /invalid host port "8010-8000": the range ends before it starts/],
      [{ HostConfig: { PortBindings: { '80/tcp': [{ HostPort: '0-10' }] } } }, /ports are 1-65535/],
      [{ HostConfig: { PortBindings: Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`${1000 + i}/tcp`, [{ HostPort: '' }]])) } }, /publishes 257 ports; a container publishes at most 256 \(each is a rule on its host/],
      [{ HostConfig: { LogConfig: { Type: 'syslog' } } }, /--log-driver/],
      [{ HostConfig: { RestartPolicy: { Name: 'always' }, AutoRemove: true } }, /--restart and --rm/],
      [{ HostConfig: { RestartPolicy: { Name: 'sometimes' } } }, /invalid restart policy/],
      [{ Healthcheck: { Test: ['CMD', 'true'], Interval: 500 } }, /at least 1ms/],
    ];
    for (const [extra, message] of refused) {
      const body = { Image: 'busybox', ...extra };
      assert.throws(() => toContainerInput(checkBody('container', body), undefined), (e: unknown) => e instanceof InvalidArgument && message.test(e.message), JSON.stringify(extra));
    }
  });

  test('hostile bodies are 400s naming the field', () => {
    assert.throws(() => checkBody('container', { Image: '' }), /\/Image/);
    assert.throws(() => checkBody('container', { Image: 'x', Cmd: 'not a list' }), /\/Cmd/);
    assert.throws(() => checkBody('container', { Image: 'x', HostConfig: { Memory: 'lots' } }), /\/HostConfig\/Memory/);
    assert.throws(() => checkBody('container', null), InvalidArgument);
  });
});

describe('ps rows', () => {
  const now = Date.parse('2026-01-01T00:00:03.500Z');
  test('Status strings as Docker words them', () => {
    assert.equal(statusString(rec(), now), 'Up 3 seconds');
    assert.equal(statusString(rec({ status: 'paused' }), now), 'Up 3 seconds (Paused)');
    assert.equal(statusString(rec({ status: 'exited', exitCode: 0, finishedAt: '2026-01-01T00:00:01.000Z' }), now), 'Exited (0) 2 seconds ago');
    assert.equal(statusString(rec({ status: 'exited', exitCode: 137, finishedAt: '2026-01-01T00:00:03.000Z' }), now), 'Exited (137) Less than a second ago');
    assert.equal(statusString(rec({ status: 'created', startedAt: null }), now), 'Created');
    assert.equal(humanDuration(1000), '1 second');
    assert.equal(humanDuration(90_000), 'About a minute');
    assert.equal(humanDuration(5 * 60_000), '5 minutes');
    assert.equal(humanDuration(60 * 60_000), 'About an hour');
    assert.equal(humanDuration(3 * 24 * 3600_000), '3 days');
  });

  test('a summary: Names with a leading "/", the familiar image name, ports, State', () => {
    const s = containerSummary(rec(), now);
    assert.deepEqual(s.Names, ['/web']);
    assert.equal(s.Image, 'busybox:latest');
    assert.equal(s.State, 'running');
    assert.equal(s.Command, 'sleep 9');
    assert.deepEqual(s.Ports, [{ IP: '0.0.0.0', PrivatePort: 80, PublicPort: 8080, Type: 'tcp' }]);
    assert.equal(containerSummary(rec({ status: 'unknown' }), now).State, 'dead');
    const i = containerInspect(rec(), [{ network: 'bridge', networkId: 'n', address: '10.0.0.2', gateway: '10.0.0.1', prefix: 24, mac: 'm' }]);
    assert.equal(i.Name, '/web');
    assert.equal((i.Config as { Tty: boolean }).Tty, false, 'logs and attach read Tty to choose the framing');
    assert.equal((i.NetworkSettings as { IPAddress: string }).IPAddress, '10.0.0.2');
  });

  test('filters: both encodings, name as a regular expression, labels all-of, status, unknown refused', () => {
    assert.deepEqual([...parseFilters('{"name":["web"]}')], [['name', ['web']]]);
    assert.deepEqual([...parseFilters('{"name":{"web":true}}')], [['name', ['web']]]);
    assert.throws(() => parseFilters('{nope'), InvalidArgument);
    const c = rec();
    assert.equal(matchesContainerFilters(c, parseFilters('{"name":["^we"]}')), true);
    assert.equal(matchesContainerFilters(c, parseFilters('{"name":["^eb"]}')), false);
    assert.equal(matchesContainerFilters(c, parseFilters('{"label":["app=web","tier"]}')), true);
    assert.equal(matchesContainerFilters(c, parseFilters('{"label":["app=web","tier=back"]}')), false);
    assert.equal(matchesContainerFilters(c, parseFilters('{"status":["exited"]}')), false);
    assert.throws(() => matchesContainerFilters(c, parseFilters('{"volume":["x"]}')), /invalid filter 'volume'/);
  });

  test('names as the CLI shows them', () => {
    assert.equal(familiarName('docker.io/library/busybox:latest'), 'busybox:latest');
    assert.equal(familiarName('docker.io/me/app:1'), 'me/app:1');
    assert.equal(familiarName('127.0.0.1:5000/x/y:z'), '127.0.0.1:5000/x/y:z');
  });
});

describe('the wire', () => {
  test('multiplexed framing: stream byte, three zeros, big-endian length', () => {
    const f = frame('stderr', Buffer.from('hi\n'));
    assert.deepEqual([...f.subarray(0, 8)], [2, 0, 0, 0, 0, 0, 0, 3]);
    assert.equal(f.subarray(8).toString(), 'hi\n');
    assert.equal(frame('stdout', Buffer.alloc(0))[0], 1);
  });

  test('versioned paths: ours and older accepted, newer refused', () => {
    assert.equal(unversioned('/v1.41/containers/json'), '/containers/json');
    assert.equal(unversioned('/v1.24/info'), '/info');
    assert.equal(unversioned('/info'), '/info');
    assert.throws(() => unversioned('/v1.42/info'), /client version 1\.42 is too new\. Maximum supported API version is 1\.41/);
    assert.throws(() => unversioned('/v2.0/info'), InvalidArgument);
  });

  test('errors: Docker\'s statuses and {"message"} bodies', () => {
    assert.deepEqual(dockerError(new NotFound('x')), { status: 404, body: { message: 'x' } });
    assert.equal(dockerError(new Conflict('c')).status, 409);
    assert.equal(dockerError(new InvalidArgument('b')).status, 400);
    assert.equal(dockerError(new QuotaExceeded('q')).status, 403);
    assert.equal(dockerError(new Unavailable('u')).status, 503);
    assert.equal(dockerError(new Error('boom')).status, 500);
  });

  test('a NotFound becomes Docker\'s "No such image" (what makes the CLI pull); other errors pass', async () => {
    await assert.rejects(inDockerWords(Promise.reject(new NotFound('no such image: busybox')), () => noSuchImage('busybox')), (e: unknown) => e instanceof Error && e.message === 'No such image: busybox');
    await assert.rejects(inDockerWords(Promise.reject(new Conflict('busy')), () => noSuchImage('busybox')), /busy/);
  });

  test('pull references and registry credentials', () => {
    assert.equal(pullReference('busybox', 'latest'), 'busybox:latest');
    assert.equal(pullReference('127.0.0.1:5000/x/busybox', ''), '127.0.0.1:5000/x/busybox:latest');
    assert.equal(pullReference('127.0.0.1:5000/x/busybox:1', null), '127.0.0.1:5000/x/busybox:1');
    assert.equal(pullReference('x/busybox', 'sha256:' + 'c'.repeat(64)), `x/busybox@sha256:${'c'.repeat(64)}`);
    assert.throws(() => pullReference('', null), /fromImage is required/);
    assert.equal(registryAuth(Buffer.from('{}').toString('base64')), undefined);
    assert.deepEqual(registryAuth(Buffer.from('{"username":"u","password":"p"}').toString('base64url')), { username: 'u', password: 'p' });
    assert.throws(() => registryAuth('%%%'), InvalidArgument);
  });

  test('pull progress lines per layer', () => {
    const digest = 'sha256:' + 'd'.repeat(64);
    assert.deepEqual(layerLine({ digest, status: 'downloading', bytesDone: 5, bytesTotal: 10 }), { status: 'Downloading', progressDetail: { current: 5, total: 10 }, id: 'dddddddddddd' });
    assert.equal(layerLine({ digest, status: 'done', bytesDone: 10, bytesTotal: 10 }).status, 'Pull complete');
    assert.equal(layerLine({ digest, status: 'exists', bytesDone: 0, bytesTotal: 10 }).status, 'Already exists');
  });

  test('image filters: reference globs on short and full names, dangling, label', () => {
    const img = { tags: ['docker.io/library/busybox:latest', '127.0.0.1:5000/x/app:v1'], config: { config: { Labels: { tier: 'web' } } }, createdAt: '2026-01-01T00:00:00Z' };
    const f = (json: string) => matchesImageFilters(img, parseFilters(json));
    assert.equal(f('{"reference":["busybox"]}'), true);
    assert.equal(f('{"reference":["busybox:latest"]}'), true);
    assert.equal(f('{"reference":["busy*"]}'), true);
    assert.equal(f('{"reference":["127.0.0.1:5000/x/*:v1"]}'), true);
    assert.equal(f('{"reference":["nginx"]}'), false);
    assert.equal(f('{"reference":["busybox:1"]}'), false);
    assert.equal(f('{"dangling":["true"]}'), false);
    assert.equal(matchesImageFilters({ tags: [], config: {}, createdAt: '2026-01-01T00:00:00Z' }, parseFilters('{"dangling":["true"]}')), true);
    assert.equal(f('{"label":["tier=web"]}'), true);
    assert.throws(() => f('{"foo":["x"]}'), /invalid filter 'foo'/);
  });

  test('network create bodies', () => {
    assert.deepEqual(toNetworkInput(checkBody('network', { Name: 'n', Driver: 'bridge', IPAM: { Driver: 'default', Config: [{ Subnet: '10.9.0.0/24' }] }, Labels: { a: 'b' } })),
      { name: 'n', driver: 'bridge', subnet: '10.9.0.0/24', internal: false, labels: { a: 'b' } });
    assert.throws(() => toNetworkInput(checkBody('network', { Name: 'n', Driver: 'overlay' })), /overlay" is not supported/);
    assert.throws(() => toNetworkInput(checkBody('network', { Name: 'n', EnableIPv6: true })), /--ipv6/);
  });
});
