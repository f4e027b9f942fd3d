/**
 * Secure container start: `nimbus run --rm --runtime vm IMAGE true` through the API
 * (create + start + wait for removal, as the CLI does), the microVM restored from
 * the saved template; beside it in the same run, the same with runc, and a cold
 * boot of the microVM guest (the VM driver's create + start until the kernel
 * reached init, no template), so the template's effect shows.
 * BENCH_SECURE_RUNS each (default 10) after one untimed warm-up (which also makes
 * the template). Run alone: node dist/bench/secure-start.js
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { nimbusRunRm, type BenchDaemon } from './lib/daemon.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { cleanup } from './lib/cleanup.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { measure, ratio, summarize } from './lib/stats.js';
import { buildSecureGuest, secureAccelerator, PROBE_MARKER } from '../src/agent/drivers/secure/secure-guest.js';
import { VmDriver } from '../src/agent/drivers/vm/vm-driver.js';
import { readFile } from 'node:fs/promises';

const NAME = 'secure-start';
const RUNS = Math.max(1, Number(process.env.BENCH_SECURE_RUNS ?? 10));

async function coldBoot(runs: number): Promise<number[]> {
  const base = await mkdtemp(path.join(tmpdir(), 'nimbus-bench-secure-'));
  const undo = cleanup.add(`secure bench dir ${base}`, () => rm(base, { recursive: true, force: true }));
  try {
    const guest = await buildSecureGuest(path.join(base, 'guest'));
    const accel = await secureAccelerator(guest, path.join(base, 'guest'));
    const vms = new VmDriver({ stateDir: path.join(base, 'vms'), accel: accel.accel });
    let n = 0;
    return await measure(runs, async () => {
      const id = `cold${n++}`;
      const t0 = performance.now();
      await vms.create({ id, name: id, rootfs: [], process: { args: [], env: [], cwd: '/', user: '0' }, resources: { memoryBytes: 256 << 20 },
        vm: { kernel: guest.kernel, initrd: guest.initrd, append: `${guest.append} nimbus.probe` } });
      await vms.start(id);
      const log = (await vms.inspect(id)).consoleLog;
      while (!(await readFile(log, 'utf8').catch(() => '')).includes(PROBE_MARKER)) await new Promise((r) => setTimeout(r, 5));
      const ms = performance.now() - t0;
      await vms.delete(id);
      return ms;
    }, { warmup: 1 }).then((xs) => xs);
  } finally {
    await undo();
  }
}

export async function secureStart(env: BenchEnv): Promise<BenchOutcome> {
  let d: BenchDaemon | undefined;
  let secure, runc;
  try {
    d = await env.newDaemon();
    await d.pull(env.busybox);
    const client = d.client;
    note(NAME, `run --rm --runtime vm: ${RUNS} runs (the warm-up makes the template)`);
    secure = summarize(await measure(RUNS, () => nimbusRunRm(client, env.busybox, 'vm'), { warmup: 1, gapMs: 200 }));
    note(NAME, `run --rm (runc): ${RUNS} runs`);
    runc = summarize(await measure(RUNS, () => nimbusRunRm(client, env.busybox), { warmup: 1, gapMs: 200 }));
  } finally {
    await d?.stop();
  }
  note(NAME, `cold boot of the microVM guest to init: ${Math.min(RUNS, 5)} runs`);
  const cold = summarize(await coldBoot(Math.min(RUNS, 5)));
  const record = makeRecord(NAME, {
    results: { runs: RUNS, unit: 'ms', secureFromTemplate: secure, runcSameRun: runc, coldBootToInit: cold },
    peers: {},
    ratios: { secure_over_coldBoot_p50: ratio(secure.p50, cold.p50), secure_over_runc_p50: ratio(secure.p50, runc.p50) },
  });
  return {
    record,
    summary: [
      { bench: NAME, figure: 'run --rm --runtime vm true p50 (API)', unit: 'ms', nimbus: secure.p50, peers: { 'microVM cold boot to init': cold.p50, 'same with runc': runc.p50 }, ratio: ratio(secure.p50, cold.p50), note: `p95 ${secure.p95}; template restore, not a boot` },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, secureStart);
