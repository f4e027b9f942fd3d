#!/usr/bin/env node
/** nimbusd entry point: flags → options → startDaemon; SIGTERM/SIGINT stop it cleanly. */
import { parseArgs } from 'node:util';
import { setLogLevel, type Level } from '../core/log.js';
import { isNimbusError } from '../core/errors.js';
import { startDaemon } from './daemon.js';

const HELP = `Usage: nimbusd [options]

Runs the Nimbus control plane with an embedded SQLite store and one local agent.

Options (environment variable in brackets):
  --home DIR               state directory [NIMBUS_HOME] (default /var/lib/nimbus)
  --socket PATH            API unix socket [NIMBUS_SOCKET] (default /run/nimbus/nimbus.sock)
  --tcp HOST:PORT          also serve the API on TCP [NIMBUS_TCP] (every request needs a token or API key; use TLS in front)
  --insecure-registry H    allow plain HTTP to registry H (repeatable) [NIMBUS_INSECURE_REGISTRIES]
                           (loopback registries always work over plain HTTP)
  --snapshotter NAME       auto | overlayfs | native [NIMBUS_SNAPSHOTTER] (default auto)
  --runtime NAME           auto | runc | crun [NIMBUS_RUNTIME] (default auto)
  --log-level LEVEL        debug | info | warn | error [NIMBUS_LOG_LEVEL] (default info)
  -h, --help               show this help

Environment only:
  NIMBUS_BRIDGE, NIMBUS_BRIDGE_SUBNET   the default project's network (nimbus0, 10.88.0.0/16)
  NIMBUS_SUBNET_POOL                    /24s for other networks without --subnet (10.89.0.0/16)
  NIMBUS_NFT_TABLE                      the nftables table (inet) Nimbus owns (nimbus)
  NIMBUS_DNS_PORT, NIMBUS_DNS_UPSTREAMS the networks' embedded DNS: its port (53) and where it
                                        forwards other names (the host's resolv.conf; empty: nowhere)
  NIMBUS_WARM_POOL, NIMBUS_WARM_IMAGES  containers created ahead of demand (2 per image, 4 images)
  NIMBUS_VM_ACCEL                       auto | kvm | tcg

First start creates the user "admin" with the password in NIMBUS_ADMIN_PASSWORD,
or a generated one printed once on stderr. Unix-socket callers without a token
act as that administrator.
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      home: { type: 'string' },
      socket: { type: 'string' },
      tcp: { type: 'string' },
      'insecure-registry': { type: 'string', multiple: true },
      snapshotter: { type: 'string' },
      runtime: { type: 'string' },
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
  if (process.getuid?.() !== 0) {
    process.stderr.write('nimbusd: warning: not running as root; mounts, cgroups and runc will fail\n');
  }
  const daemon = await startDaemon({
    ...(values.home ? { home: values.home } : {}),
    ...(values.socket ? { socket: values.socket } : {}),
    ...(values.tcp ? { tcp: values.tcp } : {}),
    ...(values['insecure-registry'] ? { insecureRegistries: values['insecure-registry'] } : {}),
    ...(values.snapshotter ? { snapshotter: values.snapshotter as 'auto' } : {}),
    ...(values.runtime ? { runtime: values.runtime as 'auto' } : {}),
  });
  process.stdout.write(`nimbusd ${daemon.services.version} ready: unix:${daemon.options.socket}${daemon.tcpPort ? ` tcp:${daemon.options.tcp!.slice(0, daemon.options.tcp!.lastIndexOf(':'))}:${daemon.tcpPort}` : ''} (home ${daemon.options.home})\n`);
  const stop = (sig: string) => {
    process.stderr.write(`nimbusd: ${sig}, shutting down (containers keep running)\n`);
    daemon.stop().then(() => process.exit(0), (e: unknown) => {
      process.stderr.write(`nimbusd: shutdown failed: ${String(e)}\n`);
      process.exit(1);
    });
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

main().catch((e: unknown) => {
  const msg = isNimbusError(e) ? `${e.code}: ${e.message}` : e instanceof Error ? e.stack ?? e.message : String(e);
  process.stderr.write(`nimbusd: ${msg}\n`);
  process.exit(1);
});
