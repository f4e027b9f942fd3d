/**
 * `nimbus exec -it`: the command on a terminal in the container, this terminal raw and wired
 * to it over the exec WebSocket (src/api/dashboard/exec-ws.ts): keys go up as they are typed
 * (^C included: it is the container's terminal that turns it into a signal), SIGWINCH sends
 * the new size, and this terminal is restored however the session ends.
 */
import { spawnSync } from 'node:child_process';
import type { IncomingMessage } from 'node:http';
import type { WebSocket } from 'ws';
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
      let code = 'InvalidArgument';
      try {
        const e = (JSON.parse(text) as { error?: { message?: string; code?: string } }).error;
        message = e?.message ?? message;
        code = e?.code ?? ({ 401: 'Unauthenticated', 403: 'PermissionDenied', 404: 'NotFound', 409: 'Conflict' } as Record<number, string>)[res.statusCode ?? 0] ?? code;
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
  const ws: WebSocket = client.webSocket(`/containers/${encodeURIComponent(container)}/exec?${q.toString()}`, EXEC_PROTOCOL);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => void refusal(res).then(reject));
    ws.once('error', (e) => reject(new ApiError(0, 'Unavailable', `cannot reach nimbusd for the exec: ${e.message}`)));
  });

  const sendSize = () => {
    if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ resize: localTerminalSize() }));
  };
  const onKeys = (b: Buffer) => {
    if (ws.readyState === ws.OPEN) ws.send(b, { binary: true });
  };
  stdin.setRawMode(true);
  // libuv's raw mode keeps output processing (\n → \r\n), which the container's pty did already;
  // setRawMode(false) puts back the settings libuv saved before, this included
  spawnSync('stty', ['-opost'], { stdio: ['inherit', 'ignore', 'ignore'], timeout: 2000 });
  try {
    stdin.on('data', onKeys);
    stdin.resume();
    process.on('SIGWINCH', sendSize);
    return await new Promise<number>((resolve, reject) => {
      let result: { exitCode?: number; error?: { code?: string; message?: string } } | undefined;
      ws.on('message', (data, isBinary) => {
        const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
        if (isBinary) process.stdout.write(bytes);
        else result = JSON.parse(bytes.toString('utf8')) as typeof result;
      });
      ws.once('close', () => {
        if (result?.exitCode !== undefined) resolve(result.exitCode);
        else reject(new ApiError(0, result?.error?.code ?? 'Unavailable', result?.error?.message ?? 'the exec connection closed without an exit code'));
      });
      ws.once('error', (e) => reject(new ApiError(0, 'Unavailable', `the exec connection failed: ${e.message}`)));
    });
  } finally {
    process.off('SIGWINCH', sendSize);
    stdin.off('data', onKeys);
    stdin.setRawMode(false);
    stdin.pause();
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.terminate();
  }
}
