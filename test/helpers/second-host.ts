/**
 * A second "host" on this machine for multi-host tests: a network namespace joined to this one by
 * a veth pair on a free /30 (this side .1, the namespace .2). remove() deletes both ends.
 */
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { freeTestSubnet } from '../../src/agent/network/network-test-env.js';
import { run } from '../../src/core/exec.js';

export interface SecondHost {
  ns: string;
  hostAddress: string;
  agentAddress: string;
  /** The namespace's inode, to compare with /proc/PID/ns/net. */
  inode(): number;
  remove(): Promise<void>;
}

/** prefix names the namespace (nimbus-PREFIX-TAG) and the host-side link (PREFIXTAG, ≤ 15 characters). */
export async function secondHost(prefix: { ns: string; link: string }): Promise<SecondHost> {
  const subnet = freeTestSubnet(30);
  const base = subnet.split('/')[0]!.split('.').map(Number);
  const addr = (n: number) => [...base.slice(0, 3), base[3]! + n].join('.');
  const tag = process.pid.toString(36).slice(-6);
  const ns = `nimbus-${prefix.ns}-${tag}`;
  const hostIf = `${prefix.link}${tag}`;
  const ok = async (args: string[]) => {
    const r = await run('ip', args);
    assert.equal(r.code, 0, `ip ${args.join(' ')}: ${r.stderr}`);
  };
  await ok(['netns', 'add', ns]);
  await ok(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await ok(['addr', 'add', `${addr(1)}/30`, 'dev', hostIf]);
  await ok(['link', 'set', hostIf, 'up']);
  await ok(['-n', ns, 'addr', 'add', `${addr(2)}/30`, 'dev', 'eth0']);
  await ok(['-n', ns, 'link', 'set', 'eth0', 'up']);
  await ok(['-n', ns, 'link', 'set', 'lo', 'up']);
  return {
    ns,
    hostAddress: addr(1),
    agentAddress: addr(2),
    inode: () => statSync(`/run/netns/${ns}`).ino,
    async remove() {
      await run('ip', ['netns', 'del', ns]); // its end of the veth goes with it, and so does ours
      await run('ip', ['link', 'del', hostIf]);
    },
  };
}
