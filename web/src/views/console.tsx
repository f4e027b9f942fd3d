/**
 * Terminals in xterm.js over WebSockets: a VM's serial console (/vms/{id}/console) and a
 * container's console, `sh` on a TTY (/containers/{id}/exec, sized to the panel by the fit
 * addon and resized with it). The token travels as a subprotocol: a browser cannot set headers
 * on a WebSocket, and a URL would log it. xterm.js is loaded when a console opens, not with the list.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { storedToken } from '../api.js';

interface Connection {
  /** The socket's URL path and query, given the terminal's size once fitted. */
  path(size: { rows: number; cols: number }): string;
  protocol: string;
  /** Resizes travel as text messages (the exec); a serial line has no size to tell. */
  resizes: boolean;
}

function XtermConsole({ label, conn, refusedHint }: { label: string; conn: Connection; refusedHint: string }) {
  const host = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<'connecting' | 'open' | 'closed'>('connecting');
  const [reason, setReason] = useState('');
  const key = conn.path({ rows: 0, cols: 0 });
  useEffect(() => {
    let disposed = false;
    let cleanup = () => undefined as void;
    void (async () => {
      const [{ Terminal }, { FitAddon }] = await Promise.all([import('@xterm/xterm'), import('@xterm/addon-fit'), import('@xterm/xterm/css/xterm.css')]);
      if (disposed || !host.current) return;
      const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000, screenReaderMode: true });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(host.current);
      fit.fit();
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      const ws = new WebSocket(`${scheme}://${location.host}${conn.path({ rows: term.rows, cols: term.cols })}`, [conn.protocol, `nimbus-token.${storedToken() ?? ''}`]);
      ws.binaryType = 'arraybuffer';
      let ended = '';
      ws.onopen = () => {
        setState('open');
        term.focus();
      };
      ws.onmessage = (e) => {
        if (typeof e.data !== 'string') {
          term.write(new Uint8Array(e.data as ArrayBuffer));
          return;
        }
        // the exec's last word: its exit code or its error
        const m = JSON.parse(e.data) as { exitCode?: number; error?: { message?: string } };
        ended = m.exitCode !== undefined ? `exited with code ${m.exitCode}` : (m.error?.message ?? '');
      };
      ws.onclose = (e) => {
        setState('closed');
        setReason(ended || e.reason || (e.code === 1006 ? refusedHint : `code ${e.code}`));
      };
      const encoder = new TextEncoder();
      const input = term.onData((d) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d));
      });
      const resized = term.onResize(({ rows, cols }) => {
        if (conn.resizes && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ resize: { rows, cols } }));
      });
      const onResize = () => fit.fit();
      addEventListener('resize', onResize);
      cleanup = () => {
        removeEventListener('resize', onResize);
        input.dispose();
        resized.dispose();
        ws.close();
        term.dispose();
      };
    })();
    return () => {
      disposed = true;
      cleanup();
    };
  }, [key]);
  return (
    <section aria-label={label} class="console">
      <p class="muted" data-testid="console-state">Console: {state}{reason ? ` — ${reason}` : ''}</p>
      <div class="terminal" ref={host} data-testid="terminal" />
    </section>
  );
}

export function VmConsole({ id, name }: { id: string; name: string }) {
  return (
    <XtermConsole label={`Serial console of ${name}`} refusedHint="refused or cut (is the VM running? do you hold the member role?)"
      conn={{ path: () => `/vms/${encodeURIComponent(id)}/console`, protocol: 'nimbus-console', resizes: false }} />
  );
}

/** `sh` on a terminal in the container, as `nimbus exec -it CONTAINER sh` (member role, as the exec). */
export function ContainerConsole({ id, name }: { id: string; name: string }) {
  return (
    <XtermConsole label={`Console of ${name}`} refusedHint="refused or cut (is the container running? do you hold the member role?)"
      conn={{
        path: ({ rows, cols }) => `/containers/${encodeURIComponent(id)}/exec?cmd=sh&rows=${Math.max(rows, 1)}&cols=${Math.max(cols, 1)}`,
        protocol: 'nimbus-exec',
        resizes: true,
      }} />
  );
}
