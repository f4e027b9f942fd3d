/**
 * The route tests' VM on a host, served: a store in a temp dir with project p1, an agent
 * directory the test opens on it, the VM service, a stopped VM "web" of p1 recorded on the host
 * the test names, and an API server with the routes given, for the two callers of principals.ts.
 * Everything is closed and removed when the test ends.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { AgentDirectory } from '../../control/agents/agent-directory.js';
import { RecordingScheduler } from '../../control/compute/test-scheduler.js';
import { VmService } from '../../control/compute/vm-service.js';
import { EventBus } from '../../control/events/event-bus.js';
import { OperationService } from '../../control/operations/operations.js';
import { QuotaService } from '../../control/quota/quota-service.js';
import type { Services } from '../../control/services.js';
import { openStore } from '../../store/open.js';
import type { Store } from '../../store/store.js';
import type { Route } from '../route.js';
import { ApiServer } from '../server.js';
import { bearerCall } from './bearer-call.js';
import { adminAndAlice } from './principals.js';

export interface VmRouteFixture {
  dir: string;
  store: Store;
  agents: AgentDirectory;
  call: ReturnType<typeof bearerCall>;
}

export async function vmRouteFixture(
  t: Pick<TestContext, 'after'>,
  o: {
    prefix: string;
    /** Before the directory opens (a remote agent's row, say). */
    prepare?: (store: Store, dir: string, now: string) => Promise<void>;
    openAgents: (store: Store, dir: string) => Promise<AgentDirectory>;
    /** The host the VM is recorded on. */
    agent: string;
    routes: Route[];
  },
): Promise<VmRouteFixture> {
  const dir = mkdtempSync(join(tmpdir(), o.prefix));
  const store = await openStore(join(dir, 'nimbus.db'));
  let agents: AgentDirectory | undefined;
  let server: ApiServer | undefined;
  t.after(async () => {
    await server?.close();
    await agents?.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const now = new Date().toISOString();
  await store.projects.insert({ id: 'p1', name: 'p1', parentId: null, createdAt: now });
  await o.prepare?.(store, dir, now);
  agents = await o.openAgents(store, dir);
  const events = new EventBus();
  const quota = await QuotaService.open(store);
  await quota.ensureProject('p1', null);
  const vms = new VmService(store, agents, events, quota, new OperationService(store, events), new RecordingScheduler(agents));
  await store.vms.insert({
    id: 'a'.repeat(32), name: 'web', projectId: 'p1', config: { cpus: 1, memoryMiB: 128 }, status: 'stopped', pid: null, exitCode: null,
    createdAt: now, startedAt: null, finishedAt: null, savedAt: null, agent: o.agent,
  });
  const services = { store, agents, vms, defaultProjectId: 'p1', networks: { endpointsOf: async () => [] }, ...adminAndAlice } as unknown as Services;
  server = new ApiServer(o.routes, services);
  return { dir, store, agents, call: bearerCall(await server.listenTcp('127.0.0.1', 0)) };
}
