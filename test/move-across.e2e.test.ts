/**
 * A container moves between hosts, cold (issue 15), end to end: a real nimbusd (control plane and
 * embedded agent "local") and a second agent (`nimbusd agent` in a network namespace of its own,
 * as in migrate-across.e2e.test.ts). A container on a user network spanning the hosts, with a
 * named volume, writes a file in its writable layer (and deletes one of the image's, and makes an
 * opaque directory) and one in its volume, then moves to host-b: it runs there with its files,
 * its address and MAC; another container on the first host reaches it by name and by address
 * across the overlay; the first host has nothing of it left (writable layer, volume, veth,
 * cgroup, FDB entry pointing at its old place); `nimbus logs` shows its output from both hosts in order. A move the destination refuses (its import is
 * over host-b's layer limit) leaves the container running on the source as before. The
 * refusals (host network, a bind mount, the same live, an unknown or disabled host) are plain errors
 * (live moves: move-live.e2e.test.ts).
 * `nimbus host evacuate` moves host-b's containers to the embedded host and names the one it cannot.
 * Healing: host-b's agent killed, its container with a restart policy is rebuilt on the embedded
 * host (same id and address), one without waits; host-b back, its stale copy is destroyed
 * (fenced) and the other runs on. Skipped where the kernel has no VXLAN.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { inNetns, vxlanMissing } from '../src/agent/network/network-test-env.js';
import { run } from '../src/core/exec.js';
import { startAgentInNamespace, removeAllInstances, secondHost, type NamespaceAgent, type SecondHost } from './helpers/second-host.js';
import { waitFor } from './helpers/wait.js';
import { buildTestImages, writeOciLayoutTar } from '../scripts/fixtures/images.js';
import { vxlanDeviceName } from '../src/agent/network/overlay.js';
import { readSnapshotMetadataSync } from '../src/agent/snapshots/metadata-journal.js';

const AGENT = 'host-b';
const skip = await vxlanMissing(`mva${process.pid}`);
/** host-b's containers' cgroups: apart from the embedded agent's (both hosts share this kernel's cgroup tree). */
const B_CGROUPS = `/nimbus-mvb-${process.pid}`;

let d: DaemonProcess | undefined;
let host2: SecondHost | undefined;
let b: NamespaceAgent | undefined;
let work: string;

async function cli(args: string[]) {
  return d!.cli(args);
}
const cliOk = (args: string[]): Promise<string> => d!.cliOk(args);
interface Endpoint { address: string; mac: string; gateway: string }
const inspect = async (name: string) => (JSON.parse(await cliOk(['inspect', name])) as Array<{ id: string; host: string; status: string; network: { endpoints: Endpoint[] } }>)[0]!;
const netnsOf = (id: string) => {
  const name = readdirSync('/run/netns').find((n) => n.endsWith(`-${id}`));
  assert.ok(name, `the network namespace of ${id.slice(0, 12)}`);
  return `/run/netns/${name}`;
};
const fdb = async (ns?: string) => (await run('bridge', [...(ns ? ['-n', ns] : []), 'fdb', 'show'])).stdout;
const links = async (ns?: string) => (await run('ip', [...(ns ? ['-n', ns] : []), '-o', 'link', 'show'])).stdout;
const exec = (name: string, script: string) => cliOk(['exec', name, 'sh', '-c', script]);
/** The container's cgroup directories in every hierarchy (this host has v1 and v2 ones). */
const cgroupsOf = async (id: string) => (await run('find', ['/sys/fs/cgroup', '-maxdepth', '6', '-type', 'd', '-name', id])).stdout.split('\n').filter(Boolean);
/** A process that ends on SIGTERM (a bare sleep as PID 1 ignores it, and a stop waits its whole timeout). */
const SERVE = ['sh', '-c', 'trap "exit 0" TERM; sleep 600 & wait'];
/** SERVE that says when it starts and stops, counting its runs in its writable layer: its log tells them apart. */
const LOGGED = ['sh', '-c', 'n=$(( $(cat /runs 2>/dev/null || echo 0) + 1 )); echo $n > /runs; echo "up $n"; trap "echo down $n; exit 0" TERM; sleep 600 & wait'];
/** The container's output as `nimbus logs` shows it, once it holds `last`. */
const logsUntil = (name: string, last: string) => waitFor(`${name}'s log to show "${last}"`, async () => {
  const out = await cliOk(['logs', name]);
  return out.includes(last) ? out.split('\n').filter(Boolean) : undefined;
}, 20_000);

describe('a container moves between hosts, cold', { skip, concurrency: false }, () => {
  let image: string;
  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'nimbus-move-across-'));
    host2 = await secondHost({ ns: 'mva', link: 'nmv' });
    // healing after 1.5 s of host-b down (the default 10 s would only slow the test)
    d = await startDaemonProcess([], { NIMBUS_HEAL_GRACE_MS: '1500' });
    b = await startAgentInNamespace(d, host2, {
      // a small layer limit: a move of a bigger writable layer is refused by host-b's import
      homePrefix: 'nimbus-move-across-agent', env: { NIMBUS_CGROUP_PARENT: B_CGROUPS, NIMBUS_LAYER_MAX_BYTES: '8m' },
    });
    const archive = join(work, 'image.tar');
    await writeOciLayoutTar(await buildTestImages(), archive, '');
    image = /Loaded image ID: (sha256:[0-9a-f]{64})/.exec(await cliOk(['image', 'import', archive]))![1]!;
  });
  after(async () => {
    try {
      await removeAllInstances(d);
      for (const v of ['vdata', 'vbig']) await d?.cli(['volume', 'rm', '-f', v]).catch(() => undefined);
      await d?.cli(['network', 'rm', 'span']).catch(() => undefined);
    } finally {
      if (b) {
        await b.destroy();
        await run('ip', ['netns', 'exec', host2!.ns, 'nft', 'delete', 'table', 'inet', b.table]);
      }
      await d?.destroy();
      await host2?.remove();
      for (const dir of (await run('find', ['/sys/fs/cgroup', '-maxdepth', '4', '-type', 'd', '-name', B_CGROUPS.slice(1)])).stdout.split('\n').filter(Boolean)) await run('rmdir', [dir]);
      rmSync(work, { recursive: true, force: true });
    }
  });

  /** Whether a home's snapshotter holds a record for the container (its snapshots' keys name it). */
  const hasSnapshotOf = (home: string, id: string) => Object.keys(readSnapshotMetadataSync(join(home, 'snapshots', 'overlayfs')).snapshots).some((k) => k.includes(id));

  /** Loop mounts under a home's snapshots that no sized snapshot of its metadata owns (warm containers' are owned). */
  const strayLayerMounts = (home: string) => {
    const root = join(home, 'snapshots', 'overlayfs');
    const meta = readSnapshotMetadataSync(root);
    const owned = new Set(Object.values(meta.snapshots).filter((r) => r.sizeBytes !== undefined).map((r) => join(root, 'snapshots', String(r.id))));
    return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${root}/`) && !owned.has(m));
  };

  test('its layer and volume go with it; same address; reached across the overlay; nothing left at the source', async (t) => {
    const spanId = (await cliOk(['network', 'create', 'span'])).trim();
    await cliOk(['run', '-d', '--name', 'watcher', '--host', 'local', '--network', 'span', image, 'sleep', '600']);
    // a writable layer of its own size (--storage): it keeps it on every host
    await cliOk(['run', '-d', '--name', 'mover', '--host', 'local', '--network', 'span', '--network-alias', 'roamer', '-v', 'vdata:/vol', '--storage', '64m', image, ...LOGGED]);
    await logsUntil('mover', 'up 1');
    // the writable layer: a new file, one of the image's deleted (a whiteout), a directory replaced (opaque)
    await exec('mover', 'echo layer-file > /etc/moved-marker && rm /etc/nimbus-release && rm -rf /data/opaque && mkdir /data/opaque && echo new > /data/opaque/new.txt && echo volume-file > /vol/marker && chown 1000:1000 /vol/marker');
    const before = await inspect('mover');
    assert.equal(before.host, 'local');
    const watcher = await inspect('watcher');
    const volId = (JSON.parse(await cliOk(['volume', 'inspect', 'vdata'])) as Array<{ id: string }>)[0]!.id;
    const ep = before.network.endpoints[0]!;

    const t0 = Date.now();
    const out = await cliOk(['move', 'mover', '--to', AGENT, '-o', 'json']);
    const report = JSON.parse(out) as { from: string; to: string; totalMs: number; downtimeMs: number; layer: { bytes: number }; volumes: Array<{ bytes: number }>; log: { bytes: number; files: number } };
    t.diagnostic(`moved in ${Date.now() - t0} ms (operation: ${report.totalMs} ms, down ${report.downtimeMs} ms; layer ${report.layer.bytes} B, volume ${report.volumes[0]?.bytes} B, log ${report.log.bytes} B)`);
    assert.deepEqual([report.from, report.to, report.log.files], ['local', AGENT, 1]);
    // its output from before the move (its stop's too) and from its start on host-b, in order
    assert.deepEqual(await logsUntil('mover', 'up 2'), ['up 1', 'down 1', 'up 2'], 'nimbus logs shows the output from both hosts');

    const moved = await inspect('mover');
    assert.deepEqual([moved.id, moved.host, moved.status], [before.id, AGENT, 'running'], 'same id, on host-b, running');
    assert.deepEqual([moved.network.endpoints[0]!.address, moved.network.endpoints[0]!.mac], [ep.address, ep.mac], 'same address and MAC');
    assert.equal((await exec('mover', 'cat /etc/moved-marker')).trim(), 'layer-file', 'the writable layer\'s file');
    assert.equal((await exec('mover', 'cat /vol/marker; stat -c %u:%g /vol/marker')).trim(), 'volume-file\n1000:1000', 'the volume\'s file, its owner too');
    assert.equal((await exec('mover', 'test -e /etc/nimbus-release && echo present || echo gone')).trim(), 'gone', 'the whiteout kept the image\'s file deleted');
    const layerMiB = async () => Number(/^\S+\s+(\d+)/.exec((await exec('mover', 'df -m / | tail -1')).trim())?.[1]);
    const sized = await layerMiB();
    assert.ok(sized > 32 && sized <= 64, `its layer is still a 64 MiB filesystem on host-b: ${sized} MiB`);
    assert.equal((await exec('mover', 'ls /data/opaque')).trim(), 'new.txt', 'the opaque directory hides the image\'s files');
    assert.match(await links(host2!.ns), new RegExp(`nv${before.id.slice(0, 12)}`), 'its veth on host-b');

    // reached from the first host by address and by name (and its alias), across the overlay
    const dev = vxlanDeviceName(spanId);
    await waitFor('the watcher to reach it by address', async () => ((await inNetns(netnsOf(watcher.id), ['ping', '-c', '1', '-W', '1', ep.address])).code === 0 ? true : undefined), 20_000);
    for (const name of ['mover', 'roamer']) {
      assert.match((await inNetns(netnsOf(watcher.id), ['nslookup', name, ep.gateway])).stdout, new RegExp(`Address:? *${ep.address.replaceAll('.', '\\.')}`), `the first host's DNS answers ${name}`);
    }
    assert.equal((await cli(['exec', 'watcher', 'ping', '-c', '1', '-W', '2', 'mover'])).code, 0, 'the watcher pings it by name');
    assert.match(await fdb(), new RegExp(`${ep.mac} dev ${dev} dst ${host2!.agentAddress}`), 'the first host forwards its MAC to host-b');

    // nothing of it left on the first host
    await waitFor('the source to let go', async () => {
      return hasSnapshotOf(d!.home, before.id) ? undefined : true;
    }, 20_000);
    assert.ok(!existsSync(join(d!.home, 'containers', before.id)), 'no runtime state');
    assert.ok(!existsSync(join(d!.home, 'volumes', volId)), 'no volume directory');
    assert.doesNotMatch(await links(), new RegExp(`nv${before.id.slice(0, 12)}`), 'no veth');
    const cgroups = await cgroupsOf(before.id);
    assert.ok(cgroups.length > 0 && cgroups.every((p) => p.includes(`${B_CGROUPS}/`)), `its cgroups are host-b's only: ${cgroups.join(', ')}`);
    assert.ok(!readdirSync('/run/netns').some((n) => n.endsWith(before.id) && n.startsWith(d!.network.NIMBUS_NFT_TABLE!)), 'no network namespace');
    assert.doesNotMatch(await fdb(host2!.ns), new RegExp(`${ep.mac} dev ${dev} dst ${host2!.hostAddress}`), 'host-b has no entry sending it to its old place');


    // and back, the scheduler choosing (the only other host): host-b's export, the embedded host's import
    const back = JSON.parse(await cliOk(['move', 'mover', '-o', 'json'])) as { from: string; to: string };
    assert.deepEqual([back.from, back.to], [AGENT, 'local']);
    assert.deepEqual(await logsUntil('mover', 'up 3'), ['up 1', 'down 1', 'up 2', 'down 2', 'up 3'], 'and back: host-b\'s export, the embedded host\'s import');
    const home = await inspect('mover');
    assert.deepEqual([home.host, home.status, home.network.endpoints[0]!.address], ['local', 'running', ep.address]);
    assert.equal((await exec('mover', 'cat /etc/moved-marker /vol/marker; test -e /etc/nimbus-release || echo gone')).trim(), 'layer-file\nvolume-file\ngone', 'its files came back');
    // what the watcher sees when it does not reach it: by name, by address, its gateway (its DNS)
    let last = '';
    await waitFor('the watcher to reach it on the same host again', async () => {
      const byName = await cli(['exec', 'watcher', 'ping', '-c', '1', '-W', '1', 'mover']);
      if (byName.code === 0) return true;
      const ns = netnsOf(watcher.id);
      last = `by name: ${byName.stderr.trim()}; by address: ${(await inNetns(ns, ['ping', '-c', '1', '-W', '1', ep.address])).code}; `
        + `gateway: ${(await inNetns(ns, ['ping', '-c', '1', '-W', '1', ep.gateway])).code}; neighbours: ${(await run('ip', ['-n', ns.split('/').pop()!, 'neigh', 'show', 'nud', 'all'])).stdout.trim()}`;
      return undefined;
    }, 20_000).catch((e: unknown) => {
      throw new Error(`${String(e)}: ${last}`);
    });
    await waitFor('host-b to let go', async () => (hasSnapshotOf(b!.home, before.id) ? undefined : true), 20_000);
    assert.doesNotMatch(await links(host2!.ns), new RegExp(`nv${before.id.slice(0, 12)}`), 'no veth left on host-b');
    assert.ok(!existsSync(join(b!.home, 'volumes', volId)), 'no volume left on host-b');
    assert.deepEqual(strayLayerMounts(b!.home), [], 'no layer filesystem left mounted on host-b without its snapshot');
    const home64 = await layerMiB();
    assert.ok(home64 > 32 && home64 <= 64, `and back home: ${home64} MiB`);

    await cliOk(['rm', '-f', 'mover', 'watcher']);
  });

  test('a move the destination refuses leaves it running on the source as before', async () => {
    await cliOk(['run', '-d', '--name', 'heavy', '--host', 'local', '-v', 'vbig:/vol', image, 'sleep', '600']);
    // more than host-b's 8 MiB layer limit: its import refuses the layer
    await exec('heavy', 'dd if=/dev/zero of=/big bs=1048576 count=12 2>/dev/null && echo kept > /etc/marker && echo vol > /vol/marker');
    const before = await inspect('heavy');
    const r = await cli(['move', 'heavy', '--to', AGENT]);
    assert.notEqual(r.code, 0, 'the move fails');
    assert.match(r.stderr, /limit/, `the destination's refusal is the error: ${r.stderr}`);
    const after = await inspect('heavy');
    assert.deepEqual([after.host, after.status], ['local', 'running'], 'on the source, running again');
    assert.equal((await exec('heavy', 'cat /etc/marker /vol/marker; stat -c %s /big')).trim(), `kept\nvol\n${12 * 1048576}`, 'its files as they were');
    await waitFor('host-b to drop the half-arrived copy', async () => (hasSnapshotOf(b!.home, before.id) ? undefined : true), 20_000);
    assert.ok(!existsSync(join(b!.home, 'volumes', (JSON.parse(await cliOk(['volume', 'inspect', 'vbig'])) as Array<{ id: string; host: string }>)[0]!.id)), 'no volume on host-b');
    assert.equal((JSON.parse(await cliOk(['volume', 'inspect', 'vbig'])) as Array<{ host: string }>)[0]!.host, 'local');
    await cliOk(['rm', '-f', 'heavy']);
  });

  test('refusals: the host network (cold or live), a bind mount, an unknown host', async () => {
    await cliOk(['run', '-d', '--name', 'hostnet', '--host', 'local', '--network', 'host', image, 'sleep', '600']);
    const bindDir = join(work, 'bind');
    mkdirSync(bindDir, { recursive: true });
    await cliOk(['run', '-d', '--name', 'bound', '--host', 'local', '--network', 'none', '-v', `${bindDir}:/b`, image, 'sleep', '600']);
    await cliOk(['run', '-d', '--name', 'plain', '--host', 'local', '--network', 'none', image, 'sleep', '600']);
    const refused = async (args: string[], re: RegExp) => {
      const r = await cli(['move', ...args]);
      assert.notEqual(r.code, 0, `move ${args.join(' ')} is refused`);
      assert.match(r.stderr, re);
    };
    await refused(['hostnet', '--to', AGENT], /host network/);
    await refused(['bound', '--to', AGENT], /host path/);
    await refused(['hostnet', '--to', AGENT, '--live'], /host network/);
    await refused(['plain', '--to', 'nowhere'], /no such host/);
    await cliOk(['host', 'disable', AGENT]);
    try {
      await refused(['plain', '--to', AGENT], /cannot take container plain: .*disabled/i);
      await refused(['plain'], /no other host can take container plain/);
    } finally {
      await cliOk(['host', 'enable', AGENT]);
    }
    assert.equal((await inspect('plain')).status, 'running', 'a refusal touches nothing');
    await cliOk(['rm', '-f', 'hostnet', 'bound', 'plain']);
  });

  test('host evacuate: host-b disabled, its containers moved to the embedded host (live where they can), one that cannot move named', async () => {
    // runc: Debian builds crun (the default where it runs) without CRIU, so only runc containers move live
    await cliOk(['run', '-d', '--name', 'evac1', '--host', AGENT, '--runtime', 'runc', '--network', 'none', image, ...SERVE]);
    await exec('evac1', 'echo evac > /etc/evac-marker');
    await cliOk(['create', '--name', 'evac2', '--host', AGENT, '--network', 'none', image, 'true']);
    await cliOk(['run', '-d', '--name', 'evac-hostnet', '--host', AGENT, '--network', 'host', image, ...SERVE]);
    try {
      const r = await cli(['host', 'evacuate', AGENT]);
      assert.notEqual(r.code, 0, 'one instance could not leave');
      // live where it can (a running runc container, both hosts with CRIU), cold otherwise, saying why
      assert.match(r.stderr, /container evac1: moved → local \(live\)/);
      assert.match(r.stderr, /container evac2: moved → local \(cold\) \(cold: container evac2 is created: only a running container moves live/);
      assert.match(r.stderr, /container evac-hostnet: skipped \(.*host network/);
      assert.match(r.stderr, /1 of 3 instances did not leave host host-b/);
      assert.deepEqual([(await inspect('evac1')).host, (await inspect('evac1')).status], ['local', 'running']);
      assert.equal((await exec('evac1', 'cat /etc/evac-marker')).trim(), 'evac');
      assert.deepEqual([(await inspect('evac2')).host, (await inspect('evac2')).status], ['local', 'created']);
      assert.match(await cliOk(['host', 'show', AGENT]), /disabled/i, 'host-b stays disabled');
    } finally {
      await cliOk(['host', 'enable', AGENT]);
      await cliOk(['rm', '-f', 'evac1', 'evac2', 'evac-hostnet']);
    }
  });
  test('healing: host-b dies, its container with a restart policy is rebuilt on the embedded host with its address; host-b back, its stale copy is fenced', async (t) => {
    await cliOk(['run', '-d', '--name', 'healme', '--host', AGENT, '--restart', 'always', '--network', 'span', image, ...SERVE]);
    await cliOk(['run', '-d', '--name', 'waits', '--host', AGENT, '--network', 'none', image, ...SERVE]);
    const before = await inspect('healme');
    const waitsId = (await inspect('waits')).id;
    /** Processes on host-b (its home in their command line) running container id: its conmon. */
    const onB = async (id: string) => (await run('pgrep', ['-f', id])).stdout.split('\n').filter(Boolean)
      .filter((pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(b!.home); } catch { return false; } });
    try {
      await b!.kill('SIGKILL'); // the agent dies; conmon keeps its containers running on host-b
      const t0 = Date.now();
      const after = await waitFor('healme rebuilt on the embedded host', async () => {
        const c = await inspect('healme');
        return c.host === 'local' && c.status === 'running' ? c : undefined;
      }, 30_000);
      t.diagnostic(`rebuilt ${Date.now() - t0} ms after host-b's agent was killed (grace 1.5 s)`);
      assert.equal(after.id, before.id, 'the same container');
      assert.equal(after.network.endpoints[0]!.address, before.network.endpoints[0]!.address, 'its address kept');
      assert.equal((await exec('healme', 'echo alive')).trim(), 'alive');
      const waits = await inspect('waits');
      assert.deepEqual([waits.host, waits.status], [AGENT, 'unknown'], 'no restart policy: it waits for its host');
      assert.ok((await onB(before.id)).length > 0, 'the stale copy still runs on host-b while its agent is dead');
      await b!.start(); // back: its copy of healme is stale
      await waitFor('host-b to destroy its stale copy', async () => ((await onB(before.id)).length === 0
        && !hasSnapshotOf(b!.home, before.id) ? true : undefined), 30_000);
      assert.ok((await onB(waitsId)).length > 0, 'its own container untouched');
      await waitFor('waits running on host-b again', async () => ((await inspect('waits')).status === 'running' ? true : undefined), 20_000);
      assert.deepEqual([(await inspect('healme')).host, (await inspect('healme')).status], ['local', 'running'], 'the rebuilt one runs on');
    } finally {
      if (!b!.pid()) await b!.start().catch(() => undefined);
      await cli(['rm', '-f', 'healme', 'waits']);
    }
  });
});
