// Endpoint counters against the kernel: a veth whose peer is in a throwaway network namespace,
// known UDP traffic both ways, counters from the instance's side, and a re-created endpoint
// starting again from 0 with a new ifindex.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { run, runOk } from '../../core/exec.js';
import { readEndpointCounters, readInstanceNetwork } from './endpoint-counters.js';
import { freeTestSubnet, nthAddress, testDevice } from './network-test-env.js';

const skip = process.getuid?.() !== 0 ? 'needs root (network namespaces)' : false;
const ns = `ntcnt${randomBytes(3).toString('hex')}`;
const hostIf = testDevice('c');
const peer = testDevice('p');
const subnet = freeTestSubnet(30);
const hostIp = nthAddress(subnet, 1);
const nsIp = nthAddress(subnet, 2);
/** Ethernet + IPv4 + UDP headers: what a veth counts per datagram beyond its payload. */
const FRAME_OVERHEAD = 14 + 20 + 8;
/** Slack for what the kernel sends on its own (ARP, an ICMP port-unreachable or two). */
const NOISE_BYTES = 2_000;

async function makeEndpoint(): Promise<void> {
  await runOk('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', peer]);
  await runOk('ip', ['link', 'set', peer, 'netns', ns]);
  // IPv6 off: its router solicitations and MLD reports would be traffic we did not send
  await run('sysctl', ['-qw', `net.ipv6.conf.${hostIf}.disable_ipv6=1`]);
  await run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${peer}.disable_ipv6=1`]);
  await runOk('ip', ['link', 'set', hostIf, 'up']);
  await runOk('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', peer, 'up']);
  await runOk('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
  await runOk('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${nsIp}/30`, 'dev', peer]);
}

/**
 * `count` datagrams of `size` bytes from the host to the namespace, a receiver there taking them
 * (an unbound port would answer with ICMP: traffic we did not send).
 */
async function sendToInstance(count: number, size: number): Promise<void> {
  const receiver = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e',
    `const s=require('dgram').createSocket('udp4');let n=0;s.on('message',()=>{if(++n>=${count})process.exit(0)});s.bind(9,'${nsIp}',()=>console.log('ready'));setTimeout(()=>process.exit(1),10000)`,
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => receiver.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    receiver.stdout.once('data', () => resolve());
    receiver.once('error', reject);
  });
  const s = createSocket('udp4');
  try {
    for (let i = 0; i < count; i++) await new Promise<void>((resolve, reject) => s.send(Buffer.alloc(size, 1), 9, nsIp, (e) => (e ? reject(e) : resolve())));
  } finally {
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
  assert.equal(await exited, 0, 'the receiver in the namespace got every datagram');
}

/** `count` datagrams of `size` bytes from inside the namespace to the host (what the instance sends), received here. */
async function sendFromInstance(count: number, size: number): Promise<void> {
  const s = createSocket('udp4');
  let got = 0;
  s.on('message', () => got++);
  await new Promise<void>((resolve) => s.bind(9, hostIp, () => resolve()));
  try {
    const script = `const s=require('dgram').createSocket('udp4');let n=0;const go=()=>{if(n++>=${count})return s.close();s.send(Buffer.alloc(${size},2),9,'${hostIp}',go)};go()`;
    await runOk('ip', ['netns', 'exec', ns, process.execPath, '-e', script]);
    for (let i = 0; i < 100 && got < count; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(got, count);
  } finally {
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

before(async () => {
  if (skip) return;
  await runOk('ip', ['netns', 'add', ns]);
  await makeEndpoint();
});
after(async () => {
  if (skip) return;
  await run('ip', ['link', 'del', hostIf]);
  await run('ip', ['netns', 'del', ns]);
});

test('known traffic both ways shows in the instance-side counters (host rx is the instance tx)', { skip }, async () => {
  const before = await readEndpointCounters(hostIf);
  assert.ok(before);
  await sendToInstance(50, 1000);
  await sendFromInstance(30, 500);
  const now = (await readEndpointCounters(hostIf))!;
  const rx = now.rxBytes - before.rxBytes;
  const tx = now.txBytes - before.txBytes;
  const wantRx = 50 * (1000 + FRAME_OVERHEAD);
  const wantTx = 30 * (500 + FRAME_OVERHEAD);
  assert.ok(rx >= wantRx && rx <= wantRx + NOISE_BYTES, `instance received ${rx} bytes, sent ${wantRx}`);
  assert.ok(tx >= wantTx && tx <= wantTx + NOISE_BYTES, `instance sent ${tx} bytes, expected ${wantTx}`);
  assert.ok(now.rxPackets - before.rxPackets >= 50 && now.rxPackets - before.rxPackets <= 60, `rx packets ${now.rxPackets - before.rxPackets}`);
  assert.ok(now.txPackets - before.txPackets >= 30 && now.txPackets - before.txPackets <= 40, `tx packets ${now.txPackets - before.txPackets}`);
  // the sum over an instance's endpoints; a device that is gone is left out, none at all is undefined
  const sum = (await readInstanceNetwork([hostIf, 'ntnosuchdev0']))!;
  assert.equal(sum.endpoints.length, 1);
  assert.equal(sum.endpoints[0]!.ifindex, now.ifindex);
  assert.ok(sum.rxBytes >= now.rxBytes && sum.txBytes >= now.txBytes);
  assert.equal(await readInstanceNetwork([]), undefined);
  assert.equal(await readEndpointCounters('ntnosuchdev0'), undefined);
});

test('a re-created endpoint has a new ifindex and counts from 0', { skip }, async () => {
  const old = (await readEndpointCounters(hostIf))!;
  assert.ok(old.rxBytes > 50_000);
  await runOk('ip', ['link', 'del', hostIf]);
  await makeEndpoint();
  const fresh = (await readEndpointCounters(hostIf))!;
  assert.notEqual(fresh.ifindex, old.ifindex);
  assert.ok(fresh.rxBytes < old.rxBytes && fresh.rxBytes < NOISE_BYTES, `fresh counter ${fresh.rxBytes}`);
});
