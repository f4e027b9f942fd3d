// Every VM's jailer (jailer.ts), run around a shell instead of QEMU: its taps come as descriptors
// opened in the host's network, and it then has a network of its own, where nothing of the host's
// is reachable. The share jail's own checks are share-jail.test.ts's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readlink } from 'node:fs/promises';
import net from 'node:net';
import { run, runOk } from '../../../core/exec.js';
import { jailedCommand } from './jailer.js';
import { TAP_FD_BASE } from './qemu.js';

const CONNECT = 'import socket, sys\ntry:\n    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)\n    print("connected")\nexcept OSError as e:\n    print("refused", e.strerror)';

test("a VM's jailer opens its taps in the host's network and gives them as descriptors; its program then has a network (a loopback, down) and IPC of its own, and no_new_privs: a service on the host's loopback is out of reach", async () => {
  const taps = [`ntj${process.pid % 10000}a`, `ntj${process.pid % 10000}b`];
  const host = net.createServer((s) => s.end('host service'));
  await new Promise<void>((r) => host.listen(0, '127.0.0.1', r));
  const port = (host.address() as net.AddressInfo).port;
  try {
    for (const t of taps) await runOk('ip', ['tuntap', 'add', 'dev', t, 'mode', 'tap']);
    const script = [
      `for fd in ${TAP_FD_BASE} ${TAP_FD_BASE + 1}; do echo "$(readlink /proc/self/fd/$fd) $(grep -o 'iff:.*' /proc/self/fdinfo/$fd | tr -d '\\t')"; done`,
      'ip -o link | cut -d: -f2 | tr -d " "',
      `python3 -I -S -c '${CONNECT}' ${port}`,
      'sleep 1',
    ].join('\n');
    const { binary, argv } = jailedCommand('/bin/sh', ['-c', script], { taps });
    const child = spawn(binary, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    for (let i = 0; i < 150 && !/refused|connected/.test(out); i++) await new Promise((r) => setTimeout(r, 20));
    const status = await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => '');
    const ns: Record<string, string> = {};
    for (const n of ['net', 'ipc', 'mnt']) ns[n] = await readlink(`/proc/${child.pid}/ns/${n}`).catch(() => '');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, err);
    const lines = out.trim().split('\n');
    assert.deepEqual(lines.slice(0, 2), [`/dev/net/tun iff:${taps[0]}`, `/dev/net/tun iff:${taps[1]}`], 'each tap on its descriptor, in order');
    assert.deepEqual(lines.slice(2, 3), ['lo'], 'no link but a loopback');
    assert.match(lines[3] ?? '', /^refused /, 'the host\'s loopback is not its loopback');
    assert.notEqual(ns.net, await readlink('/proc/self/ns/net'), 'its own network namespace');
    assert.notEqual(ns.ipc, await readlink('/proc/self/ns/ipc'), 'its own IPC');
    assert.equal(ns.mnt, await readlink('/proc/self/ns/mnt'), 'the host\'s mounts: no share jail, QEMU chroots itself');
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    for (const t of taps) assert.equal((await run('ip', ['link', 'show', 'dev', t])).code, 0, `${t} stays the host's, in the host's network`);
  } finally {
    for (const t of taps) await run('ip', ['link', 'del', 'dev', t]);
    host.close();
  }
});

test('a tap that is not there fails the launch with its name', async () => {
  const { binary, argv } = jailedCommand('/bin/true', [], { taps: ['ntj-missing0'] });
  const child = spawn(binary, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  assert.notEqual(code, 0);
  assert.match(err, /tap ntj-missing0/);
  assert.equal((await run('ip', ['link', 'show', 'dev', 'ntj-missing0'])).code !== 0, true, 'and none is made');
});
