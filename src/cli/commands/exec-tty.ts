/**
 * `nimbus exec -it`: the command on a terminal in the container, this terminal raw and wired
 * to it over the exec WebSocket (src/api/dashboard/exec-ws.ts): keys go up as they are typed
 * (^C included: it is the container's terminal that turns it into a signal), SIGWINCH sends
 * the new size, and this terminal is restored however the session ends.
 */
import { spawnSync } from 'node:child_process';
import type { IncomingMessage } from 'node:http';
import type { RawData, WebSocket } from 'ws';
import { ApiError, type ApiClient } from '../client.js';

export const EXEC_PROTOCOL = 'nimbus-exec';

export interface TerminalExec {
  args: string[];
  env?: string[];
  workdir?: string;
  user?: string;
}

/** This terminal's size, or the usual one when stdout is not a terminal. */
export function localTerminalSize(): { rows: number; cols: number } {
  const out = process.stdout;
  return out.isTTY && out.rows > 0 && out.columns > 0 ? { rows: out.rows, cols: out.columns } : { rows: 24, cols: 80 };
}

/** The daemon's refusal of the handshake, as the error it sent. */
function refusal(res: IncomingMessage): Promise<ApiError> {
  return new Promise((resolve) => {
    let text = '';
    res.on('data', (b: Buffer) => (text += b.toString('utf8')));
    res.on('error', () => resolve(new ApiError(res.statusCode ?? 0, 'Unavailable', `the exec WebSocket was refused (HTTP ${res.statusCode})`)));
    res.on('end', () => {
      let message = text.trim() || `HTTP ${res.statusCode}`;
      // the status's code unless the body names one (a proxy's refusal is not our JSON)
      let code = ({ 401: 'Unauthenticated', 403: 'PermissionDenied', 404: 'NotFound', 409: 'Conflict' } as Record<number, string>)[res.statusCode ?? 0] ?? 'InvalidArgument';
      try {
        const e = (JSON.parse(text) as { error?: { message?: string; code?: string } }).error;
        message = e?.message ?? message;
        code = e?.code ?? code;
      } catch {
        /* not JSON: the text is all there is */
      }
      resolve(new ApiError(res.statusCode ?? 0, code, message));
    });
  });
}

/** Runs it and resolves with its exit code. Needs stdin to be a terminal (as `docker exec -it` does). */
export async function execOnTerminal(client: ApiClient, container: string, x: TerminalExec): Promise<number> {
  const stdin = process.stdin;
  if (!stdin.isTTY) throw new ApiError(0, 'InvalidArgument', 'the input device is not a TTY: -it needs a terminal (leave out -i to run on a terminal without input)');
  const size = localTerminalSize();
  const q = new URLSearchParams();
  for (const a of x.args) q.append('cmd', a);
  q.set('rows', String(size.rows));
  q.set('cols', String(size.cols));
  for (const e of x.env ?? []) q.append('env', e);
  if (x.workdir !== undefined) q.set('workdir', x.workdir);
  if (x.user !== undefined) q.set('user', x.user);
  const socket = await openTerminalSocket(client, `/containers/${encodeURIComponent(container)}/exec?${q.toString()}`, 'exec');
  const code = await relayTerminal(socket, { input: true, what: 'exec' });
  return code === 'detached' ? 0 : code;
}

/**
 * `nimbus run -it` / `run -t` and `nimbus attach`: the main process's terminal (GET
 * /containers/{id}/attach, a WebSocket), sized as this one; with `input`, this terminal raw and
 * typed into it (ctrl-p ctrl-q detaches, leaving it running). `afterOpen` runs once the attach
 * holds (run's start: nothing printed is missed). Resolves with the container's exit code, or
 * 'detached'.
 */
export async function attachOnTerminal(client: ApiClient, container: string, opts: { input: boolean; afterOpen?: () => Promise<void> }): Promise<number | 'detached'> {
  if (opts.input && !process.stdin.isTTY) throw new ApiError(0, 'InvalidArgument', 'the input device is not a TTY: -it needs a terminal (leave out -i for the output alone)');
  const size = localTerminalSize();
  const q = new URLSearchParams({ rows: String(size.rows), cols: String(size.cols), stdin: String(opts.input) });
  const socket = await openTerminalSocket(client, `/containers/${encodeURIComponent(container)}/attach?${q.toString()}`, 'attach');
  // what arrives while the start is asked (the prompt, at once) stays held for the relay, as does a close
  try {
    await opts.afterOpen?.();
  } catch (e) {
    socket.release();
    socket.ws.terminate();
    throw e;
  }
  return relayTerminal(socket, { input: opts.input, what: 'attach', detachKeys: true });
}

/**
 * `nimbus run -i` without -t: the main process's stdin and output over the attach WebSocket, no
 * terminal. This process's stdin is piped to it, its end the process's end of input; its stdout
 * and stderr come apart (each message's first byte) to this process's. `afterOpen` as above.
 * Resolves with the container's exit code.
 */
export async function attachWithPipes(client: ApiClient, container: string, opts: { afterOpen?: () => Promise<void> }): Promise<number> {
  const socket = await openTerminalSocket(client, `/containers/${encodeURIComponent(container)}/attach?stdin=true`, 'attach');
  const ws = socket.ws;
  let result: { exitCode?: number; error?: { code?: string; message?: string } } | undefined;
  const onMessage = (data: RawData, isBinary: boolean) => {
    const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    if (!isBinary) result = JSON.parse(bytes.toString('utf8')) as typeof result;
    else (bytes[0] === 2 ? process.stderr : process.stdout).write(bytes.subarray(1));
  };
  const closed = socket.handOver(onMessage) ? Promise.resolve() : new Promise<void>((resolve) => ws.once('close', () => resolve()));
  try {
    await opts.afterOpen?.();
  } catch (e) {
    ws.terminate();
    throw e;
  }
  const stdin = process.stdin;
  const send = (b: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(b, { binary: true });
    // a fast producer waits while the socket's queue is long
    if (ws.bufferedAmount > 1024 * 1024) {
      stdin.pause();
      const wait = setInterval(() => {
        if (ws.readyState !== ws.OPEN || ws.bufferedAmount < 512 * 1024) {
          clearInterval(wait);
          stdin.resume();
        }
      }, 10);
    }
  };
  const endInput = () => {
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ closeStdin: true }));
  };
  stdin.on('data', send);
  stdin.once('end', endInput);
  stdin.resume();
  try {
    await closed;
  } finally {
    stdin.off('data', send);
    stdin.off('end', endInput);
    stdin.pause();
  }
  if (result?.exitCode !== undefined) return result.exitCode;
  throw new ApiError(0, result?.error?.code ?? 'Unavailable', result?.error?.message ?? 'the attach connection closed without an exit code');
}

/**
 * An open terminal socket and what reached it before its reader took over. ws emits the first
 * messages on the tick after 'open', before a caller awaiting the open runs: a server whose
 * output is ready at the handshake (conmon's exec relay sends it at once) had its first message
 * dropped, and a session waiting for a prompt sat silent. So messages and a close are held from
 * the socket's creation until `release()`.
 */
export interface TerminalSocket {
  ws: WebSocket;
  early: Array<[RawData, boolean]>;
  closed: boolean;
  /** Stop holding (nobody will read it: the caller gives up on the socket). */
  release(): void;
  /** The reader takes over: what was held is replayed to `onMessage`, which then hears the rest. True if the socket closed already. */
  handOver(onMessage: (data: RawData, isBinary: boolean) => void): boolean;
}

async function openTerminalSocket(client: ApiClient, path: string, what: string): Promise<TerminalSocket> {
  return holdUntilRead(client.webSocket(path, EXEC_PROTOCOL), what);
}

/** Holds `ws`'s messages and close from now on; resolves once it is open (rejects with the server's refusal). */
export async function holdUntilRead(ws: WebSocket, what: string): Promise<TerminalSocket> {
  const socket: TerminalSocket = {
    ws,
    early: [],
    closed: false,
    release: () => {
      ws.off('message', hold);
      ws.off('close', markClosed);
    },
    handOver: (onMessage) => {
      socket.release();
      for (const [data, isBinary] of socket.early.splice(0)) onMessage(data, isBinary);
      ws.on('message', onMessage);
      return socket.closed;
    },
  };
  const hold = (data: RawData, isBinary: boolean) => void socket.early.push([data, isBinary]);
  const markClosed = () => void (socket.closed = true);
  ws.on('message', hold);
  ws.once('close', markClosed);
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_req, res) => void refusal(res).then(reject));
      ws.once('error', (e) => reject(new ApiError(0, 'Unavailable', `cannot reach nimbusd for the ${what}: ${e.message}`)));
    });
  } catch (e) {
    socket.release();
    throw e;
  }
  return socket;
}

/** ctrl-p then ctrl-q: Docker's default detach keys. */
const DETACH = [0x10, 0x11];

/** This terminal to the socket and back until the server's last message; resolves with its exit code, or 'detached'. */
async function relayTerminal(socket: TerminalSocket, opts: { input: boolean; what: string; detachKeys?: boolean }): Promise<number | 'detached'> {
  const ws = socket.ws;
  const stdin = process.stdin;
  let detached = false;
  let matched = 0;

  const sendSize = () => {
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ resize: localTerminalSize() }));
  };
  const onKeys = (b: Buffer) => {
    if (opts.detachKeys) {
      // the keys of a detach are held back until it is complete or broken (then sent in order)
      const pass: number[] = [];
      for (const k of b) {
        if (k === DETACH[matched]) {
          if (++matched === DETACH.length) {
            detached = true;
            ws.close(1000, 'detached');
            return;
          }
          continue;
        }
        pass.push(...DETACH.slice(0, matched));
        matched = k === DETACH[0] ? 1 : 0;
        if (!matched) pass.push(k);
      }
      b = Buffer.from(pass);
      if (!b.length) return;
    }
    if (ws.readyState === ws.OPEN) ws.send(b, { binary: true });
  };
  if (opts.input) {
    stdin.setRawMode(true);
    // libuv's raw mode keeps output processing (\n → \r\n), which the container's pty did already;
    // setRawMode(false) puts back the settings libuv saved before, this included
    spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'], timeout: 2000 });
  }
  try {
    if (opts.input) {
      stdin.on('data', onKeys);
      stdin.resume();
    }
    process.on('SIGWINCH', sendSize);
    return await new Promise<number | 'detached'>((resolve, reject) => {
      let result: { exitCode?: number; error?: { code?: string; message?: string } } | undefined;
      const onMessage = (data: RawData, isBinary: boolean) => {
        const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
        if (isBinary) process.stdout.write(bytes);
        else result = JSON.parse(bytes.toString('utf8')) as typeof result;
      };
      const onClose = () => {
        if (result?.exitCode !== undefined) resolve(result.exitCode);
        else if (detached) resolve('detached');
        else reject(new ApiError(0, result?.error?.code ?? 'Unavailable', result?.error?.message ?? `the ${opts.what} connection closed without an exit code`));
      };
      if (socket.handOver(onMessage)) return onClose();
      ws.once('close', onClose);
      ws.once('error', (e) => reject(new ApiError(0, 'Unavailable', `the ${opts.what} connection failed: ${e.message}`)));
    });
  } finally {
    process.off('SIGWINCH', sendSize);
    if (opts.input) {
      stdin.off('data', onKeys);
      stdin.setRawMode(false);
      stdin.pause();
    }
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.terminate();
  }
}
