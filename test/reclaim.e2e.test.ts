/**
 * Reclaim end to end: a container running on capacity borrowed from a sibling
 * is stopped when the lender needs its capacity back, after the borrower's
 * grace period, and the lender's create then goes through: through the API as
 * an Operation (202) that completes with the container, through the CLI with a
 * line saying what it waits for.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { call } from './helpers/http.js';
import { startDaemonProcess, type DaemonProcess } from './helpers/daemon-process.js';
import { imageArchives } from './helpers/registry-images.js';
import { buildTestImages } from '../scripts/fixtures/images.js';

let d: DaemonProcess;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nimbus-reclaim-'));
  d = await startDaemonProcess();
});
after(async () => {
  await d?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

test('a lender reclaims: the borrower\'s container is stopped after its grace period, then the lender\'s create is admitted', async () => {
  for (const [name, parent] of [['org', undefined], ['lender', 'org'], ['borrower', 'org']] as const) {
    assert.equal((await d.api('POST', '/projects', { name, ...(parent ? { parent } : {}) })).status, 201);
  }
  // memory and disk in MiB: a container without sizes is given the default 512 and a 1 GiB writable layer in these limited projects
  assert.equal((await d.api('PUT', '/quota/org%2Flender', { hard: { instances: 1, memory: 512, disk: 1024 }, lendingLimit: { instances: 1, memory: 512, disk: 1024 } })).status, 200);
  assert.equal((await d.api('PUT', '/quota/org%2Fborrower', { borrowingLimit: { instances: 1, memory: 512, disk: 1024 }, gracePeriodMs: 300 })).status, 200);
  const { dockerSave } = await imageArchives(await buildTestImages(), dir);
  assert.equal((await call({ socketPath: d.socket }, 'POST', '/images/import?project=org', { raw: readFileSync(dockerSave) })).status, 201);
  const image = 'imported/saved:v1';

  // explain, as a table: the loan the borrower's create would take
  const loanPlan = await d.cli(['quota', 'explain', '--project', 'org/borrower', '--instances', '1']);
  assert.equal(loanPlan.code, 0, loanPlan.stderr);
  assert.match(loanPlan.stdout, /^admitted: /);
  assert.match(loanPlan.stdout, /^decided by: the "\w+" line of instances on project org\/\w+$/m);
  assert.match(loanPlan.stdout, /^loans that would be made:\nLENDER\s+BORROWER\s+RESOURCE\s+AMOUNT\norg\/lender\s+org\/borrower\s+instances\s+1$/m);

  let r = await d.api<{ id: string }>('POST', '/containers?project=org/borrower', { image, name: 'borrowed', cmd: ['sleep', '600'], stopSignal: 'SIGKILL' });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const borrowed = r.body.id;
  assert.equal((await d.api<{ status: string }>('POST', '/containers/borrowed/start')).body.status, 'running');
  const loans = await d.api<{ borrower: string; instance: string }[]>('GET', '/quota/org%2Flender/loans');
  assert.deepEqual(loans.body.map((l) => [l.instance, (l as { resource?: string }).resource]).sort(), [[borrowed, 'disk'], [borrowed, 'instances'], [borrowed, 'memory']], 'running on the lender\'s instance, memory and disk');

  const plan = await d.api<{ admitted: boolean; reclaim?: { victims: { instance: string; action: string }[] } }>('POST', '/quota/org%2Flender/explain', { instances: 1 });
  assert.equal(plan.body.admitted, false);
  assert.deepEqual(plan.body.reclaim?.victims.map((v) => [v.instance, v.action]), [[borrowed, 'stop']], 'the plan is visible beforehand');
  const explained = await d.cli(['quota', 'explain', '--project', 'org/lender', '--instances', '1']);
  assert.equal(explained.code, 1, explained.stderr);
  assert.match(explained.stdout, /^needs a reclaim: rejected by .*org\/lender/, 'the reason names projects by path');
  assert.match(explained.stdout, /^decided by: the "\w+" line of instances on project org\/lender$/m);
  assert.match(explained.stdout, new RegExp(`^instances that would be reclaimed \\(1\\)[^\\n]*\\nINSTANCE\\s+NAME\\s+PROJECT\\s+ACTION\\s+FREES\\s+GRACE ENDS\\n${borrowed.slice(0, 12)}\\s+borrowed\\s+org/borrower\\s+stop\\s+instances=1\\s+(in \\d+s|now)$`, 'm'), explained.stdout);

  // The lender's create answers at once with an Operation, which completes with the container once the reclaim is done.
  interface Op { id: string; kind: string; status: string; progress: { instances: number; projects: string[]; graceSeconds: number }; result: { id: string; name: string; projectId: string } | null }
  const created = await d.api<Op>('POST', '/containers?project=org/lender', { image, name: 'lenders-own', cmd: ['true'] });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  assert.equal(created.body.kind, 'container.create');
  assert.deepEqual([created.body.progress.instances, created.body.progress.projects], [1, ['org/borrower']], 'the progress names the plan');
  const held = await d.api<{ error: { code: string } }>('POST', '/containers?project=org/lender', { image, name: 'lenders-own', cmd: ['true'] });
  assert.equal(held.status, 409, `the name is held while it waits: ${JSON.stringify(held.body)}`);
  let op = created.body;
  while (op.status === 'running') op = (await d.api<Op>('GET', `/operations/${op.id}/wait?timeout=30`)).body;
  assert.equal(op.status, 'succeeded', JSON.stringify(op));
  assert.equal(op.result?.name, 'lenders-own');
  assert.equal((await d.api<{ name: string }>('GET', `/containers/${op.result!.id}`)).body.name, 'lenders-own', 'the container exists');

  const victim = await d.api<{ status: string; stoppedByUser: boolean }>('GET', `/containers/${borrowed}`);
  assert.equal(victim.body.status, 'exited', 'the borrower\'s container was stopped');
  assert.equal(victim.body.stoppedByUser, true, 'no restart policy brings it back');
  assert.deepEqual((await d.api<unknown[]>('GET', '/quota/org%2Flender/loans')).body, [], 'the loan is returned');
  const audit = await d.api<{ kind: string; instance?: string }[]>('GET', '/quota-audit');
  assert.ok(audit.body.some((e) => e.kind === 'reclaim-evicted' && e.instance === borrowed), 'the eviction is audited');
  assert.ok(audit.body.some((e) => e.kind === 'reclaim-done'));

  // It gave its quota back: starting it again needs fresh admission, and there is no room.
  const again = await d.api<{ error: { code: string } }>('POST', `/containers/${borrowed}/start`);
  assert.equal(again.status, 429, JSON.stringify(again.body));

  // Once the lender's instance is idle again the borrower runs on it; the CLI's create then says what it waits for.
  assert.equal((await d.api('DELETE', `/containers/${op.result!.id}`)).status, 204);
  assert.equal((await d.api<{ status: string }>('POST', `/containers/${borrowed}/start`)).body.status, 'running');
  const cli = await d.cli(['--project', 'org/lender', 'create', '--name', 'second', image, 'true']);
  assert.equal(cli.code, 0, cli.stderr);
  assert.match(cli.stderr, /^waiting for reclaim of 1 instance\(s\) in project org\/borrower, grace \d+s/m);
  const second = await d.api<{ id: string; projectId: string }>('GET', `/containers/${cli.stdout.trim()}`);
  assert.equal(second.status, 200, cli.stdout);
  assert.equal((await d.api<{ status: string }>('GET', `/containers/${borrowed}`)).body.status, 'exited', 'reclaimed again');
});
