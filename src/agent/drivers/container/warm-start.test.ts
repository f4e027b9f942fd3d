import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, constants as fsConstants, openSync, unlinkSync, writeSync } from 'node:fs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildOciSpec, type HostFacts } from './oci-spec.js';
import { WARM_BUSYBOX, WARM_GO_FIFO, WARM_SCRIPT_DIR, WARM_STUB_ARGS, limitsOf, stubUnsuitable, warmCompatible, warmMounts, warmScript } from './warm-start.js';
import type { InstanceSpec } from '../instance-driver.js';

const host: HostFacts = {
  hardLimits: { RLIMIT_NOFILE: 1048576 },
  cgroupsPath: '/nimbus/x',
  userDb: { passwd: [{ name: 'app', uid: 1000, gid: 1000, home: '/home/app' }], group: [] },
};
const mounts = warmMounts('/bin/busybox', '/state/c/warm');
const base: InstanceSpec = { id: 'a'.repeat(64), name: 'n', rootfs: [], resources: {}, process: { args: ['true'], env: [], cwd: '/', user: '0' } };
const warm = buildOciSpec({ ...base, process: { ...base.process, args: WARM_STUB_ARGS } }, host, { mounts }).config;
const wanted = (over: Partial<InstanceSpec> = {}, proc: Partial<InstanceSpec['process']> = {}) =>
  buildOciSpec({ ...base, ...over, process: { ...base.process, ...proc } }, host, { mounts }).config;

test('a request differing only in command, env, cwd, cpu and pids limits and labels fits the warm container', () => {
  const c = wanted({ resources: { cpus: 0.5, pidsLimit: 10 }, labels: { a: 'b' } }, { args: ['sh', '-c', 'x'], env: ['A=1'], cwd: '/srv' });
  assert.equal(warmCompatible(warm, c), true);
  assert.deepEqual(limitsOf(c), { cpu: { quota: 50000, period: 100000 }, pids: { limit: 10 } });
  assert.equal(limitsOf(wanted()), undefined, 'no limits, no runc update');
});

test('a warm container serves only its own memory size: made with it, as a claim cannot change it or its OOM score', () => {
  const sized = (memoryBytes: number) => buildOciSpec({ ...base, resources: { memoryBytes }, process: { ...base.process, args: WARM_STUB_ARGS } }, host, { mounts }).config;
  const c = wanted({ resources: { memoryBytes: 64 << 20, cpus: 0.5 } });
  assert.equal(warmCompatible(warm, c), false, 'a best-effort warm container for a sized request');
  assert.equal(warmCompatible(sized(64 << 20), wanted()), false, 'a sized warm container for a best-effort request');
  assert.equal(warmCompatible(sized(128 << 20), c), false, 'another size');
  assert.equal(warmCompatible(sized(64 << 20), c), true);
  assert.deepEqual(limitsOf(c), { cpu: { quota: 50000, period: 100000 } }, 'the memory is not updated at the claim');
});

test('anything else differing sends the request down the cold path', () => {
  assert.equal(warmCompatible(warm, wanted({}, { user: '1000' })), false, 'user');
  assert.equal(warmCompatible(warm, wanted({ hostname: 'web' })), false, 'hostname');
  assert.equal(warmCompatible(warm, wanted({ netnsPath: '/run/netns/x' })), false, 'network namespace');
  assert.equal(warmCompatible(warm, wanted({}, { terminal: true })), false, 'terminal');
  assert.equal(warmCompatible(warm, buildOciSpec(base, host).config), false, 'no stub mounts');
});

test('the seccomp filter is compared by its content: another object with the same rules fits, other rules do not', () => {
  const filter = (names: string[]) => ({ defaultAction: 'SCMP_ACT_ERRNO', architectures: ['SCMP_ARCH_X86_64'], syscalls: [{ names, action: 'SCMP_ACT_ALLOW' }] });
  const filtered = (names: string[]): HostFacts => ({ ...host, seccomp: () => filter(names) }); // a new object at every call
  const warmWith = (h: HostFacts) => buildOciSpec({ ...base, process: { ...base.process, args: WARM_STUB_ARGS } }, h, { mounts }).config;
  const wantedWith = (h: HostFacts) => buildOciSpec(base, h, { mounts }).config;
  const w = warmWith(filtered(['read', 'write']));
  assert.equal(warmCompatible(w, wantedWith(filtered(['read', 'write']))), true, 'the same rules in another object');
  assert.equal(warmCompatible(w, wantedWith(filtered(['read', 'write', 'ptrace']))), false, 'one more syscall allowed');
  assert.equal(warmCompatible(w, wantedWith(host)), false, 'no filter');
  assert.equal(warmCompatible(warmWith(host), wantedWith(filtered(['read']))), false, 'a filter where the warm one had none');
});

test('requests the stub cannot express are refused', () => {
  assert.equal(stubUnsuitable({ args: ['true'], env: ['A=1'], cwd: '/' }), undefined);
  assert.match(stubUnsuitable({ args: ['A=b'], env: [], cwd: '/' }) ?? '', /=/);
  assert.match(stubUnsuitable({ args: ['x\0y'], env: [], cwd: '/' }) ?? '', /NUL/);
  assert.match(stubUnsuitable({ args: ['true'], env: ['NOEQUALS'], cwd: '/' }) ?? '', /NAME=/);
  assert.match(stubUnsuitable({ args: [], env: [], cwd: '/' }) ?? '', /no command/);
});

/** Run a warm script as the stub does (busybox sh, an empty environment); the host's busybox stands in for /.nimbus/busybox. */
function runWarmScript(dir: string, p: { args: string[]; env: string[]; cwd: string }): { code: number; out: string; err: string } {
  writeFileSync(join(dir, 'entry'), warmScript(p).replaceAll(WARM_BUSYBOX, '/bin/busybox'));
  const r = spawnSync('/bin/busybox', ['sh', join(dir, 'entry')], { env: {}, encoding: 'utf8' });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** What the same process prints started cold, with exactly this environment (coreutils env resolves in PATH as runc does). */
function coldOutput(p: { args: string[]; env: string[]; cwd: string }): string {
  return execFileSync('/usr/bin/env', ['-i', ...p.env, ...p.args], { cwd: p.cwd, encoding: 'utf8' });
}

test('the script execs exactly the requested argv, env and cwd (run by the real busybox sh)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-warm-'));
  try {
    const args = ['sh', '-c', 'printf "%s|" "$0" "$@"; echo; pwd; env | sort', "it's", 'two words', '$HOME', '-n', '"q"'];
    const env = ['PATH=/usr/bin:/bin', 'Q=a \'quoted\' $value', 'EMPTY='];
    const work = join(dir, 'new dir');
    const r = runWarmScript(dir, { args, env, cwd: work });
    assert.equal(r.code, 0, r.err);
    const out = r.out.split('\n');
    assert.equal(out[0], `it's|two words|$HOME|-n|"q"|`);
    assert.equal(out[1], work, 'missing working directory created, then entered');
    // exactly the environment it gets cold: nothing of the stub's shell
    assert.equal(r.out, coldOutput({ args, env, cwd: work }));
    // an environment the shell cannot set goes through env -i: still exact
    const odd = ['PATH=/usr/bin:/bin', 'my.var=1', 'nimbus_prog=mine'];
    const r2 = runWarmScript(dir, { args: ['sh', '-c', 'env | sort'], env: odd, cwd: work });
    assert.equal(r2.out, coldOutput({ args: ['sh', '-c', 'env | sort'], env: odd, cwd: work }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a bare name is resolved in the container PATH as runc does, argv[0] kept; not found exits 127', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-warm-'));
  try {
    const [d1, d2] = [join(dir, 'one'), join(dir, 'two')];
    execFileSync('mkdir', ['-p', d1, d2]);
    writeFileSync(join(d1, 'hello'), 'not executable\n', { mode: 0o644 }); // skipped: not executable
    writeFileSync(join(d2, 'hello'), '#!/bin/sh\necho "hello from $0 with $1"\n', { mode: 0o755 });
    const hello = runWarmScript(dir, { args: ['hello', 'x y'], env: [`PATH=${d1}:${d2}`], cwd: '/' });
    assert.deepEqual([hello.code, hello.out], [0, `hello from ${d2}/hello with x y\n`]);
    // a match in an empty (relative) PATH entry is refused, as runc 1.1.5 refuses it (Go's exec.ErrDot)
    const here = runWarmScript(dir, { args: ['hello'], env: [`PATH=${d1}:`], cwd: d2 });
    assert.equal(here.code, 127);
    assert.match(here.err, /exec: "hello": cannot run executable found relative to current directory/);
    // argv[0] as given, not the resolved path (what runc passes too), and not the host busybox's own applet
    const script = 'tr "\\0" "|" < /proc/$$/cmdline; readlink /proc/$$/exe';
    const argv = runWarmScript(dir, { args: ['sh', '-c', script], env: ['PATH=/usr/bin:/bin'], cwd: '/' });
    assert.equal(argv.out, `sh|-c|${script}|${execFileSync('readlink', ['-f', '/usr/bin/sh'], { encoding: 'utf8' })}`);
    for (const env of [[`PATH=${d1}`], [], ['PATH=']]) {
      const missing = runWarmScript(dir, { args: ['hello'], env, cwd: '/' });
      assert.equal(missing.code, 127, JSON.stringify(env));
      assert.match(missing.err, /exec: "hello": executable file not found in \$PATH/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the stub waits on its go fifo: an opener that writes nothing is waited out, a line runs the script, a fifo gone ends it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-stub-'));
  const stub = (WARM_STUB_ARGS.at(-1) ?? '').replaceAll(WARM_SCRIPT_DIR, dir);
  const fifo = join(dir, WARM_GO_FIFO);
  const runStub = () => {
    const child = spawn('/bin/busybox', ['sh', '-c', stub], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, exited, out: () => out };
  };
  /** Open the writing end once the stub waits on the reading end (ENXIO until then). */
  const openWriter = async (): Promise<number> => {
    for (let i = 0; i < 500; i++) {
      try {
        return openSync(fifo, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw e;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    throw new Error('the stub never opened its go fifo');
  };
  const settled = async (p: Promise<unknown>, ms: number) => Promise.race([p.then(() => true), new Promise((r) => setTimeout(() => r(false), ms))]);
  try {
    execFileSync('mkfifo', [fifo]);
    writeFileSync(join(dir, 'entry'), 'echo "ran $0"\nexit 7\n');
    const s = runStub();
    closeSync(await openWriter()); // opened and closed without a line: end of file, not a go-ahead
    assert.equal(await settled(s.exited, 300), false, 'still waiting after an empty open');
    assert.equal(s.out(), '');
    const fd = await openWriter();
    writeSync(fd, '\n');
    closeSync(fd);
    assert.equal(await s.exited, 7, 'the script ran (its exit status)');
    assert.match(s.out(), /^ran /);

    const s2 = runStub();
    const fd2 = await openWriter(); // the stub has its end: take the name away, then close without a line
    unlinkSync(fifo);
    closeSync(fd2);
    assert.equal(await s2.exited, 125, 'no fifo to wait on any more: the stub ends');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
