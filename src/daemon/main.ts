#!/usr/bin/env node
/** nimbusd entry point: flags → options → startDaemon; SIGTERM/SIGINT stop it cleanly. */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { isIPv4 } from 'node:net';
import { setLogLevel, type Level } from '../core/log.js';
import { InvalidArgument, isNimbusError } from '../core/errors.js';
import { startAgentProcess } from './agent-process.js';
import { startDaemon } from './daemon.js';
import { migrateStoreCommand } from './migrate-store.js';
import { byteSize, describeStore } from '../core/config.js';

/** The embedded default's local dashboard port (Proxmox VE's is 8006, Incus's 8443; this one is ours). */
const DEFAULT_DASHBOARD = '127.0.0.1:8780';

const HELP = `Usage: nimbusd [options]
       nimbusd agent --name NAME [options]   (an agent in its own process; nimbusd agent --help)
       nimbusd migrate-store --to postgres://…  (move the embedded store to PostgreSQL; nimbusd migrate-store --help)

Runs the Nimbus control plane with one local agent, on the embedded SQLite store
or on PostgreSQL (--store postgres://…).

Options (environment variable in brackets):
  --home DIR               state directory [NIMBUS_HOME] (default /var/lib/nimbus)
  --socket PATH            API unix socket [NIMBUS_SOCKET] (default /run/nimbus/nimbus.sock)
  --store LOCATION         the system of record [NIMBUS_STORE]: a path or sqlite:/PATH (the
                           embedded default, HOME/nimbus.db) or postgres://USER@HOST/DB
                           (PostgreSQL; a unix socket: postgres://USER@/DB?host=/run/postgresql)
  --tcp HOST:PORT          also serve the API on TCP [NIMBUS_TCP] (every request needs a token or API key;
                           HTTPS with --tls-cert/--tls-key, or TLS in front)
  --tls-cert FILE          serve HTTPS on the TCP listeners (--tcp, --docker-tcp, --dashboard) with this
                           PEM certificate, its chain after it [NIMBUS_TLS_CERT]; clients trust its CA
                           (nimbus --tls-ca, docker --tlsverify --tlscacert)
  --tls-key FILE           the certificate's private key (PEM) [NIMBUS_TLS_KEY]; both are read again
                           on SIGHUP (a renewed certificate without a restart)
  --docker-socket PATH     the Docker Engine API's unix socket [NIMBUS_DOCKER_SOCKET] (default docker.sock
                           beside --socket: /run/nimbus/docker.sock)
  --docker-tcp HOST:PORT   also serve the Docker Engine API on TCP [NIMBUS_DOCKER_TCP] (every request needs
                           a token: nimbus docker-env; HTTPS with --tls-cert, or TLS in front)
  --dashboard HOST:PORT    without --tcp, the web dashboard (and the API, tokens required) on a
                           local port of its own [NIMBUS_DASHBOARD] (default 127.0.0.1:8780 on
                           the default home, off with --home/NIMBUS_HOME; off: none). With --tcp
                           it is served there, under /ui/ (docs/dashboard.md)
  --insecure-registry H    allow plain HTTP to registry H (repeatable) [NIMBUS_INSECURE_REGISTRIES]
                           (loopback registries always work over plain HTTP)
  --allow-registry H       let pulls reach registry H on this host's own, loopback or link-local
                           addresses, refused otherwise (repeatable; insecure ones are allowed too)
                           [NIMBUS_ALLOWED_REGISTRIES]
  --trusted-proxy IP       a proxy in front of the API whose X-Forwarded-For names the caller
                           (failed logins are counted per caller; repeatable) [NIMBUS_TRUSTED_PROXIES]
  --container-memory-default SIZE
                           what a container created without --memory is limited to and charged
                           in a project whose memory quota is limited and that sets no default of
                           its own (nimbus quota set P --container-memory) [NIMBUS_CONTAINER_MEMORY_DEFAULT]
                           (default 512m; 0: none). Elsewhere it runs unlimited, charged nothing,
                           and is the first the kernel kills when the host runs out of memory
  --container-storage-default SIZE
                           what the writable layer of a container created without --storage may
                           hold, and is charged to the disk quota, in a project whose disk quota
                           is limited [NIMBUS_CONTAINER_STORAGE_DEFAULT] (default 1g; 0: none).
                           Elsewhere the layer is unbounded, as under Docker
  --snapshotter NAME       auto | overlayfs | native [NIMBUS_SNAPSHOTTER] (default auto)
  --runtime NAME           auto | runc | crun [NIMBUS_RUNTIME] (default auto: runc, else crun)
  --vm-host-dir DIR        a host directory system administrators may boot VMs from by path
                           (--kernel/--initrd/--disk /path; repeatable) [NIMBUS_VM_HOST_DIRS,
                           colon-separated] (default none: kernels, initrds and disks come from
                           the image service, nimbus image import-disk)
  --no-agent               run no embedded agent [NIMBUS_NO_AGENT=1]: every container and VM
                           is placed on registered agents (nimbusd agent --join-token);
                           images are pulled on the first registered host
  --log-level LEVEL        debug | info | warn | error [NIMBUS_LOG_LEVEL] (default info)
  -h, --help               show this help

Environment only:
  NIMBUS_BRIDGE, NIMBUS_BRIDGE_SUBNET   the default project's network (nimbus0, 10.88.0.0/16)
  NIMBUS_SUBNET_POOL                    /24s for other networks without --subnet (10.89.0.0/16)
  NIMBUS_NFT_TABLE                      the nftables table (inet) Nimbus owns (nimbus)
  NIMBUS_DNS_PORT, NIMBUS_DNS_UPSTREAMS the networks' embedded DNS: its port (53) and where it
                                        forwards other names (the host's resolv.conf; empty: nowhere)
  NIMBUS_WARM_POOL, NIMBUS_WARM_IMAGES  containers created ahead of demand (at least 2 per image, 4 images)
  NIMBUS_WARM_BUDGET                    memory the pool may grow into after bursts (2% of the host's; 0: none)
  NIMBUS_VM_ACCEL                       auto | kvm | tcg
  NIMBUS_SECCOMP_PROFILE                the seccomp profile containers run under, in Docker's format
                                        (default /usr/share/containers/seccomp.json, tightened as
                                        Docker's default is; "unconfined": none; docs/security.md)
  NIMBUS_UNDERLAY_IP                    the embedded host's address for VXLAN between hosts (user networks
                                        spanning hosts, docs/overlay.md); default: its source address toward
                                        the other hosts

First start creates the user "admin" with the password in NIMBUS_ADMIN_PASSWORD,
or a generated one printed once on stderr. Unix-socket callers without a token
act as that administrator.
`;

const AGENT_HELP = `Usage: nimbusd agent --name NAME [options]

Runs one host's agent in a process of its own: it serves the agent protocol and
registers with a control plane, which can then place VMs on it and migrate VMs
to and from it (nimbus agent ls, nimbus vm run --agent NAME, nimbus vm migrate).

Options (environment variable in brackets):
  --name NAME              the name it registers under [NIMBUS_AGENT_NAME] (required)
  --home DIR               its state directory [NIMBUS_HOME] (default /var/lib/nimbus-agent)
  --listen ADDR            where it serves: HOST:PORT or unix:/PATH [NIMBUS_AGENT_LISTEN]
                           (default 127.0.0.1:0, any free port)
                           TCP is served over mutual TLS only: the agent needs a certificate
                           from the control plane, got once with --join-token
  --advertise URL          the URL the control plane reaches it by, if not the listener's
  --control-plane ADDR     the control plane's API to register with: unix:/PATH,
                           http://HOST:PORT or https://HOST:PORT [NIMBUS_CONTROL_PLANE]
                           (unix-socket agents register with the credential in NIMBUS_TOKEN;
                           TCP agents need none once they hold a certificate)
  --control-plane-ca FILE  a CA (PEM) an https:// control plane's certificate may chain to, beside the
                           system's (the CA of nimbusd --tls-cert) [NIMBUS_CONTROL_PLANE_CA]
  --join-token TOKEN       a one-time token from the control plane (nimbus agent join-token):
                           redeemed on first start for the agent's certificate, kept in HOME/tls
                           [NIMBUS_AGENT_JOIN_TOKEN]
  --migration-address IP   where it receives live migrations [NIMBUS_MIGRATION_ADDRESS] (127.0.0.1)
  --underlay-ip IP         its IPv4 address for VXLAN between hosts (networks spanning hosts)
                           [NIMBUS_UNDERLAY_IP] (default: the address the control plane reaches it by)
  --vm-host-dir DIR        a host directory VMs may be booted from by path (repeatable) [NIMBUS_VM_HOST_DIRS]
  --allow-registry H       let pulls on this host reach registry H on its own, loopback or link-local
                           addresses, beside those the control plane names (repeatable)
                           [NIMBUS_ALLOWED_REGISTRIES]
  --log-level LEVEL        debug | info | warn | error [NIMBUS_LOG_LEVEL]
  -h, --help               show this help

The agent's protocol secret is made on first start and kept in HOME/agent.token
(0600); it is sent to the control plane when registering and never logged. A TCP
agent's key, certificate and the control plane's CA are kept in HOME/tls (key 0600).
`;

/** SIGTERM/SIGINT stop the process cleanly; what it runs (containers, VMs) keeps running. */
function stopOnSignals(what: string, keeps: string, stop: () => Promise<void>): void {
  const onSignal = (sig: string) => {
    process.stderr.write(`${what}: ${sig}, shutting down (${keeps})\n`);
    stop().then(() => process.exit(0), (e: unknown) => {
      process.stderr.write(`${what}: shutdown failed: ${String(e)}\n`);
      process.exit(1);
    });
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
}

async function agentMain(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      name: { type: 'string' },
      home: { type: 'string' },
      listen: { type: 'string' },
      advertise: { type: 'string' },
      'control-plane': { type: 'string' },
      'control-plane-ca': { type: 'string' },
      'join-token': { type: 'string' },
      'migration-address': { type: 'string' },
      'underlay-ip': { type: 'string' },
      'vm-host-dir': { type: 'string', multiple: true },
      'allow-registry': { type: 'string', multiple: true },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(AGENT_HELP);
    return;
  }
  if (values['log-level']) setLogLevel(values['log-level'] as Level);
  const name = values.name ?? process.env.NIMBUS_AGENT_NAME;
  if (!name) throw new InvalidArgument('nimbusd agent needs --name (see nimbusd agent --help)');
  const controlPlane = values['control-plane'] ?? process.env.NIMBUS_CONTROL_PLANE;
  const advertise = values.advertise;
  const caFile = values['control-plane-ca'] ?? (process.env.NIMBUS_CONTROL_PLANE_CA || undefined);
  let controlPlaneCa: string | undefined;
  if (caFile) {
    try {
      controlPlaneCa = readFileSync(caFile, 'utf8');
    } catch (e) {
      throw new InvalidArgument(`cannot read --control-plane-ca ${caFile}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
  }
  const joinToken = values['join-token'] ?? process.env.NIMBUS_AGENT_JOIN_TOKEN;
  const migrationAddress = values['migration-address'];
  const underlayIp = values['underlay-ip'];
  if (underlayIp !== undefined) {
    if (!isIPv4(underlayIp)) throw new InvalidArgument(`--underlay-ip must be an IPv4 address, got "${underlayIp}"`);
    // the agent's network host reads it where it is made (local-agent.ts), as the embedded one does
    process.env.NIMBUS_UNDERLAY_IP = underlayIp;
  }
  const vmHostDirs = values['vm-host-dir'];
  const allowedRegistries = values['allow-registry'];
  const running = await startAgentProcess({
    name,
    home: values.home ?? process.env.NIMBUS_HOME ?? '/var/lib/nimbus-agent',
    listen: values.listen ?? process.env.NIMBUS_AGENT_LISTEN ?? '127.0.0.1:0',
    ...(controlPlane ? { controlPlane } : {}),
    ...(advertise ? { advertise } : {}),
    ...(joinToken ? { joinToken } : {}),
    ...(process.env.NIMBUS_TOKEN ? { apiToken: process.env.NIMBUS_TOKEN } : {}),
    ...(controlPlaneCa ? { controlPlaneCa } : {}),
    ...(migrationAddress || vmHostDirs || allowedRegistries
      ? { overrides: { ...(migrationAddress ? { migrationAddress } : {}), ...(vmHostDirs ? { vmHostDirs } : {}), ...(allowedRegistries ? { allowedRegistries } : {}) } }
      : {}),
  });
  process.stdout.write(`nimbusd agent ${name} serving ${running.url}\n`);
  running.registered.then(
    () => process.stdout.write(`nimbusd agent ${name} registered with ${controlPlane}\n`),
    (e: unknown) => {
      process.stderr.write(`nimbusd agent: registration refused: ${isNimbusError(e) ? e.message : String(e)}\n`);
      void running.stop().finally(() => process.exit(1));
    },
  );
  stopOnSignals('nimbusd agent', 'VMs keep running', () => running.stop());
}

async function main(): Promise<void> {
  if (process.argv[2] === 'agent') return agentMain(process.argv.slice(3));
  if (process.argv[2] === 'migrate-store') {
    process.exitCode = await migrateStoreCommand(process.argv.slice(3));
    return;
  }
  const { values } = parseArgs({
    options: {
      home: { type: 'string' },
      socket: { type: 'string' },
      tcp: { type: 'string' },
      'docker-socket': { type: 'string' },
      'docker-tcp': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      dashboard: { type: 'string' },
      store: { type: 'string' },
      'insecure-registry': { type: 'string', multiple: true },
      'allow-registry': { type: 'string', multiple: true },
      'trusted-proxy': { type: 'string', multiple: true },
      'container-memory-default': { type: 'string' },
      'container-storage-default': { type: 'string' },
      snapshotter: { type: 'string' },
      runtime: { type: 'string' },
      'vm-host-dir': { type: 'string', multiple: true },
      'no-agent': { type: 'boolean' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (values['log-level']) setLogLevel(values['log-level'] as Level);
  const noAgent = values['no-agent'] === true || process.env.NIMBUS_NO_AGENT === '1';
  if (!noAgent && process.getuid?.() !== 0) {
    process.stderr.write('nimbusd: warning: not running as root; mounts, cgroups and runc will fail\n');
  }
  // A daemon on a home of its own (a test's, a bench's, a second one) opens no fixed port unasked:
  // the default home's daemon (npm start) is the one a browser is pointed at.
  const ownHome = values.home !== undefined || process.env.NIMBUS_HOME !== undefined;
  const daemon = await startDaemon({
    ...(values.home ? { home: values.home } : {}),
    ...(values.socket ? { socket: values.socket } : {}),
    ...(values.tcp ? { tcp: values.tcp } : {}),
    ...(values['docker-socket'] ? { dockerSocket: values['docker-socket'] } : {}),
    ...(values['docker-tcp'] ? { dockerTcp: values['docker-tcp'] } : {}),
    ...(values['tls-cert'] ? { tlsCert: values['tls-cert'] } : {}),
    ...(values['tls-key'] ? { tlsKey: values['tls-key'] } : {}),
    ...(values.store ? { store: values.store } : {}),
    ...(values['insecure-registry'] ? { insecureRegistries: values['insecure-registry'] } : {}),
    ...(values['allow-registry'] ? { allowedRegistries: values['allow-registry'] } : {}),
    ...(values['trusted-proxy'] ? { trustedProxies: values['trusted-proxy'] } : {}),
    ...(values['container-memory-default'] !== undefined ? { containerMemoryDefaultBytes: byteSize('--container-memory-default', values['container-memory-default']) } : {}),
    ...(values['container-storage-default'] !== undefined ? { containerStorageDefaultBytes: byteSize('--container-storage-default', values['container-storage-default']) } : {}),
    ...(values.snapshotter ? { snapshotter: values.snapshotter as 'auto' } : {}),
    ...(values.runtime ? { runtime: values.runtime as 'auto' } : {}),
    ...(values['vm-host-dir'] ? { vmHostDirs: values['vm-host-dir'] } : {}),
  }, { noAgent, dashboard: values.dashboard ?? process.env.NIMBUS_DASHBOARD ?? (ownHome ? 'off' : DEFAULT_DASHBOARD) });
  // before the ready line, so whoever waits for "ready:" has it already
  if (daemon.dashboardUrl) process.stdout.write(`nimbusd dashboard: ${daemon.dashboardUrl} (log in as a Nimbus user, e.g. admin)\n`);
  if (daemon.dockerTcpUrl) process.stdout.write(`nimbusd docker API: ${daemon.dockerTcpUrl} (DOCKER_HOST; tokens required: nimbus docker-env)\n`);
  process.stdout.write(`nimbusd ${daemon.services.version} ready: unix:${daemon.options.socket}${daemon.tcpPort ? ` tcp:${daemon.options.tcp!.slice(0, daemon.options.tcp!.lastIndexOf(':'))}:${daemon.tcpPort}` : ''} (home ${daemon.options.home}, store ${describeStore(daemon.options.storeLocation)})\n`);
  stopOnSignals('nimbusd', 'containers keep running', () => daemon.stop());
  // SIGHUP: a renewed certificate, read again (a pair that cannot serve is refused, the old one kept)
  if (daemon.tls) {
    process.on('SIGHUP', () => {
      try {
        const n = daemon.reloadTls();
        process.stderr.write(`nimbusd: SIGHUP: TLS certificate reloaded on ${n} listener${n === 1 ? '' : 's'}\n`);
      } catch (e) {
        process.stderr.write(`nimbusd: SIGHUP: the TLS certificate was not reloaded, the old one serves on: ${(e as Error).message}\n`);
      }
    });
  }
}

main().catch((e: unknown) => {
  const msg = isNimbusError(e) ? `${e.code}: ${e.message}` : e instanceof Error ? e.stack ?? e.message : String(e);
  process.stderr.write(`nimbusd: ${msg}\n`);
  process.exit(1);
});
