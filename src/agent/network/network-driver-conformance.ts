/**
 * The conformance suite every NetworkDriver passes, run for real through a
 * NetworkHost: kernel objects, traffic between namespaces, published ports on
 * loopback, DNS by name, isolation, and nothing left behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import path from 'node:path';
import { run } from '../../core/exec.js';
import { NetworkHost } from './network-host.js';
import type { NetworkDriverName, NetworkSpec } from './network-driver.js';
import { freePort, freeTestSubnet, gatewayOf, hostFootprint, httpGetFromNetns, inNetns, nthAddress, serveHttp, spawnInNewNetns, testDevice, type NetnsProcess } from './network-test-env.js';

async function httpGet(url: string, timeoutMs = 3000): Promise<string> {
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return r.text();
}

export function networkDriverConformance(driver: NetworkDriverName): void {
  describe(`NetworkDriver conformance: ${driver}`, () => {
    let base: string;
    let host: NetworkHost;
    const table = `nimbus_t${process.pid}`;
    const procs: NetnsProcess[] = [];
    const stoppers: Array<() => Promise<void>> = [];
    const mine = (f: Awaited<ReturnType<typeof hostFootprint>>, stems: string[]) => ({
      links: f.links.filter((l) => stems.some((s) => l.startsWith(s))),
      tables: f.tables.filter((t) => t.includes(table)),
      netns: f.netns.filter((n) => stems.some((s) => n.includes(s))),
    });
    let netA: NetworkSpec;
    let netB: NetworkSpec;
    let netInternal: NetworkSpec;
    const idStem = `c${process.pid.toString(16)}${Date.now().toString(16)}`.slice(0, 9);
    const cid = (n: number) => `${idStem}${n}`.padEnd(12, '0') + 'f'.repeat(52);
    // the names this suite's objects carry: device names, veth stems (n[vr] + 12 of the id), netns
    const stems = () => [netA.device, netB.device, netInternal.device, `nv${idStem}`, `nr${idStem}`, `${table}-${idStem}`];

    const mk = (tag: string, internal = false): NetworkSpec => {
      const subnet = freeTestSubnet();
      return { id: `net-${tag}-${process.pid}`, name: `${driver}-${tag}`, driver, subnet, gateway: gatewayOf(subnet), internal, device: testDevice(tag) };
    };

    before(async () => {
      base = await mkdtemp(path.join(tmpdir(), 'nimbus-net-'));
      host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
      netA = mk('a');
      netB = mk('b');
      netInternal = mk('i', true);
      // subnets are picked at random from the host's free ones; make sure the three differ
      assert.equal(new Set([netA.subnet, netB.subnet, netInternal.subnet]).size, 3);
    });

    after(async () => {
      for (const s of stoppers) await s();
      for (const p of procs) await p.kill();
      for (let i = 0; i < 16; i++) await host.detach(cid(i)).catch(() => undefined);
      for (const n of [netA, netB, netInternal]) await host.removeNetwork(n.id).catch(() => undefined);
      await host.close();
      await run('nft', ['delete', 'table', 'inet', table]);
      await rm(base, { recursive: true, force: true });
    });

    const container = async (n: number, endpoints: Array<{ network: NetworkSpec; address: string; names?: string[] }>, ports: Parameters<NetworkHost['attach']>[0]['ports'] = []) => {
      const p = await spawnInNewNetns();
      procs.push(p);
      const r = await host.attach({ containerId: cid(n), pid: p.pid, endpoints: endpoints.map((e) => ({ network: e.network, address: e.address, dnsNames: e.names ?? [] })), ports });
      return { ...r, proc: p };
    };

    test('networks, endpoints, traffic, names, ports and isolation', async () => {
      const before0 = mine(await hostFootprint(), stems());
      await host.ensureNetwork(netA);
      await host.ensureNetwork(netB);
      await host.ensureNetwork(netInternal);
      // idempotent
      await host.ensureNetwork(netA);

      const www = path.join(base, 'www');
      await mkdir(www, { recursive: true });
      await writeFile(path.join(www, 'index.html'), `hello from ${driver}\n`);
      const hostPort = await freePort();
      const a = await container(0, [{ network: netA, address: nthAddress(netA.subnet, 10), names: ['web', 'www-alias'] }], [{ protocol: 'tcp', hostIp: '127.0.0.1', hostPort, containerPort: 8080 }]);
      const b = await container(1, [{ network: netA, address: nthAddress(netA.subnet, 11), names: ['client'] }]);
      const c = await container(2, [{ network: netB, address: nthAddress(netB.subnet, 10), names: ['stranger'] }]);
      const i = await container(3, [{ network: netInternal, address: nthAddress(netInternal.subnet, 10) }]);
      stoppers.push(await serveHttp(a.netns, 8080, www));

      // the endpoint is inside the namespace with its address
      const addrs = (await inNetns(a.netns, ['ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0'])).stdout;
      assert.match(addrs, new RegExp(`inet ${nthAddress(netA.subnet, 10).replaceAll('.', '\\.')}/`));

      // the host reaches the container directly (bridge: on-link; route: the /32 route)
      assert.equal(await httpGet(`http://${nthAddress(netA.subnet, 10)}:8080/`), `hello from ${driver}\n`);
      // a published port answers on loopback
      assert.equal(await httpGet(`http://127.0.0.1:${hostPort}/`), `hello from ${driver}\n`);
      // a neighbour on the same network reaches it by address and resolves it by name
      assert.equal(await httpGetFromNetns(b.netns, nthAddress(netA.subnet, 10), 8080), `hello from ${driver}\n`);
      const ns = await inNetns(b.netns, ['nslookup', 'www-alias', netA.gateway]);
      assert.match(ns.stdout, new RegExp(nthAddress(netA.subnet, 10).replaceAll('.', '\\.')), ns.stdout + ns.stderr);
      // a container of another network cannot reach it, nor resolve it through its own DNS
      assert.equal(await httpGetFromNetns(c.netns, nthAddress(netA.subnet, 10), 8080), undefined, 'another network is isolated');
      const nsC = await inNetns(c.netns, ['nslookup', 'web', netB.gateway]);
      assert.doesNotMatch(nsC.stdout, new RegExp(nthAddress(netA.subnet, 10).replaceAll('.', '\\.')));
      // an internal network has no route out
      const routeOut = await inNetns(i.netns, ['ip', 'route', 'get', '192.0.2.1']);
      assert.notEqual(routeOut.code, 0, `internal network routes out: ${routeOut.stdout}`);

      // a port already published (or in use on the host) is refused and nothing is left
      await assert.rejects(container(4, [{ network: netA, address: nthAddress(netA.subnet, 12) }], [{ protocol: 'tcp', hostIp: '127.0.0.1', hostPort, containerPort: 80 }]).catch(async (e: unknown) => {
        throw e;
      }), (e: Error) => /in use/.test(e.message));
      assert.equal((await hostFootprint()).netns.filter((n) => n.includes(cid(4))).length, 0, 'a refused attach leaves no namespace');

      // a restarted daemon (a new NetworkHost over the same state) keeps what lives and removes the rest
      await host.close();
      host = new NetworkHost({ stateDir: path.join(base, 'state'), nftTable: table, upstreams: [] });
      const rec = await host.reconcile(new Set([cid(0), cid(1)]));
      assert.equal(rec.endpointsRemoved, 2);
      assert.equal(await httpGet(`http://127.0.0.1:${hostPort}/`), `hello from ${driver}\n`, 'published port kept');
      assert.equal((await hostFootprint()).netns.filter((n) => n.includes(cid(2)) || n.includes(cid(3))).length, 0);

      // a network in use cannot be removed
      await assert.rejects(host.removeNetwork(netA.id), /endpoint/);

      for (const n of [0, 1]) await host.detach(cid(n));
      await host.detach(cid(0)); // idempotent
      for (const n of [netA, netB, netInternal]) await host.removeNetwork(n.id);
      // the published port is gone with its container
      await assert.rejects(httpGet(`http://127.0.0.1:${hostPort}/`, 1000));
      assert.deepEqual(mine(await hostFootprint(), stems()), before0, 'no interface, table or namespace left');
    });

    /** The published ports the table's maps hold, as "[address ]protocol/port→address:port". */
    const publishedInTable = async (): Promise<string[]> => {
      const out = (await run('nft', ['list', 'table', 'inet', table])).stdout;
      const found = [...out.matchAll(/(?:(\d+\.\d+\.\d+\.\d+) \. )?(tcp|udp) \. (\d+) comment "[0-9a-f]+" : (\d+\.\d+\.\d+\.\d+) \. (\d+)/g)];
      return found.map((m) => `${m[1] ? `${m[1]} ` : ''}${m[2]}/${m[3]}→${m[4]}:${m[5]}`).sort();
    };

    test('published ports in a burst of attaches and removals, interleaved with renders, leave exactly the live ones; a table changed behind the host\'s back is put right', async () => {
      const before0 = mine(await hostFootprint(), stems());
      await host.ensureNetwork(netA);
      const ports = await Promise.all([0, 1, 2, 3, 4, 5].map(() => freePort()));
      const want = (n: number, hostIp?: string) => `${hostIp ? `${hostIp} ` : ''}tcp/${ports[n]}→${nthAddress(netA.subnet, 20 + n)}:80`;
      // six attaches at once, half on one host address, half on any, while a network is laid out (a render)
      const attached = Promise.all([0, 1, 2, 3, 4, 5].map((n) =>
        container(8 + n, [{ network: netA, address: nthAddress(netA.subnet, 20 + n) }], [{ protocol: 'tcp', ...(n % 2 ? { hostIp: '127.0.0.1' } : {}), hostPort: ports[n]!, containerPort: 80 }])));
      await host.ensureNetwork(netB);
      await attached;
      assert.deepEqual(await publishedInTable(), [0, 1, 2, 3, 4, 5].map((n) => want(n, n % 2 ? '127.0.0.1' : undefined)).sort());
      // three go at once while another network goes (a render); the rest stay
      await Promise.all([host.release(cid(8)), host.detach(cid(9)), host.detach(cid(10)), host.removeNetwork(netB.id)]);
      await host.detach(cid(8));
      await host.tableSettled(); // a release withdraws its ports just behind the request
      assert.deepEqual(await publishedInTable(), [3, 4, 5].map((n) => want(n, n % 2 ? '127.0.0.1' : undefined)).sort());
      // an element deleted behind the host's back: the removal that cannot delete it renders instead
      await run('nft', ['delete', 'element', 'inet', table, 'ports_addr', `{ 127.0.0.1 . tcp . ${ports[3]} }`]);
      await host.detach(cid(11));
      assert.deepEqual(await publishedInTable(), [4, 5].map((n) => want(n, n % 2 ? '127.0.0.1' : undefined)).sort());
      // a stale element on the port an attach publishes: the add is refused, the render replaces it
      const again = await freePort();
      assert.equal((await run('nft', ['add', 'element', 'inet', table, 'ports_any', `{ tcp . ${again} comment "0bad" : 192.0.2.1 . 9 }`])).code, 0);
      await container(14, [{ network: netA, address: nthAddress(netA.subnet, 30) }], [{ protocol: 'tcp', hostPort: again, containerPort: 80 }]);
      assert.deepEqual(await publishedInTable(), [...[4, 5].map((n) => want(n, n % 2 ? '127.0.0.1' : undefined)), `tcp/${again}→${nthAddress(netA.subnet, 30)}:80`].sort());
      for (const n of [12, 13, 14]) await host.detach(cid(n));
      assert.deepEqual(await publishedInTable(), []);
      await host.removeNetwork(netA.id);
      assert.deepEqual(mine(await hostFootprint(), stems()), before0, 'no interface, table or namespace left');
    });

    test('a port of a range (-p FIRST-LAST:PORT): the first free one, past a host process\'s and another container\'s; a full range refused, nothing left', async () => {
      const before0 = mine(await hostFootprint(), stems());
      await host.ensureNetwork(netA);
      const listenable = (port: number) => new Promise<boolean>((resolve) => {
        const s = createServer();
        s.once('error', () => resolve(false));
        s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
      });
      let base = 0;
      for (let tries = 0; tries < 100 && !base; tries++) {
        const b = 20_000 + Math.floor(Math.random() * 10_000);
        if ((await listenable(b)) && (await listenable(b + 1)) && (await listenable(b + 2))) base = b;
      }
      assert.ok(base, 'three free ports in a row');
      const holder = createServer();
      await new Promise<void>((r) => holder.listen(base, '127.0.0.1', r));
      try {
        const ranged = [{ protocol: 'tcp' as const, hostIp: '127.0.0.1', hostPort: base, hostPortEnd: base + 2, containerPort: 80 }];
        const a = await container(20, [{ network: netA, address: nthAddress(netA.subnet, 40) }], ranged);
        assert.deepEqual(a.ports, [{ protocol: 'tcp', hostIp: '127.0.0.1', hostPort: base + 1, containerPort: 80 }], 'a host process holds the first: the next; the answer is the port, not the range');
        const b = await container(21, [{ network: netA, address: nthAddress(netA.subnet, 41) }], ranged);
        assert.equal(b.ports[0]?.hostPort, base + 2, 'never a port another container publishes');
        await assert.rejects(container(22, [{ network: netA, address: nthAddress(netA.subnet, 42) }], ranged), new RegExp(`no free host port in ${base}-${base + 2}/tcp`));
        assert.equal((await hostFootprint()).netns.filter((n) => n.includes(cid(22))).length, 0, 'a refused attach leaves no namespace');
        assert.deepEqual(await publishedInTable(), [`127.0.0.1 tcp/${base + 1}→${nthAddress(netA.subnet, 40)}:80`, `127.0.0.1 tcp/${base + 2}→${nthAddress(netA.subnet, 41)}:80`].sort());
        await assert.rejects(container(23, [{ network: netA, address: nthAddress(netA.subnet, 43) }], [{ ...ranged[0]!, hostPort: base + 2, hostPortEnd: base }]), /is not a range of ports/);
      } finally {
        holder.close();
        for (const n of [20, 21]) await host.detach(cid(n));
      }
      assert.deepEqual(await publishedInTable(), []);
      await host.removeNetwork(netA.id);
      assert.deepEqual(mine(await hostFootprint(), stems()), before0, 'no interface, table or namespace left');
    });
  });
}
