/**
 * A container's main process on a terminal and with stdin, through conmon (-t, -i) and the real
 * runtime: attach before the start (nothing is missed), typed input, resizes, the exit; stdin
 * without a terminal ending at the client's end; the same through a RemoteAgent and an agent
 * server, and a connection of protocol 7 refusing rather than running the process without them.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { detectCgroupLayout, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { mountsUnder } from '../../snapshots/mount.js';
import { bindRootfsSpec, freshId } from '../instance-driver-conformance.js';
import type { AttachSession, ProcessSpec } from '../instance-driver.js';
import { ContainerDriver } from './container-driver.js';
import { probeRuntime } from './oci-runtime.js';
import { NimbusError } from '../../../core/errors.js';
import type { Agent, ContainerCreateRequest } from '../../agent.js';
import { startAgentServer } from '../../remote/agent-server.js';
import { RemoteAgent } from '../../remote/remote-agent.js';
import { TerminalReader, makeTerminalRootfs, waitForSize } from './terminal-test-support.js';

const runcReason = await probeRuntime('runc');

const text = (s: Readable) => new Promise<string>((resolve) => {
  let t = '';
  s.on('data', (b: Buffer) => (t += b.toString())).on('end', () => resolve(t));
});

describe('attach to the main process (conmon -t / -i, runc)', { skip: runcReason }, () => {
  let base: string;
  let rootfs: string;
  let d: ContainerDriver;
  const ids: string[] = [];
  const cgroupParent = `/nimbus-test-${process.pid}-attach`;

  before(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'nimbus-attach-'));
    rootfs = path.join(base, 'rootfs');
    await makeTerminalRootfs(rootfs);
    d = new ContainerDriver({ stateDir: path.join(base, 'state'), runtime: 'runc', cgroupParent });
  });

  after(async () => {
    for (const id of ids) await d?.delete(id).catch((e: unknown) => console.error('teardown delete', e));
    d?.close();
    await removeCgroupParentIfEmpty(await detectCgroupLayout(), cgroupParent);
    if (base && (await mountsUnder(base)).length === 0) await rm(base, { recursive: true, force: true });
  });

  async function created(args: string[], io: Pick<ProcessSpec, 'terminal' | 'stdin'>): Promise<string> {
    const id = freshId('att');
    ids.push(id);
    const spec = bindRootfsSpec(rootfs, id, args);
    await d.create({ ...spec, process: { ...spec.process, ...io } });
    return id;
  }

  /** A shell on a terminal, attached before its start: sized, typed to, resized, exited; what it showed. */
  async function conversation(attach: Agent['attachContainer'], resize: Agent['resizeContainer'], id: string): Promise<{ sizes: string[]; tty: boolean; code: number }> {
    const s: AttachSession = await attach(id, { stdin: true });
    const term = new TerminalReader(s.stdout);
    await resize(id, 20, 70);
    await d.start(id);
    s.stdin!.write(`${waitForSize(20, 70)}; tty\r`);
    const [, first, dev] = (await term.waitFor(/(\d+ \d+)\r+\n(\/dev\/pts\/\d+)\r+\n/))!;
    const mark = term.text.length;
    await resize(id, 33, 111);
    s.stdin!.write(`${waitForSize(33, 111)}; exit 3\r`);
    const [, second] = (await term.waitFor(/(\d+ \d+)\r+\n/, 10_000, mark))!;
    await s.exit; // the stream ends with the process
    const st = await waitStopped(id);
    return { sizes: [first!, second!], tty: dev !== undefined, code: st };
  }

  async function waitStopped(id: string): Promise<number> {
    for (let i = 0; i < 200; i++) {
      const st = await d.state(id);
      if (st.status === 'stopped') return st.exitCode ?? -1;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`${id} did not stop`);
  }

  test('a shell on a terminal: attached before the start, input, two resizes, exit 3; a driver made afresh (nimbusd restarted) attaches too', async () => {
    const id = await created(['sh'], { terminal: true, stdin: 'once' });
    // the process keeps running under its conmon whatever happens to the driver that made it: a new one finds it
    const again = new ContainerDriver({ stateDir: path.join(base, 'state'), runtime: 'runc', cgroupParent });
    try {
      assert.deepEqual(await conversation((cid, req) => again.attach(cid, req), (cid, r, c) => again.resize(cid, r, c), id), { sizes: ['20 70', '33 111'], tty: true, code: 3 });
    } finally {
      again.close();
    }
    await assert.rejects(d.attach(id, { stdin: false }), (e: unknown) => e instanceof NimbusError && e.code === 'Conflict', 'an exited container has no process to attach to');
  });

  test('stdin without a terminal: its end is the process\'s end-of-file; stdout and stderr apart; refusals', async () => {
    const id = await created(['sh', '-c', 'cat; echo eof; echo err >&2'], { stdin: 'once' });
    const s = await d.attach(id, { stdin: true });
    const [out, err] = [text(s.stdout), text(s.stderr)];
    await d.start(id);
    s.stdin!.end('piped data\n');
    assert.equal(await out, 'piped data\neof\n');
    assert.equal(await err, 'err\n');
    assert.equal(await waitStopped(id), 0);

    const plain = await created(['sleep', '600'], {});
    await assert.rejects(d.attach(plain, { stdin: true }), /created without an open stdin/);
    await assert.rejects(d.resize(plain, 10, 10), /has no terminal/);
    await assert.rejects(d.resize(plain, 0, 10), /rows and cols are integers/);
  });

  test('agent protocol 8: a remote agent attaches and resizes as the local one does; a protocol-7 connection refuses both and a -t create', async () => {
    const agent = {
      attachContainer: (cid: string, req: Parameters<Agent['attachContainer']>[1]) => d.attach(cid, req),
      resizeContainer: (cid: string, rows: number, cols: number) => d.resize(cid, rows, cols),
      createContainer: () => Promise.reject(new Error('not called')),
      onVmExit() {},
      onContainerExit() {},
    } as unknown as Agent;
    const token = 'attach-test-token-0123456789';
    const socketPath = path.join(base, 'agent.sock');
    const server = await startAgentServer(agent, { token, socketPath });
    const remote = new RemoteAgent({ name: 'att-host', url: server.url, token });
    const old = new RemoteAgent({ name: 'att-host', url: server.url, token, protocol: { min: 2, max: 7 } });
    try {
      const id = await created(['sh'], { terminal: true, stdin: 'once' });
      assert.deepEqual(await conversation((cid, req) => remote.attachContainer(cid, req), (cid, r, c) => remote.resizeContainer(cid, r, c), id), { sizes: ['20 70', '33 111'], tty: true, code: 3 });
      const byVersion = (e: unknown) => e instanceof NimbusError && e.code === 'Conflict' && /speaks protocol 7/.test(e.message);
      await assert.rejects(old.attachContainer(id, { stdin: true }), byVersion);
      await assert.rejects(old.resizeContainer(id, 10, 10), byVersion);
      const req = { id: 'x', name: 'x', imageChainId: 'sha256:x', resources: {}, process: { args: ['sh'], env: [], cwd: '/', user: '0', terminal: true } } satisfies ContainerCreateRequest;
      await assert.rejects(old.createContainer(req), (e: unknown) => byVersion(e) && /terminal or stdin/.test((e as Error).message));
    } finally {
      await remote.close();
      await old.close();
      await server.close();
    }
  });
});
