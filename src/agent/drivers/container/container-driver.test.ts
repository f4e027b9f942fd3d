import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, rmdir, symlink, writeFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../../../core/exec.js';
import { NimbusError } from '../../../core/errors.js';
import { cgroupPaths, detectCgroupLayout, hybridCgroup2Controllers, removeCgroupParentIfEmpty } from '../../cgroups/cgroups.js';
import { mountsUnder } from '../../snapshots/mount.js';
import type { InstanceSpec } from '../instance-driver.js';
import {
  bindRootfsSpec,
  collectLogs,
  freshId,
  instanceDriverConformance,
  readAll,
  waitForLog,
  waitStopped,
  sleep,
} from '../instance-driver-conformance.js';
import { ContainerDriver, containerDriverImplementation } from './container-driver.js';
import { findBinary, probeRuntime, type RuntimeName } from './oci-runtime.js';
import { DEFAULT_PIDS_LIMIT } from './oci-spec.js';

const APPLETS = ['sh', 'true', 'false', 'sleep', 'echo', 'cat', 'id', 'head', 'tr', 'ls', 'ps', 'kill', 'dd', 'seq', 'yes', 'unshare'];

/** A rootfs directory with a static busybox, applet symlinks and a tiny user database. */
export async function makeBusyboxRootfs(dir: string): Promise<void> {
  await mkdir(path.join(dir, 'bin'), { recursive: true });
  await mkdir(path.join(dir, 'etc'), { recursive: true });
  await mkdir(path.join(dir, 'tmp'), { recursive: true });
  await copyFile('/bin/busybox', path.join(dir, 'bin/busybox'));
  for (const a of APPLETS) await symlink('busybox', path.join(dir, 'bin', a));
  await writeFile(
    path.join(dir, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  );
  await writeFile(path.join(dir, 'etc/group'), 'root:x:0:\napp:x:1000:\nwheel:x:10:app\nnogroup:x:65534:\n');
}

async function conmonPidsFor(stateDir: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const argv = (await readFile(`/proc/${p}/cmdline`, 'utf8')).split('\0');
      if ((argv[0] ?? '').endsWith('conmon') && argv.some((a) => a.startsWith(stateDir))) {
        const st = await readFile(`/proc/${p}/stat`, 'utf8');
        if (st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) !== 'Z') out.push(Number(p));
      }
    } catch {
      /* gone */
    }
  }
  return out;
}

interface Env {
  base: string;
  stateDir: string;
  rootfsDir: string;
  cgroupParent: string;
  driver: ContainerDriver;
  make(id: string, args: string[], over?: Partial<InstanceSpec>): Promise<InstanceSpec>;
  newDriver(): ContainerDriver;
  teardown(): Promise<void>;
}

async function makeEnv(label: string, runtime: RuntimeName = 'runc'): Promise<Env> {
  const base = await mkdtemp(path.join(tmpdir(), `nimbus-ctr-${label}-`));
  const stateDir = path.join(base, 'state');
  const rootfsDir = path.join(base, 'rootfs');
  await makeBusyboxRootfs(rootfsDir);
  const cgroupParent = `/nimbus-test-${process.pid}-${label}`;
  const drivers: ContainerDriver[] = [];
  const newDriver = () => {
    const d = new ContainerDriver({ stateDir, runtime, cgroupParent });
    drivers.push(d);
    return d;
  };
  const driver = newDriver();
  return {
    base,
    stateDir,
    rootfsDir,
    cgroupParent,
    driver,
    newDriver,
    async make(id, args, over = {}) {
      return bindRootfsSpec(rootfsDir, id, args, over);
    },
    async teardown() {
      const d = newDriver();
      for (const id of await d.list()) await d.delete(id).catch((e: unknown) => console.error('teardown delete', id, e));
      for (const x of drivers) x.close();
      // leftover runtime state (should be none)
      await run(runtime, ['--root', path.join(stateDir, 'runtime', runtime), 'list', '-q']).then(async (r) => {
        for (const id of r.stdout.split('\n').filter(Boolean)) {
          await run(runtime, ['--root', path.join(stateDir, 'runtime', runtime), 'delete', '-f', id]);
        }
      });
      const layout = await detectCgroupLayout();
      await removeCgroupParentIfEmpty(layout, cgroupParent);
      const mounts = await mountsUnder(base);
      const conmons = await conmonPidsFor(stateDir);
      for (const p of conmons) process.kill(p, 'SIGKILL');
      const leftCgroups: string[] = [];
      for (const d2 of cgroupPaths(layout, cgroupParent).all) {
        try {
          await access(d2);
          leftCgroups.push(d2);
        } catch {
          continue; // good
        }
        // a failed test's leftovers do not outlive it: processes still in a container's cgroup ended, the cgroups removed
        for (const child of await readdir(d2, { withFileTypes: true }).catch(() => [])) {
          if (!child.isDirectory()) continue;
          const procs = await readFile(path.join(d2, child.name, 'cgroup.procs'), 'utf8').catch(() => '');
          for (const pid of procs.split('\n').filter(Boolean)) {
            try {
              process.kill(Number(pid), 'SIGKILL');
            } catch {
              /* gone */
            }
          }
          for (let i = 0; i < 50 && (await rmdir(path.join(d2, child.name)).then(() => false, () => true)); i++) await new Promise((r) => setTimeout(r, 20));
        }
        await rmdir(d2).catch(() => undefined);
      }
      if (mounts.length === 0) await rm(base, { recursive: true, force: true });
      assert.deepEqual(mounts, [], 'no mounts left under the temp dir');
      assert.deepEqual(conmons, [], 'no conmon left running');
      assert.deepEqual(leftCgroups, [], 'no nimbus cgroup dirs left');
    },
  };
}

const runcReason = await probeRuntime('runc');

if (runcReason) {
  test('container driver (runc unusable here)', (t) => t.skip(runcReason));
} else {
  instanceDriverConformance('container/runc', async () => {
    const env = await makeEnv('conf');
    return {
      driver: env.driver,
      makeSpec: env.make,
      reopen: async () => env.newDriver(),
      teardown: env.teardown,
    };
  });

  // crun where it runs here (a hybrid host whose cgroup2 offers no controller: scripts/cgroup-hybrid)
  const crunReason = await probeRuntime('crun');
  if (crunReason) test('InstanceDriver conformance: container/crun', (t) => t.skip(crunReason));
  else {
    instanceDriverConformance('container/crun', async () => {
      const env = await makeEnv('conf-crun', 'crun');
      return { driver: env.driver, makeSpec: env.make, reopen: async () => env.newDriver(), teardown: env.teardown };
    });
  }

  describe('container driver specifics (runc)', () => {
    let env: Env;
    let d: ContainerDriver;
    before(async () => {
      env = await makeEnv('spec');
      d = env.driver;
    });
    after(async () => {
      await env?.teardown();
    });

    test('probes: runc usable; crun reported with the real reason when unusable; registry probe', async () => {
      assert.equal(await probeRuntime('runc'), undefined);
      const crun = await probeRuntime('crun');
      if (hybridCgroup2Controllers(await detectCgroupLayout()).length > 0) {
        assert.ok(crun, 'crun must be unusable on a hybrid host whose cgroup2 offers a controller');
        assert.match(crun, /hybrid/);
      } else if (await findBinary('crun')) assert.equal(crun, undefined, 'crun runs where cgroup2 offers none');
      assert.equal(await containerDriverImplementation.probe({ stateDir: env.stateDir }), undefined);
    });

    test('memory limit: a process allocating past it is OOM-killed (137, oomKilled)', async () => {
      const id = freshId('oom');
      await d.create(
        await env.make(id, ['sh', '-c', 'x=$(head -c 64000000 /dev/zero | tr "\\000" a); echo ${#x}'], {
          resources: { memoryBytes: 16 << 20 },
        }),
      );
      try {
        await d.start(id);
        const st = await waitStopped(d, id, 30_000);
        assert.equal(st.exitCode, 137);
        assert.equal(st.oomKilled, true);
        // recorded: a new driver (after the exit was observed) agrees
        assert.equal((await env.newDriver().state(id)).oomKilled, true);
      } finally {
        await d.delete(id);
      }
    });

    test('seccomp: a container runs under the filter and cannot make a user namespace; a driver told "unconfined" runs it without', async () => {
      const script = 'while read l; do case "$l" in Seccomp:*) echo "$l";; esac; done < /proc/self/status; unshare -U true 2>/dev/null && echo userns-made || echo userns-refused';
      const unconfined = new ContainerDriver({ stateDir: env.stateDir, runtime: 'runc', cgroupParent: env.cgroupParent, seccompProfile: 'unconfined' });
      try {
        for (const [driver, seccomp, userns] of [[d, '2', 'userns-refused'], [unconfined, '0', 'userns-made']] as const) {
          const id = freshId('seccomp');
          await driver.create(await env.make(id, ['sh', '-c', script]));
          try {
            await driver.start(id);
            const lines = (await waitForLog(driver, id, /userns-/)).map((r) => r.line);
            assert.ok(lines.some((l) => new RegExp(`^Seccomp:\\s+${seccomp}$`).test(l)), `Seccomp ${seccomp}: ${lines.join(' | ')}`);
            assert.ok(lines.includes(userns), lines.join(' | '));
          } finally {
            await driver.delete(id);
          }
        }
      } finally {
        unconfined.close();
      }
    });

    test('a normal SIGKILL is not reported as OOM', async () => {
      const id = freshId('nooom');
      await d.create(await env.make(id, ['sleep', '60'], { resources: { memoryBytes: 64 << 20 } }));
      try {
        await d.start(id);
        await d.kill(id, 'SIGKILL');
        const st = await waitStopped(d, id);
        assert.equal(st.exitCode, 137);
        assert.equal(st.oomKilled, false);
      } finally {
        await d.delete(id);
      }
    });

    test('a removal leaves nothing of the runtime: its state and its cgroups, for an exited container and a running one', async () => {
      const root = path.join(env.stateDir, 'runtime', 'runc');
      const layout = await detectCgroupLayout();
      const exited = freshId('gone');
      const running = freshId('live');
      await d.create(await env.make(exited, ['true']));
      await d.start(exited);
      await waitStopped(d, exited);
      await d.create(await env.make(running, ['sleep', '60']));
      await d.start(running);
      for (const id of [exited, running]) {
        const { cgroupsPath } = JSON.parse(await readFile(path.join(env.stateDir, 'containers', id, 'meta.json'), 'utf8')) as { cgroupsPath: string };
        const dirs = cgroupPaths(layout, cgroupsPath).all;
        assert.ok(dirs.length > 0 && (await access(dirs[0]!).then(() => true, () => false)), `${id}: its cgroup exists before`);
        assert.ok(await access(path.join(root, id, 'state.json')).then(() => true, () => false), `${id}: runc's state exists before`);
        await d.delete(id);
        assert.equal(await access(path.join(root, id)).then(() => true, () => false), false, `${id}: runc's state directory is gone`);
        for (const dir of dirs) assert.equal(await access(dir).then(() => true, () => false), false, `${id}: ${dir} is gone`);
      }
      const listed = (await run('runc', ['--root', root, 'list', '-q'])).stdout.split('\n');
      assert.ok(!listed.includes(exited) && !listed.includes(running), 'runc lists neither');
    });

    test('a created container whose meta never got its pid (a daemon killed during the create) is removed whole: its waiting init ended', async () => {
      const own = await makeEnv('nopid'); // a driver of its own: the first one stops as a killed daemon would
      try {
        const root = path.join(own.stateDir, 'runtime', 'runc');
        const layout = await detectCgroupLayout();
        const id = freshId('nopid');
        await own.driver.create(await own.make(id, ['true']));
        own.driver.close();
        const metaFile = path.join(own.stateDir, 'containers', id, 'meta.json');
        const meta = JSON.parse(await readFile(metaFile, 'utf8')) as { pid?: number; cgroupsPath: string };
        const init = JSON.parse(await readFile(path.join(root, id, 'state.json'), 'utf8')) as { init_process_pid: number };
        const alive = (pid: number) => access(`/proc/${pid}`).then(() => true, () => false);
        assert.ok(init.init_process_pid > 0 && (await alive(init.init_process_pid)), 'its init waits to be started');
        delete meta.pid;
        await writeFile(metaFile, JSON.stringify(meta));
        await own.newDriver().delete(id); // a daemon started again: the meta read from the file
        assert.equal(await alive(init.init_process_pid), false, 'its init is gone');
        assert.equal(await access(path.join(root, id)).then(() => true, () => false), false, "runc's state directory is gone");
        for (const dir of cgroupPaths(layout, meta.cgroupsPath).all) assert.equal(await access(dir).then(() => true, () => false), false, `${dir} is gone`);
      } finally {
        await own.teardown();
      }
    });

    test('pids limit is honoured; cpu quota is written to the cgroup', async () => {
      const id = freshId('pids');
      await d.create(
        // The limit leaves room for runc init's own threads (they count against pids.max until it
        // execs; a limit of 5 failed its init once on a loaded host): 20 children still cross it.
        await env.make(id, ['sh', '-c', '(for i in $(seq 20); do sleep 30 & done); echo spawned; exec sleep 60'], {
          resources: { pidsLimit: 12, cpus: 0.5 },
        }),
      );
      try {
        await d.start(id);
        const recs = await waitForLog(d, id, /spawned/);
        assert.ok(recs.some((r) => r.stream === 'stderr' && /fork|resource|try again/i.test(r.line)), 'fork refused');
        const st = await d.stats(id);
        assert.equal(st.pidsLimit, 12);
        assert.ok(st.pids <= 12, `pids ${st.pids}`);
        const p = await d.cgroupPathsOf(id);
        if (p.v1['cpu']) {
          assert.equal((await readFile(path.join(p.v1['cpu'], 'cpu.cfs_quota_us'), 'utf8')).trim(), '50000');
          assert.equal((await readFile(path.join(p.v1['cpu'], 'cpu.cfs_period_us'), 'utf8')).trim(), '100000');
        } else {
          assert.equal((await readFile(path.join(p.unified!, 'cpu.max'), 'utf8')).trim(), '50000 100000');
        }
      } finally {
        await d.delete(id);
      }
      // delete removed the cgroup
      const layout = await detectCgroupLayout();
      for (const dir of cgroupPaths(layout, `${env.cgroupParent}/${id}`).all) await assert.rejects(access(dir));
      // a container that names no limit gets the default one (a fork bomb stops at its own cgroup)
      const open = freshId('pids');
      await d.create(await env.make(open, ['sleep', '60']));
      try {
        await d.start(open);
        assert.equal((await d.stats(open)).pidsLimit, DEFAULT_PIDS_LIMIT);
      } finally {
        await d.delete(open);
      }
    });

    test('users: nobody and 1000:1000 resolved; exec as another user', async () => {
      const id = freshId('user');
      await d.create(await env.make(id, ['sh', '-c', 'id; sleep 60'], { process: { args: ['sh', '-c', 'id; sleep 60'], env: [], cwd: '/', user: 'nobody' } }));
      try {
        await d.start(id);
        await waitForLog(d, id, /uid=65534.*gid=65534/);
        const x = await d.exec(id, { args: ['id'], user: '1000:1000' });
        assert.match(await readAll(x.stdout), /uid=1000.*gid=1000/);
        assert.equal(await x.exit, 0);
        const y = await d.exec(id, { args: ['id', '-u'], user: 'app' });
        assert.equal((await readAll(y.stdout)).trim(), '1000');
      } finally {
        await d.delete(id);
      }
      const id2 = freshId('user');
      await d.create(await env.make(id2, ['id'], { process: { args: ['id'], env: [], cwd: '/', user: '1000:1000' } }));
      try {
        await d.start(id2);
        await waitStopped(d, id2);
        assert.ok((await collectLogs(d, id2)).some((r) => /uid=1000.*gid=1000/.test(r.line)));
      } finally {
        await d.delete(id2);
      }
      await assert.rejects(
        env.make('ghost', ['id'], { process: { args: ['id'], env: [], cwd: '/', user: 'ghost' } }).then((s) => d.create(s)),
        /ghost/,
      );
      assert.ok(!(await d.list()).includes('ghost'), 'failed create leaves nothing');
    });

    test('restart survival: new driver sees running containers, logs, and exits that happened while down', async () => {
      const a = freshId('surv');
      const b = freshId('surv');
      await d.create(await env.make(a, ['sh', '-c', 'echo alive; sleep 60']));
      await d.create(await env.make(b, ['sh', '-c', 'echo bye; sleep 1; exit 9']));
      try {
        await d.start(a);
        await d.start(b);
        // "daemon down": nobody calls state() on b while it exits
        d.close();
        await sleep(2500);
        const d2 = env.newDriver();
        assert.deepEqual((await d2.list()).filter((x) => x === a || x === b).sort(), [a, b].sort());
        assert.equal((await d2.state(a)).status, 'running');
        assert.ok((await collectLogs(d2, a)).some((r) => r.line === 'alive'));
        const sb = await d2.state(b);
        assert.equal(sb.status, 'stopped');
        assert.equal(sb.exitCode, 9);
        assert.ok((await collectLogs(d2, b)).some((r) => r.line === 'bye'));
        await d2.delete(a);
        await d2.delete(b);
      } finally {
        await d.delete(a);
        await d.delete(b);
      }
    });

    test('a warm container runs its stub from the start but is created until start, across a restart; exec is refused until then', async () => {
      const id = freshId('warm');
      await d.createWarm(await env.make(id, ['true']));
      try {
        assert.equal((await d.state(id)).status, 'created', 'the stub runs, the container is created');
        const claimed = await d.claimWarm(await env.make(id, ['sh', '-c', 'echo "started as $0 in $PWD"; sleep 60'], { process: { args: ['sh', '-c', 'echo "started as $0 in $PWD"; sleep 60'], env: ['PATH=/bin'], cwd: '/tmp', user: '0:0' } }));
        assert.equal(claimed?.status, 'created');
        const d2 = env.newDriver(); // a daemon started again before the container's start
        assert.equal((await d2.state(id)).status, 'created');
        await assert.rejects(d2.exec(id, { args: ['true'] }), /created, not running/);
        const st = await d2.start(id);
        assert.equal(st.status, 'running');
        await waitForLog(d2, id, /started as sh in \/tmp/);
        assert.equal((await d2.state(id)).status, 'running');
        assert.equal((await env.newDriver().state(id)).status, 'running', 'the start is on disk: the fifo is gone');
        await assert.rejects(d2.start(id), /not waiting to start|cannot start|already/i, 'a second start is refused');
      } finally {
        await d.delete(id);
      }
    });

    test('a program the rootfs lacks is refused before the runtime runs it, cold and warm alike, symlinks resolved inside the rootfs', async () => {
      // /bin/bash exists on this host, not in the rootfs: followed on the host, it would be "found"
      await symlink('/bin/bash', path.join(env.rootfsDir, 'bin/hostbash'));
      // '..' stops at the rootfs' root: this is the rootfs' own /bin/busybox
      await mkdir(path.join(env.rootfsDir, 'usr/bin'), { recursive: true });
      await symlink('../../../../../../bin/busybox', path.join(env.rootfsDir, 'usr/bin/echo'));
      await writeFile(path.join(env.rootfsDir, 'bin/notexec'), '#!/bin/sh\n', { mode: 0o644 });
      const refusal = async (args: string[], over: Partial<InstanceSpec> = {}) => {
        const id = freshId('noexec');
        const err = await d.create(await env.make(id, args, over)).then(() => assert.fail(`${args[0]} was accepted`), (e: unknown) => e as Error & { code?: string });
        assert.ok(!(await d.list()).includes(id), 'a refused create leaves nothing');
        return err;
      };
      for (const [args, why] of [
        [['/nonexistent'], /cannot run "\/nonexistent": no such file in the image/],
        [['nosuchprog', 'x'], /cannot run "nosuchprog": executable file not found in \$PATH/],
        [['/bin/hostbash', '-c', 'true'], /cannot run "\/bin\/hostbash": no such file in the image/],
        [['/etc'], /it is a directory/],
        [['/bin/notexec'], /not executable/],
      ] as const) {
        const err = await refusal([...args]);
        assert.equal(err.code, 'InvalidArgument', err.message);
        assert.match(err.message, why);
      }
      const ranges = await refusal(['true'], { process: { args: ['true'], env: [], cwd: '/', user: '4294967295:4294967295' } });
      assert.equal(ranges.code, 'InvalidArgument', ranges.message);
      // the runtime refusing the request's own setting (a host name longer than a UTS name) is 400 with its message
      const long = await refusal(['true'], { hostname: 'h'.repeat(80) });
      assert.equal(long.code, 'InvalidArgument', long.message);
      assert.match(long.message, /sethostname/);
      // in the rootfs, through a relative symlink that climbs past its root: found, and it runs
      const ok = freshId('upexec');
      await d.create(await env.make(ok, ['/usr/bin/echo', 'ran']));
      try {
        await d.start(ok);
        assert.equal((await waitStopped(d, ok)).exitCode, 0);
        assert.ok((await collectLogs(d, ok)).some((r) => r.line === 'ran'));
      } finally {
        await d.delete(ok);
      }
      // warm: the same refusal at the claim, not an exit 127 after the start
      const warm = freshId('warmnoexec');
      await d.createWarm(await env.make(warm, ['true']));
      try {
        const err = await d.claimWarm(await env.make(warm, ['/nonexistent'])).then(() => assert.fail('claimed'), (e: unknown) => e as Error & { code?: string });
        const cold = await refusal(['/nonexistent']);
        assert.equal(err.code, 'InvalidArgument');
        assert.equal(err.message, cold.message, 'the same answer on both paths');
      } finally {
        await d.delete(warm);
      }
    });

    test('host paths stay out of an error\'s message (a member reads it), and in its adminMessage: a create the runtime fails, a removal refused while mounted', async () => {
      const names = (e: NimbusError, what: string) => {
        for (const hostName of [env.base, '/usr/', '/sbin/', '/bin/runc']) assert.ok(!e.message.includes(hostName), `${what}: the message names ${hostName}: ${e.message}`);
        assert.ok(!JSON.stringify(e.details ?? {}).includes(env.base), `${what}: the details name a host path: ${JSON.stringify(e.details)}`);
        assert.ok(e.adminMessage?.includes(env.base), `${what}: the adminMessage keeps the path: ${String(e.adminMessage)}`);
      };
      // the runtime fails the create: a bind mount whose source is missing on the host
      const missing = path.join(env.stateDir, 'no-such-volume');
      const failed = freshId('hostpath');
      const err = await d.create(await env.make(failed, ['true']), { mounts: [{ destination: '/data', type: 'bind', source: missing, options: ['rbind'] }] })
        .then(() => assert.fail('created'), (e: unknown) => e as NimbusError);
      assert.ok(err instanceof NimbusError, String(err));
      assert.match(err.adminMessage ?? '', /\/runc create/, 'the administrator reads the runtime\'s path');
      assert.match(err.message, /^runc create /, err.message);
      names(err, 'the failed create');
      assert.ok(!(await d.list()).includes(failed), 'a failed create leaves nothing');
      // a removal refused: something is still mounted in the container's directory
      const id = freshId('stillmounted');
      await d.create(await env.make(id, ['true']));
      const extra = path.join(env.stateDir, 'containers', id, 'extra');
      await mkdir(extra);
      await run('mount', ['-t', 'tmpfs', 'tmpfs', extra]);
      try {
        const refused = await d.delete(id).then(() => assert.fail('removed'), (e: unknown) => e as NimbusError);
        assert.match(refused.message, new RegExp(`refusing to remove container ${id}: still mounted`), refused.message);
        names(refused, 'the refused removal');
      } finally {
        await run('umount', [extra]);
        await d.delete(id);
      }
    });

    test('rlimits are clamped to the hard limits this process holds, with warnings', async () => {
      // Lower this process' own NPROC hard limit below the 4096 we ask for (root is exempt
      // from RLIMIT_NPROC, so this is harmless for the rest of the run).
      const lim = (await readFile('/proc/self/limits', 'utf8')).match(/Max processes\s+\S+\s+(\S+)/)?.[1];
      if (lim === 'unlimited' || Number(lim) > 4000) {
        const r = await run('prlimit', [`--pid=${process.pid}`, '--nproc=4000:4000']);
        assert.equal(r.code, 0, r.stderr);
        await new Promise((res) => setTimeout(res, 1100)); // the limits are read at most once a second (oci-spec.ts readHardLimits)
      }
      const id = freshId('rlim');
      await d.create(await env.make(id, ['sh', '-c', 'ulimit -u; ulimit -n']));
      try {
        const w = await d.warnings(id);
        assert.ok(w.some((x) => /RLIMIT_NPROC 4096:4096 clamped to/.test(x)), JSON.stringify(w));
        await d.start(id);
        const st = await waitStopped(d, id);
        assert.equal(st.exitCode, 0);
        const lines = (await collectLogs(d, id)).map((r) => r.line);
        assert.ok(Number(lines[0]) <= 4000, JSON.stringify(lines));
        assert.equal(lines[1], '1024');
      } finally {
        await d.delete(id);
      }
    });
  });
}
