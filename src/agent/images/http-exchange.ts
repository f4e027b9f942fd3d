/**
 * One HTTP(S) exchange for the registry client over node:http and node:https, answered as the
 * small part of fetch's Response the client reads (status, headers, a body to iterate or cancel,
 * text, json). Not fetch itself: Node's fetch is undici, whose first connection in a process
 * loads it and compiles its WebAssembly HTTP parser (~30 ms of a fresh daemon's first pull here,
 * docs/image-transfer.md); node:http's parser is native and already loaded by the API server.
 * Connections are kept alive per origin, as fetch's pool did.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { checkLiteralHost, guardedLookup } from './registry-egress.js';

/**
 * An idle kept-alive connection is closed after 4 s (or sooner if the registry's Keep-Alive hint
 * says so), as undici's pool did: the longer one waits, the likelier the registry closed it as
 * the next request is sent on it. (The timeout only ever ends sockets in the free pool.)
 */
const IDLE_SOCKET_MS = 4_000;

/**
 * Guarded connections (registry-egress.ts) have agents of their own, whose sockets connect only
 * to addresses the guard checked: a kept-alive socket to a registry an administrator named is
 * never handed to a request the guard would have refused.
 */
const agents = {
  open: { http: new HttpAgent({ keepAlive: true, timeout: IDLE_SOCKET_MS }), https: new HttpsAgent({ keepAlive: true, timeout: IDLE_SOCKET_MS }) },
  guarded: {
    http: new HttpAgent({ keepAlive: true, timeout: IDLE_SOCKET_MS, lookup: guardedLookup }),
    https: new HttpsAgent({ keepAlive: true, timeout: IDLE_SOCKET_MS, lookup: guardedLookup }),
  },
};

/** A body: its chunks as they arrive; cancel drops the rest (and the connection). */
export interface AnswerBody extends AsyncIterable<Uint8Array> {
  cancel(): Promise<void>;
}

export interface RegistryAnswer {
  readonly status: number;
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null };
  /** Null for a HEAD (no body to read or cancel). */
  readonly body: AnswerBody | null;
  text(): Promise<string>;
  json(): Promise<unknown>;
}

export interface ExchangeInit {
  method: 'GET' | 'HEAD';
  headers: Record<string, string>;
  /** Aborts the exchange, also while its body is read. */
  signal?: AbortSignal;
  /** Connect only where registry-egress.ts allows (an EgressRefused rejects, as the `cause`). */
  guarded?: boolean;
}

/**
 * Sends the request and resolves with the answer once its headers are in (redirects are the
 * caller's). A failure to connect or a connection lost before the headers rejects with an Error
 * whose `cause` is the socket's error (its `code`, as fetch's failures carry it).
 */
export function exchange(url: string, init: ExchangeInit): Promise<RegistryAnswer> {
  const target = new URL(url);
  const tls = target.protocol === 'https:';
  const send = tls ? httpsRequest : httpRequest;
  const pool = init.guarded ? agents.guarded : agents.open;
  return new Promise((resolve, reject) => {
    // an IP literal is connected to without a lookup: checked here
    if (init.guarded) {
      try {
        checkLiteralHost(target.hostname);
      } catch (e) {
        reject(new Error(`request to ${target.origin} refused`, { cause: e }));
        return;
      }
    }
    const req = send(
      target,
      { method: init.method, headers: init.headers, agent: tls ? pool.https : pool.http, ...(init.signal ? { signal: init.signal } : {}) },
      (res) => resolve(answer(res, init.method)),
    );
    req.on('error', (e) => reject(new Error(`request to ${target.origin} failed`, { cause: e })));
    req.end();
  });
}

function answer(res: IncomingMessage, method: string): RegistryAnswer {
  const status = res.statusCode ?? 0;
  const headers = {
    get(name: string): string | null {
      const v = res.headers[name.toLowerCase()];
      if (v === undefined) return null;
      return Array.isArray(v) ? v.join(', ') : v;
    },
  };
  // a body that fails after the headers (reset, abort) errors its reader; nobody listening must not crash us
  res.on('error', () => undefined);
  const body: AnswerBody | null =
    method === 'HEAD'
      ? (res.resume(), null)
      : {
          [Symbol.asyncIterator]: () => res[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>,
          cancel: () =>
            new Promise<void>((done) => {
              // a short answer (a 401's, a redirect's) is drained, and the request after it finds
              // its connection free again
              if (res.readableEnded || res.destroyed) return done();
              // complete: all of it has arrived, and its connection is free once it is read; one
              // still arriving is cut (a registry that stalls must not hold us)
              if (res.complete) {
                res.once('end', done).once('close', done).resume();
              } else {
                res.destroy();
                done();
              }
            }),
        };
  const text = async (): Promise<string> => {
    if (!body) return '';
    const parts: Buffer[] = [];
    for await (const chunk of res) parts.push(chunk as Buffer);
    return Buffer.concat(parts).toString('utf8');
  };
  return { status, ok: status >= 200 && status < 300, headers, body, text, json: async () => JSON.parse(await text()) as unknown };
}
