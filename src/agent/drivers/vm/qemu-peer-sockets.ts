/**
 * TCP for a QEMU that has no network (jailer.ts): what it used to connect to or listen on itself
 * (a live migration's stream, a disk mirror's NBD export) the agent opens, as root in the host's
 * network namespace, and hands over on QEMU's fd monitor (qemu.ts fdMonitorSocket) with the
 * command that takes it, in one session (qmp-fds.ts). The addresses and ports on the wire do not
 * change: a peer cannot tell. A QEMU launched before it had a monitor for descriptors (by an
 * older agent, still in the host's network) is reached as before, by address.
 */
import { existsSync } from 'node:fs';
import net from 'node:net';
import { Internal } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import { fdMonitorSocket } from './qemu.js';
import { handFdsToQemu, type QmpCommand } from './qmp-fds.js';

const log = logger('vm-driver');

/** Whether this QEMU takes its connections as descriptors (launched through the jailer), not by address. */
export const takesDescriptors = (qmpSocket: string): boolean => existsSync(fdMonitorSocket(qmpSocket));

/** A connection to host:port, made here, for `then` (which names it `name`). */
export async function connectForQemu(qmpSocket: string, host: string, port: number, name: string, then: QmpCommand): Promise<void> {
  await handFdsToQemu(fdMonitorSocket(qmpSocket), { op: 'connect', host, port, name, then }, []);
}

/** A socket listening on a free port of host, made here, for `then` (an NBD server). Returns the port. */
export async function listenForQemu(qmpSocket: string, host: string, name: string, then: QmpCommand): Promise<number> {
  const { port } = await handFdsToQemu(fdMonitorSocket(qmpSocket), { op: 'listen', host, name, then }, []);
  if (!port) throw new Internal(`no port came back for ${name}`);
  return port;
}

/** A port QEMU's first connection arrives on; `close` stops waiting for it. */
export interface OneConnection {
  port: number;
  close(): void;
}

/**
 * Accept the first connection to a free port of host, and hand it over with `then` (an incoming
 * migration's stream: QEMU's own listener took the first connection too). Not a byte is read here
 * (pauseOnConnect). Later connections find the port closed; a failed handover closes the
 * connection, and the source's migration fails on it.
 */
export function acceptOneForQemu(qmpSocket: string, host: string, name: string, then: QmpCommand, context: Record<string, unknown>): Promise<OneConnection> {
  const server = net.createServer({ pauseOnConnect: true });
  let taken = false;
  server.on('connection', (socket) => {
    if (taken) return void socket.destroy();
    taken = true;
    server.close();
    handFdsToQemu(fdMonitorSocket(qmpSocket), { op: 'getfd', name, then }, [socket])
      .catch((e: unknown) => log.warn('handing an incoming connection to QEMU failed', { ...context, error: String(e) }))
      .finally(() => socket.destroy());
  });
  return new Promise((resolve, reject) => {
    // before it listens, the caller's error; after, a failed accept (EMFILE) is logged, not thrown
    // from an 'error' nobody listens to
    server.on('error', (e) => (server.listening ? log.warn('the incoming migration\'s port failed', { ...context, error: String(e) }) : reject(e)));
    server.listen(0, host, () => {
      const a = server.address();
      resolve({ port: typeof a === 'object' && a ? a.port : 0, close: () => void (server.listening && server.close()) });
    });
  });
}

/** host and port of a migration URI, tcp:HOST:PORT or tcp:[V6]:PORT; undefined for another form. */
export function tcpUriAddress(uri: string): { host: string; port: number } | undefined {
  const m = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(uri);
  return m ? { host: (m[1] ?? m[2])!, port: Number(m[3]) } : undefined;
}
