// The InstanceDriver conformance suite against real QEMU (TCG here: /dev/kvm is PVM).
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { instanceDriverConformance } from '../instance-driver-conformance.js';
import { makeVmEnv, type VmEnv } from './vm-test-env.js';

let env: VmEnv | undefined;
after(async () => {
  // nothing of ours may outlive the suite
  if (env) assert.deepEqual(await env.qemuPids(), []);
  await env?.teardown();
});

// waitScale 6: a TCG guest's first line once took more than 40 s with the other test files loading both cores
instanceDriverConformance('vm (qemu)', async () => {
  env = await makeVmEnv('conf');
  const e = env;
  return {
    driver: e.driver,
    makeSpec: async (id, args, over) => e.makeSpec(id, args, over),
    reopen: async () => e.newDriver(),
    teardown: async () => undefined,
    capabilities: { exec: false, signals: false, separateStderr: false, minMemoryBytes: 128 << 20, waitScale: 6 },
  };
});
