/**
 * The dashboard's instance list with BENCH_DASHBOARD_INSTANCES (default 1,000) instances, in
 * Debian's Chromium driven by playwright-core (issue 17): a real nimbusd with its dashboard on a
 * loopback port, the containers created (not started, no network: the list's cost is the rows)
 * in a project of their own, the administrator logged in. Each of BENCH_DASHBOARD_RUNS (default
 * 5) cold reloads is timed from the navigation to the first row on screen ("first render") and
 * to the last row after scrolling to the end ("interactive"), and the page's transfer (navigation
 * and every resource) is summed. Goal: first render under 1 s.
 * Run alone: node dist/bench/dashboard.js
 */
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { startDaemonProcess } from '../test/helpers/daemon-process.js';
import { cleanup } from './lib/cleanup.js';
import { isMain, runStandalone, type BenchEnv } from './lib/env.js';
import { makeRecord, note, type BenchOutcome } from './lib/result.js';
import { summarize } from './lib/stats.js';

const NAME = 'dashboard';
const CHROMIUM = '/usr/bin/chromium';
const INSTANCES = Math.max(1, Number(process.env.BENCH_DASHBOARD_INSTANCES ?? 1000));
const RUNS = Math.max(1, Number(process.env.BENCH_DASHBOARD_RUNS ?? 5));
const GOAL_FIRST_RENDER_MS = 1000;
const PASSWORD = 'bench-dashboard-admin';

export async function dashboard(env: BenchEnv): Promise<BenchOutcome> {
  if (!existsSync(CHROMIUM)) throw new Error(`no ${CHROMIUM}: scripts/bootstrap installs Debian's chromium`);
  const d = await startDaemonProcess(['--dashboard', '127.0.0.1:0'], { NIMBUS_ADMIN_PASSWORD: PASSWORD });
  const undoDaemon = cleanup.add('dashboard bench daemon', () => d.destroy());
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const undoBrowser = cleanup.add('dashboard bench browser', () => browser.close());
  const firstRender: number[] = [];
  const interactive: number[] = [];
  const transfer: number[] = [];
  let rowsInPage = 0;
  let createMs = 0;
  try {
    const base = /nimbusd dashboard: (http:\/\/127\.0\.0\.1:\d+)\/ui\//.exec(d.output())?.[1];
    if (!base) throw new Error(`the daemon printed no dashboard URL:\n${d.output()}`);
    const pulled = await d.cli(['image', 'pull', env.busybox]);
    if (pulled.code !== 0) throw new Error(pulled.stderr);
    if ((await d.api('POST', '/projects', { name: 'big' })).status !== 201) throw new Error('cannot make the project');
    const t0 = Date.now();
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next < INSTANCES) {
        const i = next++;
        const r = await d.api('POST', '/containers?project=big', { image: env.busybox, name: `b${String(i).padStart(4, '0')}`, cmd: ['true'], network: 'none' });
        if (r.status !== 201) throw new Error(`create ${i}: ${JSON.stringify(r.body)}`);
      }
    }));
    createMs = Date.now() - t0;
    note(NAME, `${INSTANCES} containers created in ${createMs} ms`);
    const page = await (await browser.newContext()).newPage();
    page.setDefaultTimeout(60_000);
    await page.goto(`${base}/ui/`);
    await page.getByLabel('User').fill('admin');
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByTestId('whoami').waitFor();
    await page.getByLabel('Project').selectOption({ label: 'big' });
    await page.getByTestId('instance-count').filter({ hasText: String(INSTANCES) }).waitFor();
    const last = `row-b${String(INSTANCES - 1).padStart(4, '0')}`;
    for (let i = 0; i < RUNS; i++) {
      const started = Date.now();
      await page.reload();
      await page.getByTestId('row-b0000').waitFor();
      firstRender.push(Date.now() - started);
      await page.locator('.scroller').evaluate((el) => {
        const s = el as unknown as { scrollTop: number; scrollHeight: number };
        s.scrollTop = s.scrollHeight;
      });
      await page.getByTestId(last).waitFor();
      interactive.push(Date.now() - started);
      transfer.push(await page.evaluate(() => {
        const perf = (globalThis as unknown as { performance: { getEntriesByType(t: string): { transferSize: number; encodedBodySize: number }[] } }).performance;
        return [...perf.getEntriesByType('navigation'), ...perf.getEntriesByType('resource')].reduce((n, e) => n + (e.transferSize || e.encodedBodySize), 0);
      }));
      rowsInPage = await page.locator('[data-testid^="row-b"]').count();
    }
  } finally {
    await undoBrowser();
    // removed here, eight at a time: the daemon's teardown removes one by one, and a cut-short one leaves them running
    const list = (await d.api<{ id: string }[]>('GET', '/containers?all=true&project=big').catch(() => ({ status: 0, body: [] }))).body ?? [];
    await Promise.all(Array.from({ length: 8 }, async () => {
      for (let c = list.pop(); c; c = list.pop()) await d.api('DELETE', `/containers/${c.id}?force=true`).catch(() => undefined);
    }));
    await undoDaemon();
  }
  const fr = summarize(firstRender);
  const ti = summarize(interactive);
  const kb = summarize(transfer.map((b) => b / 1000));
  const record = makeRecord(NAME, {
    results: { instances: INSTANCES, runs: RUNS, createMs, unit: 'ms', firstRender: fr, interactive: ti, transferKB: kb, rowsInPage },
    peers: {},
    ratios: {},
  });
  return {
    record,
    summary: [
      { bench: NAME, figure: `dashboard instance list, ${INSTANCES} instances: first render p50 (Chromium)`, unit: 'ms', nimbus: fr.p50, peers: {}, ratio: null,
        goal: `< ${GOAL_FIRST_RENDER_MS} ms`, met: fr.p50 < GOAL_FIRST_RENDER_MS, note: `p95 ${fr.p95}; interactive (last row after scrolling) p50 ${ti.p50} ms; ${rowsInPage} rows in the page` },
      { bench: NAME, figure: 'dashboard instance list transfer', unit: 'KB', nimbus: kb.p50, peers: {}, ratio: null, note: 'navigation + every resource, as the browser counted them' },
    ],
  };
}

if (isMain(import.meta.url)) await runStandalone(NAME, dashboard);
