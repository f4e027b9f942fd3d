/**
 * A VM's serial console in xterm.js over the WebSocket at /vms/{id}/console (the token travels
 * as a subprotocol: a browser cannot set headers on a WebSocket, and a URL would log it).
 * xterm.js is loaded when a console opens, not with the list.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { storedToken } from '../api.js';

export function VmConsole({ id, name }: { id: string; name: string }) {
  const host = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<'connecting' | 'open' | 'closed'>('connecting');
  const [reason, setReason] = useState('');
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
      const ws = new WebSocket(`${scheme}://${location.host}/vms/${encodeURIComponent(id)}/console`, ['nimbus-console', `nimbus-token.${storedToken() ?? ''}`]);
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        setState('open');
        term.focus();
      };
      ws.onmessage = (e) => term.write(new Uint8Array(e.data as ArrayBuffer));
      ws.onclose = (e) => {
        setState('closed');
        setReason(e.reason || (e.code === 1006 ? 'refused or cut (is the VM running? do you hold the member role?)' : `code ${e.code}`));
      };
      const encoder = new TextEncoder();
      const input = term.onData((d) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d));
      });
      const onResize = () => fit.fit();
      addEventListener('resize', onResize);
      cleanup = () => {
        removeEventListener('resize', onResize);
        input.dispose();
        ws.close();
        term.dispose();
      };
    })();
    return () => {
      disposed = true;
      cleanup();
    };
  }, [id]);
  return (
    <section aria-label={`Serial console of ${name}`} class="console">
      <p class="muted" data-testid="console-state">Console: {state}{reason ? ` — ${reason}` : ''}</p>
      <div class="terminal" ref={host} data-testid="terminal" />
    </section>
  );
}
