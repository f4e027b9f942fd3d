/**
 * Docker Engine peers for the Docker API benchmarks, each in private state under a temp dir so
 * neither the host's dockerd (if any) nor its firewall is touched:
 *   dockerd   Debian's dockerd (with the containerd it starts itself) on its own socket,
 *             data root, exec root and pid file, containers on a bridge of its own (made here,
 *             on a test subnet), --iptables=false --ip6tables=false --ip-masq=false
 *             --ip-forward=false: it adds no firewall rule and changes no sysctl
 *   podman    `podman system service` (its Docker-compatible API) over a private store
 * Both register their removal with the cleanup stack.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, runOk } from '../../src/core/exec.js';
import { freeTestSubnet, gatewayOf, testDevice } from '../../src/agent/network/network-test-env.js';
import { cleanup, peerCgroupParent, pidsMatching, unmountUnder } from './cleanup.js';
import { captureOutput, terminate } from './daemon.js';
import { podmanStore } from './peers.js';

/** The Docker CLI the tests drive (Debian's docker.io, 20.10), not whatever else is first on PATH. */
export const DOCKER_CLI = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';

export interface DockerEndpoint {
  /** unix:///… for DOCKER_HOST */
  host: string;
  /** The docker CLI against this endpoint; throws on a non-zero exit. */
  docker(args: string[], timeoutMs?: number): Promise<string>;
  /** The engine's own output so far (the last 64 KiB), for failure messages. */
  log(): string;
  remove(): Promise<void>;
}

export function dockerCli(host: string, configDir: string): DockerEndpoint['docker'] {
  return (args, timeoutMs = 300_000) =>
    runOk(DOCKER_CLI, args, { env: { ...process.env, DOCKER_HOST: host, DOCKER_CONFIG: configDir, DOCKER_BUILDKIT: '0' }, timeoutMs });
}

async function untilAnswers(docker: DockerEndpoint['docker'], child: ChildProcess, what: string, log: () => string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}): ${log().slice(-2000)}`);
    try {
      await docker(['version', '--format', '{{.Server.Version}}'], 5_000);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${what} did not answer in ${timeoutMs} ms: ${e instanceof Error ? e.message : String(e)}; ${log().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** A private dockerd (and its containerd) with a bridge of its own; `docker` talks to it. */
export async function startDockerd(): Promise<DockerEndpoint> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-dockerd-'));
  const socket = join(dir, 'docker.sock');
  const bridge = testDevice('dk');
  const subnet = freeTestSubnet(24);
  const configFile = join(dir, 'daemon.json');
  writeFileSync(configFile, '{}');
  mkdirSync(join(dir, 'cli'), { recursive: true });
  let child: ChildProcess | undefined;
  const cgroups = peerCgroupParent('docker');
  const remove = cleanup.add(`dockerd ${dir}`, async () => {
    if (child) await terminate(child, 30_000);
    // what a killed dockerd may leave: containerd shims under its exec root, mounts, the bridge
    for (const pid of pidsMatching('containerd-shim', dir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await unmountUnder(dir);
    await run('ip', ['link', 'del', bridge]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    cgroups();
  });
  await runOk('ip', ['link', 'add', bridge, 'type', 'bridge']);
  await runOk('ip', ['addr', 'add', `${gatewayOf(subnet)}/24`, 'dev', bridge]);
  await runOk('ip', ['link', 'set', bridge, 'up']);
  child = spawn('dockerd', [
    '--host', `unix://${socket}`, '--data-root', join(dir, 'root'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'dockerd.pid'),
    '--config-file', configFile, '--bridge', bridge, '--iptables=false', '--ip6tables=false', '--ip-masq=false', '--ip-forward=false',
    '--userland-proxy=false', '--storage-driver', 'overlay2', '--log-level', 'warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = captureOutput(child);
  const docker = dockerCli(`unix://${socket}`, join(dir, 'cli'));
  try {
    await untilAnswers(docker, child, 'dockerd', log);
  } catch (e) {
    await remove();
    throw e;
  }
  return { host: `unix://${socket}`, docker, log, remove };
}

/** podman's Docker-compatible API over a private store. */
export async function startPodmanService(): Promise<DockerEndpoint> {
  const store = podmanStore();
  const socket = join(store.dir, 'podman.sock');
  mkdirSync(join(store.dir, 'cli'), { recursive: true });
  // podman gives a container its own open-files limit (1048576), above the hard limit this host
  // grants (crun's setrlimit fails, a 409 on the CLI's attach): the limits podman runs with in
  // the other benches (PODMAN_RUN_FLAGS), as its defaults, so the CLI's command stays the same
  const conf = join(store.dir, 'containers.conf');
  // and runc, as there (crun refuses this host's hybrid cgroups)
  writeFileSync(conf, '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n');
  const child = spawn('podman', store.args(['--log-level', 'info', 'system', 'service', '--time=0', `unix://${socket}`]), {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CONTAINERS_CONF: conf },
  });
  const log = captureOutput(child);
  // stopped before the store is removed (cleanup runs last-in first-out)
  const remove = cleanup.add(`podman service ${socket}`, () => terminate(child, 10_000));
  const docker = dockerCli(`unix://${socket}`, join(store.dir, 'cli'));
  try {
    await untilAnswers(docker, child, 'podman system service', log);
  } catch (e) {
    await remove();
    await store.remove();
    throw e;
  }
  return {
    host: `unix://${socket}`,
    docker,
    log,
    remove: async () => {
      await remove();
      await store.remove();
    },
  };
}
