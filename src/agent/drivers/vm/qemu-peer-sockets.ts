/**
 * TCP for a QEMU that has no network (jailer.ts): what it used to connect to or listen on itself
 * (a live migration's stream, a disk mirror's NBD export) the agent opens, as root in the host's
 * network namespace, and hands over on QEMU's fd monitor (qemu.ts fdMonitorSocket) with the
 * command that takes it, in one session (qmp-fds.ts). The addresses and ports on the wire do not
 * change: a peer cannot tell. A QEMU launched before it had a monitor for descriptors (by an
 * older agent, still in the host's network) is reached as before, by address.
 */
import { existsSync } from 'node:fs';
import { Internal } from '../../../core/errors.js';
import { logger } from '../../../core/log.js';
import { fdMonitorSocket } from './qemu.js';
import { handFdsToQemu, REFUSALS_TOLD, type QmpCommand } from './qmp-fds.js';

const log = logger('vm-driver');

/** Whether this QEMU takes its connections as descriptors (launched through the jailer), not by address. */
export const takesDescriptors = (qmpSocket: string): boolean => existsSync(fdMonitorSocket(qmpSocket));

/**
 * A connection to host:port, made here, for `then` (which names it `name`). With `token` (a
 * migration's, 64 hex digits) it is sent first, and QEMU gets the connection only once the peer
 * accepted it (acceptOneForQemu).
 */
export async function connectForQemu(qmpSocket: string, host: string, port: number, name: string, then: QmpCommand, token?: string): Promise<void> {
  await handFdsToQemu(fdMonitorSocket(qmpSocket), { op: 'connect', host, port, name, then, ...(token ? { token } : {}) }, []);
}

/** A socket listening on a free port of host, made here, for `then` (an NBD server). Returns the port. */
export async function listenForQemu(qmpSocket: string, host: string, name: string, then: QmpCommand): Promise<number> {
  const { port } = await handFdsToQemu(fdMonitorSocket(qmpSocket), { op: 'listen', host, name, then }, []);
  if (!port) throw new Internal(`no port came back for ${name}`);
  return port;
}

/** A port QEMU's connection arrives on; `close` stops waiting for it. */
export interface OneConnection {
  port: number;
  close(): void;
}

/** How long a connection has to send a migration's token before it is closed (the source sends it at once). */
export const TOKEN_WAIT_MS = 10_000;
/** Connections being read for their token at once; the oldest is closed when another arrives. */
export const MAX_PENDING = 64;

export interface AcceptOptions {
  /** What the log lines about this port say (the VM's id). */
  context: Record<string, unknown>;
  /** The move's token (64 hex digits): only a connection that sends it first is handed over. */
  token?: string;
  /** Default TOKEN_WAIT_MS. */
  tokenWaitMs?: number;
}

/**
 * Listen on a free port of host and hand a connection over with `then` (an incoming migration's
 * stream; qmp-fds.ts' accept). Without a token, the first connection (as QEMU's own listener
 * took it). With one, the first that sends exactly those bytes: it is answered
 * STREAM_TOKEN_ACCEPTED and handed over, and one that sends anything else or nothing in time is
 * closed while the port keeps listening, so a stranger who reached it first (instances reach the
 * host's addresses) no longer fails the move. Exactly the token's bytes are read: what follows
 * is QEMU's. Refusals are logged with the peer's address. `close` (the move given up, or over)
 * ends the wait; a failed handover closes the connection, and the source's migration fails on it.
 */
export async function acceptOneForQemu(qmpSocket: string, host: string, name: string, then: QmpCommand, o: AcceptOptions): Promise<OneConnection> {
  const helper = new AbortController();
  let listening: (port: number) => void = () => undefined;
  const port = new Promise<number>((resolve) => (listening = resolve));
  const plan = { op: 'accept' as const, host, name, then, ...(o.token ? { token: o.token } : {}), tokenWaitMs: o.tokenWaitMs ?? TOKEN_WAIT_MS, maxPending: MAX_PENDING };
  const done = handFdsToQemu(fdMonitorSocket(qmpSocket), plan, [], {
    signal: helper.signal,
    news: (n) => {
      if ('listening' in n) listening(n.listening);
      else log.warn('a connection to an incoming migration\'s port was closed; still listening', { ...o.context, from: n.refused, why: n.why });
    },
  });
  // before it listens, the caller's error (the address cannot be bound); after, a failed handover is logged
  const first = await Promise.race([port, done.then(() => undefined)]);
  if (first === undefined) throw new Internal(`no port came back for ${name}`);
  done.then((r) => {
    if (r.refused && r.refused > REFUSALS_TOLD) log.warn('connections to an incoming migration\'s port were closed before its own came', { ...o.context, refused: r.refused });
  }, (e: unknown) => {
    if (!helper.signal.aborted) log.warn('handing an incoming connection to QEMU failed', { ...o.context, error: String(e) });
  });
  return { port: first, close: () => helper.abort() };
}

/** host and port of a migration URI, tcp:HOST:PORT or tcp:[V6]:PORT; undefined for another form. */
export function tcpUriAddress(uri: string): { host: string; port: number } | undefined {
  const m = /^tcp:(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(uri);
  return m ? { host: (m[1] ?? m[2])!, port: Number(m[3]) } : undefined;
}
