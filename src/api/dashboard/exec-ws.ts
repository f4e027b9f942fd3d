/**
 * A command on a terminal in a container, interactively, over a WebSocket: `GET
 * /containers/{id}/exec` with `Upgrade: websocket` (the route `execTerminal` declares its query
 * and auth: member on the container's project). For the dashboard's container console and for
 * `nimbus exec -it` (over the unix socket too, where the socket's local admin is the caller).
 * `GET /containers/{id}/attach` (route `attachTerminal`) is the same bridge over the main
 * process's terminal (`nimbus run -it`, `nimbus attach`); closing it detaches. A container made
 * without a terminal but with an open stdin (`nimbus run -i`) attaches too: its output then comes
 * as binary messages whose first byte names the stream (1 stdout, 2 stderr, as Docker's frames),
 * and the client's text `{"closeStdin":true}` is the process's end of input (a pipe has one).
 *
 * Messages: binary both ways are the terminal's bytes; a text message from the client is
 * `{"resize":{"rows":R,"cols":C}}`; the server's last message is text, `{"exitCode":N}` or
 * `{"error":{code,message}}`, then it closes (1000). The client closing hangs up on the
 * command (SIGHUP), as closing a terminal window does.
 *
 * Authentication is the VM console's (console-ws.ts): a browser offers its token as a second
 * subprotocol `nimbus-token.<token>` (never in the URL); other clients may send Authorization.
 * The Origin, when a browser sends one, must be this host's. While the session lasts its caller
 * is held to the member role it opened with (open-streams.ts): revoked, the server's last message
 * is `{"error":{…}}` and it closes with 1008.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { Conflict, InvalidArgument, isNimbusError, messageFor, NotFound, PermissionDenied, toNimbusError, Unauthenticated } from '../../core/errors.js';
import { HTTP_STATUS } from '../../core/http-status.js';
import { logger } from '../../core/log.js';
import { MAX_ARGV_ENV_TOTAL } from '../../core/limits.js';
import type { ExecSession } from '../../agent/drivers/instance-driver.js';
import type { Services } from '../../control/services.js';
import { authenticate, authorize, type Transport } from '../authz.js';
import { decodeComponent, parseQuery } from '../edge.js';
import type { Route } from '../route.js';
import { TerminalSize } from '../schemas.js';
import { checkOrThrow, checkTotalLength } from '../validate.js';
import type { OpenStreams } from '../open-streams.js';
import { closeRevoked, refuse, sameOrigin, TOKEN_PROTOCOL_PREFIX, type ConsoleUpgrades } from './console-ws.js';

const log = logger('api');

export const EXEC_PROTOCOL = 'nimbus-exec';
export const EXEC_WS_PATH = /^\/containers\/([^/]+)\/exec$/;
/** The main process's terminal (route attachTerminal): the same bridge, a session from the container service's attach. */
export const ATTACH_WS_PATH = /^\/containers\/([^/]+)\/attach$/;
/** Keystrokes and pastes: a message larger than this is not typing. */
const MAX_MESSAGE_BYTES = 64 * 1024;
/** Output waits while this much is queued for a slow client (the command blocks on its terminal meanwhile). */
const HIGH_WATER_BYTES = 1024 * 1024;

/** The text messages a client sends: a terminal's new size; the end of a pipe's input (a container without a terminal). */
const ResizeMessage = TypeCompiler.Compile(Type.Object({ resize: TerminalSize }, { additionalProperties: false }));
const CloseStdinMessage = TypeCompiler.Compile(Type.Object({ closeStdin: Type.Literal(true) }, { additionalProperties: false }));
/** Without a terminal, each output message's first byte: the stream (Docker's stream ids). */
export const STREAM_BYTE = { stdout: 1, stderr: 2 } as const;

export interface ExecUpgrades extends ConsoleUpgrades {
  /** Whether the request is for this bridge. */
  matches(req: IncomingMessage): boolean;
}

export function execUpgrade(routes: Route[], services: Services, transport: Transport, streams: OpenStreams): ExecUpgrades {
  const declared = (operationId: string) => {
    const route = routes.find((r) => r.operationId === operationId);
    return {
      route,
      queryCheck: route?.query ? TypeCompiler.Compile(route.query) : undefined,
      queryNames: new Set(['project', ...Object.keys((route?.query as { properties?: object } | undefined)?.properties ?? {})]),
    };
  };
  const exec = declared('execTerminal');
  const attach = declared('attachTerminal');
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_MESSAGE_BYTES,
    handleProtocols: (protocols) => (protocols.has(EXEC_PROTOCOL) ? EXEC_PROTOCOL : false),
  });
  const pathOf = (req: IncomingMessage) => (req.url ?? '/').split('?', 1)[0]!;

  const handle = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // an administrator's errors say everything (messageFor); the caller is not known yet
    let admin = false;
    void (async () => {
      const [path = '', search = ''] = (req.url ?? '/').split('?', 2);
      const attaching = ATTACH_WS_PATH.test(path);
      const m = (attaching ? ATTACH_WS_PATH : EXEC_WS_PATH).exec(path);
      const { route, queryCheck, queryNames } = attaching ? attach : exec;
      if (!route || !queryCheck || req.method !== 'GET' || !m) throw new NotFound(`no WebSocket at ${path.slice(0, 128)}`);
      if (String(req.headers.upgrade).toLowerCase() !== 'websocket' || !req.headers['sec-websocket-key']) throw new InvalidArgument('not a WebSocket handshake');
      if (!sameOrigin(req)) throw new PermissionDenied('the exec WebSocket is for pages of this origin');
      const offered = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
      const token = offered.find((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX))?.slice(TOKEN_PROTOCOL_PREFIX.length);
      if (token) req.headers.authorization = `Bearer ${token}`;
      const principal = await authenticate(req, transport, services);
      if (!principal) throw new Unauthenticated('authentication required: send a token (a browser: as the subprotocol nimbus-token.<token>)');
      admin = principal.systemAdmin === true;
      const rawParams = { id: decodeComponent(m[1]!, 'path parameter "id"') };
      const rawQuery = parseQuery(search);
      const auth = await authorize(route, principal, services, { params: rawParams, rawQuery, body: undefined });
      for (const k of Object.keys(rawQuery)) if (!queryNames.has(k)) throw new InvalidArgument(`unknown query parameter "${k.slice(0, 64)}"`);
      const id = auth.resource?.id ?? rawParams.id;
      let session: ExecSession;
      let framed = false; // a main process without a terminal: its two streams apart
      if (attaching) {
        const q = checkOrThrow(queryCheck, rawQuery, 'query parameter') as { rows: number; cols: number; stdin: boolean };
        ({ session, framed } = await attachSession(services, id, q));
      } else {
        const q = checkOrThrow(queryCheck, rawQuery, 'query parameter') as { cmd: string[]; rows: number; cols: number; env?: string[]; workdir?: string; user?: string };
        checkTotalLength({ cmd: q.cmd, env: q.env }, MAX_ARGV_ENV_TOTAL);
        session = await services.containers.exec(id, {
          args: q.cmd, tty: { rows: q.rows, cols: q.cols },
          ...(q.env ? { env: q.env } : {}), ...(q.workdir ? { cwd: q.workdir } : {}), ...(q.user ? { user: q.user } : {}),
        });
      }
      let upgraded = false;
      // a handshake ws refuses never reaches the callback: the command must not stay on its terminal
      socket.once('close', () => {
        if (!upgraded) session.stdout.destroy();
      });
      wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
        upgraded = true;
        // held to the caller's access while it lasts: revoked, the last message says why, and the command is hung up on at once
        const letGo = streams.hold(auth, (reason) => {
          if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ error: { code: reason.code, message: reason.message } }));
          closeRevoked(ws, reason);
          if (!session.stdout.readableEnded) session.stdout.destroy();
        });
        ws.once('close', letGo);
        bridge(ws, session, id, framed, admin);
      });
    })().catch((e: unknown) => {
      const err = toNimbusError(e);
      if (!isNimbusError(e)) log.error('exec WebSocket failed', { error: String(e) });
      refuse(socket, HTTP_STATUS[err.code], messageFor(err, admin));
    });
  };
  return {
    matches: (req) => EXEC_WS_PATH.test(pathOf(req)) || ATTACH_WS_PATH.test(pathOf(req)),
    handle,
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
}

/**
 * The main process's terminal as a session for the bridge: sized first, resized through the
 * container service, and its `exit` the container's exit code once its output ends (the `die`
 * event, heard from before the attach, so a --rm container removed at once still tells it).
 * Without a terminal (its stdin attached: nimbus run -i), its pipes, `framed` for the bridge.
 */
async function attachSession(services: Services, id: string, q: { rows: number; cols: number; stdin: boolean }): Promise<{ session: ExecSession; framed: boolean }> {
  const c = await services.containers.get(id);
  const tty = c.config.tty === true;
  // without a terminal the attach is to conmon's pipes: only for stdin (its output alone is the log's: nimbus logs -f)
  if (!tty && !(q.stdin && c.config.openStdin === true)) {
    throw new Conflict(`container ${c.name} has no terminal: attach needs one made with tty (nimbus run -t), or its stdin (made with openStdin: nimbus run -i); nimbus logs -f follows its output`);
  }
  let died!: (code: number) => void;
  const exitCode = new Promise<number>((resolve) => (died = resolve));
  const off = services.events.on((e) => {
    if (e.type === 'container' && e.id === c.id && e.action === 'die') died(typeof e.attributes?.exitCode === 'number' ? e.attributes.exitCode : -1);
  });
  try {
    const session = await services.containers.attach(c.id, { stdin: q.stdin && c.config.openStdin === true });
    if (tty) {
      try {
        await services.containers.resize(c.id, q.rows, q.cols);
      } catch (e) {
        session.stdout.destroy(); // let go of the process: the refusal is the answer
        throw e;
      }
    }
    const exit = session.exit.then(async () => {
      // the output ends with the process; an exit heard already, or the record's (a die event missed while attaching)
      const timeout = new Promise<number>((resolve) => setTimeout(() => void services.store.containers.get(c.id).then((r) => resolve(r?.exitCode ?? -1), () => resolve(-1)), 5000).unref());
      return Promise.race([exitCode, timeout]);
    }).finally(off);
    if (!tty) return { session: { ...session, exit }, framed: true };
    return {
      session: {
        ...session, exit,
        resize: (rows, cols) => void services.containers.resize(c.id, rows, cols).catch((e: unknown) => log.debug('attach resize failed', { id: c.id, error: String(e) })),
      },
      framed: false,
    };
  } catch (e) {
    off();
    throw e;
  }
}

/**
 * The session's terminal to the WebSocket and back, until the command ends or the client goes.
 * `framed`: a process without a terminal, its stdout and stderr apart (STREAM_BYTE first).
 */
function bridge(ws: WebSocket, session: ExecSession, id: string, framed: boolean, admin: boolean): void {
  const out = session.stdout;
  if (framed) {
    session.stderr.on('data', (b: Buffer) => {
      if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.of(STREAM_BYTE.stderr), b]), { binary: true });
    });
  }
  out.on('data', (b: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(framed ? Buffer.concat([Buffer.of(STREAM_BYTE.stdout), b]) : b, { binary: true });
    // slow client: stop reading the terminal until the socket's queue drains
    if (ws.bufferedAmount > HIGH_WATER_BYTES && !out.isPaused()) {
      out.pause();
      const wait = setInterval(() => {
        if (ws.readyState !== ws.OPEN || ws.bufferedAmount <= HIGH_WATER_BYTES / 2) {
          clearInterval(wait);
          out.resume();
        }
      }, 20);
    }
  });
  if (!framed) session.stderr.resume(); // empty with a TTY
  session.stdin?.on('error', () => undefined);
  ws.on('message', (data: RawData, isBinary: boolean) => {
    if (ws.readyState !== ws.OPEN) return; // closing (hung up, or access revoked): nothing more reaches the command
    const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    if (isBinary) {
      session.stdin?.write(bytes);
      return;
    }
    let msg: unknown;
    try {
      msg = JSON.parse(bytes.toString('utf8'));
    } catch {
      msg = undefined;
    }
    if (framed && CloseStdinMessage.Check(msg)) {
      session.stdin?.end(); // the pipe's end of input: the process reads end-of-file
      return;
    }
    if (!ResizeMessage.Check(msg)) {
      ws.close(1003, framed ? 'text messages are {"closeStdin":true}' : 'text messages are {"resize":{"rows":R,"cols":C}}');
      return;
    }
    const { rows, cols } = (msg as { resize: { rows: number; cols: number } }).resize;
    try {
      session.resize?.(rows, cols);
    } catch (e) {
      log.debug('exec resize failed', { id, error: String(e) });
    }
  });
  const hangUp = () => {
    if (!out.readableEnded) out.destroy();
  };
  ws.once('close', hangUp);
  ws.once('error', hangUp);
  // the last output is sent before the exit: 'end' comes after every 'data'
  const endOf = (r: typeof out) => new Promise<void>((resolve) => {
    r.once('end', resolve);
    r.once('close', resolve);
  });
  const ended = framed ? Promise.all([endOf(out), endOf(session.stderr)]) : endOf(out);
  void Promise.all([session.exit, ended]).then(
    ([exitCode]) => {
      if (ws.readyState !== ws.OPEN) return;
      ws.send(JSON.stringify({ exitCode }));
      ws.close(1000, 'exited');
    },
    (e: unknown) => {
      if (ws.readyState !== ws.OPEN) return;
      const err = toNimbusError(e);
      ws.send(JSON.stringify({ error: { code: err.code, message: messageFor(err, admin) } }));
      ws.close(1011, 'exec failed');
    },
  );
}
