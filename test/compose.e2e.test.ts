/**
 * docker-compose 1.29 (Debian's) against a real nimbusd's Docker API and the loopback registry
 * fixture: a two-service file with depends_on waiting for the other's healthcheck, a network with
 * an alias, a named volume with a driver option, environment from a file, a published port; up
 * -d, ps, logs, exec, scale,
 * an edit that recreates only the edited service (compose renames the old one away), restart,
 * stop, down -v. What compose does that Nimbus refuses is in docs/docker-api.md (run, which
 * opens the main process's stdin).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { run } from '../src/core/exec.js';
import { freePort } from '../src/agent/network/network-test-env.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { startTestRegistryWithImages, type TestRegistry } from './helpers/registry-images.js';
import { DOCKER_CLI, dockerCli, type DockerCli } from './helpers/docker-cli.js';

const COMPOSE = '/usr/bin/docker-compose';

let d: DaemonProcess | undefined;
let registry: TestRegistry | undefined;
let home: string;
let docker: DockerCli;
let port: number;
let IMAGE: string;

function composeFile(greeting: string): string {
  return `version: "2.4"
services:
  web:
    image: ${IMAGE}
    # a TERM ends them at once (a shell ignores it otherwise, and each stop would wait its 10 s)
    command: ["sh", "-c", "trap 'exit 0' TERM; echo web-up $$GREETING; while true; do sleep 1; done"]
    env_file: [web.env]
    environment:
      GREETING: ${greeting}
    ports: ["127.0.0.1:${port}:8080"]
    networks:
      front:
        aliases: [www]
    depends_on:
      db: { condition: service_healthy }
  db:
    image: ${IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; echo db-up; echo stored > /data/f; sleep 1; touch /tmp/ready; while true; do sleep 1; done"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 300ms
      retries: 20
    networks: [front]
    volumes: [data:/data]
networks:
  front: {}
volumes:
  data:
    driver_opts: { size: "64m" }
`;
}

/** `cli`: let compose run the docker CLI where it would (`run` does `docker start --attach --interactive`), as by default. */
async function compose(args: string[], opts: { cli?: boolean } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const r = await run(COMPOSE, ['-p', 'shop', ...args], {
    cwd: join(home, 'project'),
    env: {
      // the docker CLI compose runs is the tests' own (Debian's 20.10 when installed)
      PATH: `${opts.cli ? `${dirname(DOCKER_CLI!)}:` : ''}${process.env.PATH ?? '/usr/bin:/bin'}`,
      HOME: join(home, 'cfg'), DOCKER_CONFIG: join(home, 'cfg'), DOCKER_HOST: `unix://${d!.home}/docker.sock`, ...(opts.cli ? {} : { COMPOSE_INTERACTIVE_NO_CLI: '1' }),
    },
    timeoutMs: 120_000,
  });
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

async function composeOk(args: string[]): Promise<string> {
  const r = await compose(args);
  assert.equal(r.code, 0, `docker-compose ${args.join(' ')}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout + r.stderr;
}

const idsOf = async (service: string) => (await docker.ok(['ps', '-q', '--no-trunc', '--filter', `label=com.docker.compose.service=${service}`])).trim().split('\n').filter(Boolean).sort();

describe('docker-compose 1.29 against nimbusd', { skip: existsSync(COMPOSE) && DOCKER_CLI ? false : 'no docker-compose or docker CLI (apt-get install docker-compose docker.io; scripts/bootstrap installs them)', concurrency: false, timeout: 300_000 }, () => {
  before(async () => {
    home = mkdtempSync(join(tmpdir(), 'nimbus-compose-'));
    registry = await startTestRegistryWithImages();
    IMAGE = `${registry.host}/nimbus-test/busybox:latest`;
    d = await startDaemonProcess();
    docker = dockerCli(`${d.home}/docker.sock`, join(home, 'cfg'));
    await docker.ok(['pull', IMAGE]);
    port = await freePort();
    assert.equal((await run('mkdir', ['-p', join(home, 'project')])).code, 0);
    writeFileSync(join(home, 'project', 'web.env'), 'FROM_FILE=yes\n');
    writeFileSync(join(home, 'project', 'docker-compose.yml'), composeFile('hello'));
  });
  after(async () => {
    try {
      if (d) await compose(['down', '-v']).catch(() => undefined);
      await d?.destroy();
    } finally {
      await registry?.stop();
      rmSync(home, { recursive: true, force: true });
    }
  }, { timeout: 90_000 });

  test('up -d: networks, the volume with its option, both services in order; ps and logs', async () => {
    const up = await composeOk(['up', '-d']);
    assert.match(up, /Creating network "shop_front"/);
    assert.match(up, /Creating volume "shop_data"/);
    assert.match(up, /Creating shop_db_1 \.\.\. done/);
    assert.match(up, /Creating shop_web_1 \.\.\. done/);
    const ps = await composeOk(['ps']);
    assert.match(ps, /shop_db_1 .* Up \(healthy\)/, 'web was made once db was healthy');
    assert.match(ps, new RegExp(`shop_web_1 .* Up .*127\\.0\\.0\\.1:${port}->8080/tcp`));
    const volume = JSON.parse(await docker.ok(['volume', 'inspect', 'shop_data'])) as Array<{ Options: Record<string, string>; Labels: Record<string, string> }>;
    assert.deepEqual(volume[0]!.Options, { size: '64m' });
    assert.equal(volume[0]!.Labels['com.docker.compose.project'], 'shop');
    const logs = await composeOk(['logs', '--no-color']);
    assert.match(logs, /web_1 +\| web-up hello/);
    assert.match(logs, /db_1 +\| db-up/);
  });

  test('exec: the environment (file and file-level), the alias and the other service by name on the network', async () => {
    const out = await composeOk(['exec', '-T', 'web', 'sh', '-c', 'echo $GREETING $FROM_FILE; busybox nslookup www; busybox nslookup db']);
    assert.match(out, /^hello yes$/m);
    const webAddress = (await docker.ok(['inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', 'shop_web_1'])).trim();
    const dbAddress = (await docker.ok(['inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', 'shop_db_1'])).trim();
    assert.ok(out.includes(webAddress) && out.includes(dbAddress), `www → ${webAddress}, db → ${dbAddress} in:\n${out}`);
    assert.match(await composeOk(['exec', '-T', 'db', 'cat', '/data/f']), /stored/);
  });

  test('run --rm: a one-off container of the service (its stdin open, attached), its output and exit code, then gone', async () => {
    // compose's own way (the docker CLI's start -ai); with COMPOSE_INTERACTIVE_NO_CLI its dockerpty starts the
    // container before it attaches (Python 3's lazy map) and then starts it again, which loses output against dockerd too
    const r = await compose(['run', '--rm', 'web', 'sh', '-c', 'echo "run-$GREETING-$FROM_FILE"; busybox nslookup db >/dev/null && echo db-found; exit 4'], { cli: true });
    assert.equal(r.code, 4, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^run-hello-yes\r?$/m, r.stderr);
    assert.match(r.stdout, /^db-found\r?$/m);
    assert.deepEqual((await docker.ok(['ps', '-a', '--format', '{{.Names}}'])).trim().split('\n').sort(), ['shop_db_1', 'shop_web_1'], 'the run container is removed');
  });

  test('scale, then an edit of one service recreates it alone; restart and stop', async () => {
    await composeOk(['up', '-d', '--scale', 'db=2']);
    assert.equal((await idsOf('db')).length, 2);
    await composeOk(['up', '-d', '--scale', 'db=1']);
    const dbBefore = await idsOf('db');
    const webBefore = await idsOf('web');
    assert.equal(dbBefore.length, 1);
    writeFileSync(join(home, 'project', 'docker-compose.yml'), composeFile('edited'));
    const up = await composeOk(['up', '-d']);
    assert.match(up, /Recreating shop_web_1 \.\.\. done/);
    assert.match(up, /shop_db_1 is up-to-date/);
    assert.deepEqual(await idsOf('db'), dbBefore, 'db untouched');
    const webAfter = await idsOf('web');
    assert.equal(webAfter.length, 1);
    assert.notDeepEqual(webAfter, webBefore, 'web is a new container');
    assert.match(await composeOk(['exec', '-T', 'web', 'sh', '-c', 'echo $GREETING']), /^edited$/m);
    // only compose's containers of the project, none left from the recreate
    assert.deepEqual((await docker.ok(['ps', '-a', '--format', '{{.Names}}'])).trim().split('\n').sort(), ['shop_db_1', 'shop_web_1']);
    await composeOk(['restart']);
    assert.match(await composeOk(['ps']), /shop_web_1 .* Up/);
    await composeOk(['stop']);
    assert.match(await composeOk(['ps']), /shop_web_1 .* Exit/);
  });

  test('down -v: containers, the network and the volume gone', async () => {
    const down = await composeOk(['down', '-v']);
    assert.match(down, /Removing network shop_front/);
    assert.match(down, /Removing volume shop_data/);
    assert.equal((await docker.ok(['ps', '-aq'])).trim(), '');
    assert.doesNotMatch(await docker.ok(['network', 'ls', '--format', '{{.Name}}']), /shop_front/);
    assert.equal((await docker.ok(['volume', 'ls', '-q'])).trim(), '');
  });
});
