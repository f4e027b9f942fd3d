/**
 * A VM's serial console over a WebSocket, for the browser: POST /vms/{id}/console streams its
 * request body, which a browser cannot do, so `GET /vms/{id}/console` with `Upgrade: websocket`
 * bridges to the same services.vms.console. Bytes both ways as binary messages.
 *
 * A browser cannot set the Authorization header on a WebSocket either: the token comes as a
 * second subprotocol, `nimbus-token.<token>` (never in the URL, which ends up in logs), and is
 * checked exactly as the route's declaration says (the edge's authenticate and authorize, with
 * vmConsole's auth: member on the VM's project). The server answers with `nimbus-console` only.
 * A cross-site page has no token, and the Origin must be this host's anyway. The caller is held to
 * that role while the console is open (open-streams.ts): revoked, it closes with 1008 and the reason.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { PassThrough } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { InvalidArgument, isNimbusError, messageFor, NotFound, PermissionDenied, toNimbusError, type NimbusError } from '../../core/errors.js';
import { HTTP_STATUS } from '../../core/http-status.js';
import { logger } from '../../core/log.js';
import type { Services } from '../../control/services.js';
import { authenticate, authorize } from '../authz.js';
import { decodeComponent, parseQuery } from '../edge.js';
import type { Route } from '../route.js';
import type { OpenStreams } from '../open-streams.js';

const log = logger('api');

export const CONSOLE_PROTOCOL = 'nimbus-console';
export const TOKEN_PROTOCOL_PREFIX = 'nimbus-token.';
const PATH = /^\/vms\/([^/]+)\/console$/;
/** Keystrokes and pastes: a message larger than this is not typing. */
const MAX_MESSAGE_BYTES = 64 * 1024;

/** Refuses an upgrade with a plain HTTP answer on the raw socket (the handshake never happened). */
export function refuse(socket: Duplex, status: number, message: string): void {
  const body = JSON.stringify({ error: { message } });
  socket.end(`HTTP/1.1 ${status} ${status === 401 ? 'Unauthorized' : status === 403 ? 'Forbidden' : status === 404 ? 'Not Found' : 'Error'}\r\n` +
    `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

/** A close frame's reason: at most 123 bytes (RFC 6455 5.5: a control frame's payload is 125, the code 2). */
const MAX_CLOSE_REASON_BYTES = 123;

/**
 * Ends a WebSocket whose caller may no longer use it (open-streams.ts): 1008, policy violation,
 * with the reason. The session behind it is the caller's to let go at once: the client's answering
 * close, which would otherwise do it, may never come.
 */
export function closeRevoked(ws: WebSocket, reason: NimbusError): void {
  let text = `${reason.code}: ${reason.message}`;
  while (Buffer.byteLength(text) > MAX_CLOSE_REASON_BYTES) text = text.slice(0, -1);
  if (ws.readyState === ws.OPEN) ws.close(1008, text);
}

/** The Origin a browser sends must name the host it connected to (no cross-site page drives a console). */
export function sameOrigin(req: IncomingMessage): boolean {
  const origin = req.headers.origin;
  if (origin === undefined) return true; // not a browser: the token alone decides
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

export interface ConsoleUpgrades {
  /** The TCP server's 'upgrade' listener. */
  handle(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** Ends every console: an upgraded socket would otherwise hold the server's close open. */
  close(): void;
}

export function consoleUpgrade(routes: Route[], services: Services, streams: OpenStreams): ConsoleUpgrades {
  const route = routes.find((r) => r.operationId === 'vmConsole');
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: MAX_MESSAGE_BYTES,
    handleProtocols: (protocols) => (protocols.has(CONSOLE_PROTOCOL) ? CONSOLE_PROTOCOL : false),
  });
  const handle = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // an administrator's errors say everything (messageFor); the caller is not known yet
    let admin = false;
    void (async () => {
      const [path = '', search = ''] = (req.url ?? '/').split('?', 2);
      const m = PATH.exec(path);
      if (!route || req.method !== 'GET' || !m) throw new NotFound(`no WebSocket at ${path.slice(0, 128)}`);
      if (String(req.headers.upgrade).toLowerCase() !== 'websocket' || !req.headers['sec-websocket-key']) throw new InvalidArgument('not a WebSocket handshake');
      if (!sameOrigin(req)) throw new PermissionDenied('the console WebSocket is for pages of this origin');
      const offered = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
      const token = offered.find((p) => p.startsWith(TOKEN_PROTOCOL_PREFIX))?.slice(TOKEN_PROTOCOL_PREFIX.length);
      if (token) req.headers.authorization = `Bearer ${token}`;
      const principal = await authenticate(req, 'tcp', services);
      admin = principal?.systemAdmin === true;
      const rawParams = { id: decodeComponent(m[1]!, 'path parameter "id"') };
      const rawQuery = parseQuery(search);
      const auth = await authorize(route, principal, services, { params: rawParams, rawQuery, body: undefined });
      const id = auth.resource?.id ?? rawParams.id;
      const input = new PassThrough();
      const ac = new AbortController();
      const output = await services.vms.console(id, input, ac.signal);
      let upgraded = false;
      // a handshake ws refuses never reaches the callback: the console must not stay open
      socket.once('close', () => {
        if (!upgraded) ac.abort();
      });
      wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
        upgraded = true;
        ws.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
          if (ws.readyState !== ws.OPEN) return; // closing: nothing more reaches the guest
          input.write(Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data));
        });
        const hangUp = () => {
          ac.abort();
          input.end();
        };
        const letGo = streams.hold(auth, (reason) => {
          closeRevoked(ws, reason);
          hangUp();
        });
        ws.once('close', () => {
          letGo();
          hangUp();
        });
        ws.once('error', hangUp);
        void (async () => {
          for await (const frame of output) {
            if (ws.readyState !== ws.OPEN) break;
            ws.send(Buffer.from(frame.data, 'base64'));
          }
          ws.close(1000, 'console ended');
        })().catch(() => ws.terminate());
      });
    })().catch((e: unknown) => {
      const err = toNimbusError(e);
      if (!isNimbusError(e)) log.error('console WebSocket failed', { error: String(e) });
      refuse(socket, HTTP_STATUS[err.code], messageFor(err, admin));
    });
  };
  return {
    handle,
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
}
