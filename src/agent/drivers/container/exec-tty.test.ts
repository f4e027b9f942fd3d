/**
 * exec with a TTY through the container driver and each real runtime usable here (runc or crun
 * on a pty of node-pty): the command sees a terminal of the size asked, a resize reaches it
 * (runc's own SIGWINCH handling; crun's through conmon's exec mode, conmon-exec.ts), input
 * typed reaches it, and its exit code comes back.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { detectCgroupLayout, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { mountsUnder } from '../../snapshots/mount.js';
import { bindRootfsSpec, freshId } from '../instance-driver-conformance.js';
import type { ExecSession } from '../instance-driver.js';
import { ContainerDriver } from './container-driver.js';
import { RUNTIME_NAMES, probeRuntime } from './oci-runtime.js';
import { NimbusError } from '../../../core/errors.js';
import type { Agent } from '../../agent.js';
import { startAgentServer } from '../../remote/agent-server.js';
import { RemoteAgent } from '../../remote/remote-agent.js';
import { EXEC_HEADER, PATHS, PROTOCOL_HEADER } from '../../remote/agent-protocol.js';
import http from 'node:http';

import { TerminalReader, makeTerminalRootfs, waitForSize } from './terminal-test-support.js';

for (const runtime of RUNTIME_NAMES) {
  describe(`exec with a TTY (container driver, ${runtime})`, { skip: await probeRuntime(runtime) }, () => {
    let base: string;
    let d: ContainerDriver;
    let id: string;
    const cgroupParent = `/nimbus-test-${process.pid}-tty-${runtime}`;

    before(async () => {
      base = await mkdtemp(path.join(tmpdir(), 'nimbus-tty-'));
      const rootfs = path.join(base, 'rootfs');
      await makeTerminalRootfs(rootfs);
      d = new ContainerDriver({ stateDir: path.join(base, 'state'), runtime, cgroupParent });
      id = freshId('tty');
      await d.create(bindRootfsSpec(rootfs, id, ['sleep', '600']));
      await d.start(id);
    });

    after(async () => {
      await d?.delete(id).catch((e: unknown) => console.error('teardown delete', e));
      d?.close();
      await removeCgroupParentIfEmpty(await detectCgroupLayout(), cgroupParent);
      if (base && (await mountsUnder(base)).length === 0) await rm(base, { recursive: true, force: true });
    });

    test('the command runs on a pty of the size asked; a resize reaches it; input reaches it; its exit code comes back', async () => {
      // runc sizes the pty before the command runs; crun only after it has let it go (docs/exec.md),
      // so on crun the command waits (quietly) for the size it was asked: a size never set still fails
      const firstSize = runtime === 'runc' ? 'stty size' : `until [ "$(stty size 2>/dev/null)" = "31 97" ]; do sleep 0.02; done; stty size`;
      const x: ExecSession = await d.exec(id, { args: ['sh', '-c', `tty; ${firstSize}; read line; echo "got:$line"; ${waitForSize(50, 132)}; exit 7`], tty: { rows: 31, cols: 97 } });
      assert.ok(x.resize, 'a TTY session can be resized');
      const term = new TerminalReader(x.stdout);
      let errBytes = 0;
      x.stderr.on('data', (b: Buffer) => (errBytes += b.length));
      await term.waitFor(/\/dev\/pts\/\d+\r+\n31 97\r+\n/);
      x.resize(50, 132);
      x.stdin!.write('hello tty\r');
      await term.waitFor(/got:hello tty\r+\n50 132\r+\n/);
      assert.equal(await x.exit, 7);
      assert.equal(errBytes, 0, 'with a TTY, stderr is the terminal too');
    });

    test('an interactive shell: typed lines run, stty size follows resizes, exit ends the session', async () => {
      const x = await d.exec(id, { args: ['sh'], tty: { rows: 24, cols: 80 } });
      const term = new TerminalReader(x.stdout);
      await term.waitFor(/# /);
      x.stdin!.write('echo $((6*7)) $TERM; stty size\r');
      await term.waitFor(/42 xterm\r+\n24 80\r+\n/);
      const mark = term.text.length;
      x.resize!(40, 100);
      x.stdin!.write(`${waitForSize(40, 100)}\r`);
      await term.waitFor(/40 100\r+\n/, 10_000, mark);
      x.stdin!.write('exit 3\r');
      assert.equal(await x.exit, 3);
    });

    /** The same conversation with a shell, whoever carries it: what the terminal showed and the exit code. */
    async function conversation(exec: Agent['execInContainer']): Promise<{ sizes: string[]; answer: string; code: number }> {
      const x = await exec(id, { args: ['sh'], tty: { rows: 20, cols: 70 } });
      const term = new TerminalReader(x.stdout);
      await term.waitFor(/# /);
      x.stdin!.write('stty size\r');
      const first = (await term.waitFor(/(\d+ \d+)\r+\n/))[1]!;
      const mark = term.text.length;
      x.resize!(33, 111);
      x.stdin!.write(`${waitForSize(33, 111)}; echo "answer=$((6*7))"\r`);
      const [, second, answer] = (await term.waitFor(/(\d+ \d+)\r+\nanswer=(\d+)\r+\n/, 10_000, mark))!;
      x.stdin!.write('exit 4\r');
      return { sizes: [first, second!], answer: answer!, code: await x.exit };
    }

    test('agent protocol: a remote agent carries the TTY, input and resizes as the local one does; a protocol-5 connection refuses', async () => {
      // the agent server calls only execInContainer here; LocalAgent's is the driver's exec
      const served: ExecSession[] = [];
      const agent = {
        execInContainer: async (cid: string, req: Parameters<Agent['execInContainer']>[1]) => {
          const s = await d.exec(cid, req);
          served.push(s);
          return s;
        },
        onVmExit() {},
        onContainerExit() {},
      } as unknown as Agent;
      const token = 'tty-test-token-0123456789';
      const local = await conversation((cid, req) => agent.execInContainer(cid, req));
      assert.deepEqual(local, { sizes: ['20 70', '33 111'], answer: '42', code: 4 });

      const socketPath = path.join(base, 'agent.sock');
      const server = await startAgentServer(agent, { token, socketPath });
      const remote = new RemoteAgent({ name: 'tty-host', url: server.url, token });
      const old = new RemoteAgent({ name: 'tty-host', url: server.url, token, protocol: { min: 2, max: 5 } });
      try {
        assert.deepEqual(await conversation((cid, req) => remote.execInContainer(cid, req)), local);
        // a remote reader that goes hangs up on the command at the agent too (SIGHUP: 129 there)
        const before = served.length;
        const gone = await remote.execInContainer(id, { args: ['sh', '-c', 'echo ready; sleep 600'], tty: { rows: 24, cols: 80 } });
        await new TerminalReader(gone.stdout).waitFor(/ready/);
        gone.stdout.destroy();
        await assert.rejects(gone.exit);
        assert.equal(await served[before]!.exit, 129);
        // a connection that agreed on 5 never sends it
        await assert.rejects(old.execInContainer(id, { args: ['sh'], tty: { rows: 24, cols: 80 } }), (e: unknown) =>
          e instanceof NimbusError && e.code === 'Conflict' && /speaks protocol 5 and cannot run an exec on a terminal \(a TTY exec needs protocol 6\)/.test(e.message));
        // without one it still runs, as before
        const plain = await old.execInContainer(id, { args: ['echo', 'no-tty'] });
        assert.equal(await new Promise<string>((r) => { let t = ''; plain.stdout.on('data', (b: Buffer) => (t += b)).on('end', () => r(t)); }), 'no-tty\n');
        assert.equal(await plain.exit, 0);
        // ...and an agent that is asked at 5 anyway refuses rather than run it without a terminal
        const status = await new Promise<{ code: number; body: string }>((resolve, reject) => {
          const req = http.request({
            socketPath, method: 'POST', path: PATHS.exec(id),
            headers: { authorization: `Bearer ${token}`, [PROTOCOL_HEADER]: '5', [EXEC_HEADER]: Buffer.from(JSON.stringify({ args: ['sh'], tty: { rows: 24, cols: 80 } })).toString('base64') },
          }, (res) => {
            let body = '';
            res.on('data', (b: Buffer) => (body += b)).on('end', () => resolve({ code: res.statusCode ?? 0, body }));
          });
          req.on('error', reject);
          req.end();
        });
        assert.equal(status.code, 409, status.body);
        assert.match(status.body, /an exec with a TTY is part of agent protocol 6; the request speaks 5/);
      } finally {
        await remote.close();
        await old.close();
        await server.close();
      }
    });

    test('a bad terminal size is refused before anything runs; a reader that goes hangs up on the command', async () => {
      await assert.rejects(d.exec(id, { args: ['sh'], tty: { rows: 0, cols: 80 } }), /rows and cols are integers/);
      const x = await d.exec(id, { args: ['sh', '-c', 'echo ready; sleep 600'], tty: { rows: 24, cols: 80 } });
      await new TerminalReader(x.stdout).waitFor(/ready/);
      x.stdout.destroy();
      // SIGHUP: 128 + 1
      assert.equal(await x.exit, 129);
    });

    test('what a command prints just before it exits reaches the terminal, every time (crun 1.8.1 in the foreground flushed it to its error log)', async () => {
      for (let i = 0; i < 20; i++) {
        const x = await d.exec(id, { args: ['sh', '-c', 'tty; exit 2'], tty: { rows: 24, cols: 80 } });
        const chunks: Buffer[] = [];
        x.stdout.on('data', (b: Buffer) => chunks.push(b));
        assert.equal(await x.exit, 2);
        await new Promise((r) => setImmediate(r));
        assert.match(Buffer.concat(chunks).toString(), /^\/dev\/pts\/\d+\r+\n$/, `run ${i}`);
      }
    });
  });
}
