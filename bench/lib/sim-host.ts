/**
 * SIMULATED hosts for benchmarks (as Nova's fake virt driver and Kubernetes' kubemark): each is
 * an in-memory agent (FakeAgent: the whole Agent interface, no workload, nothing on the host)
 * served by the REAL agent protocol server (src/agent/remote/agent-server.ts), so a control
 * plane registers it, probes it and asks it for facts exactly as it does a `nimbusd agent`.
 * Its capacity is what it reports through info(); hostnames end in ".simulated" and the kernel
 * reads "simulated", so a listing never passes one off as a real host.
 *
 * Many in one process, each on its own unix socket (plain HTTP with the agent's bearer token,
 * as `nimbusd agent --listen unix:/PATH` serves): a thousand TLS listeners with a certificate
 * each would measure the handshakes, not the scheduler, and over TCP agents must use mutual TLS.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startAgentServer, type AgentServer } from '../../src/agent/remote/agent-server.js';
import { FakeAgent } from '../../src/control/testing/fake-agent.js';

const GiB = 1024 ** 3;

/** What one simulated host says of itself, and where it wants to be (zone and labels are an operator's settings in Nimbus, set after registration). */
export interface SimHostSpec {
  name: string;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  zone: string;
  labels: Record<string, string>;
}

/** A simulated host being served: how a control plane registers it. */
export interface SimHost extends SimHostSpec {
  url: string;
  token: string;
}

export interface SimHostFleet {
  hosts: SimHost[];
  /** The directory holding the sockets. */
  dir: string;
  /** info() calls answered, all hosts together (the control planes' probes and refreshes). */
  infoCalls(): number;
  close(): Promise<void>;
}

/** The default fleet's shape: 32 CPUs, 128 GiB, 1 TiB each, zones z1..z4 round-robin, a disk label, and `hot` hosts labelled pool=hot. */
export function defaultSimSpecs(count: number, hot = 10): SimHostSpec[] {
  return Array.from({ length: count }, (_, i): SimHostSpec => ({
    name: `sim-${String(i).padStart(4, '0')}`,
    cpus: 32, memoryBytes: 128 * GiB, diskBytes: 1024 * GiB,
    zone: `z${(i % 4) + 1}`,
    labels: { simulated: 'true', disk: i % 3 === 0 ? 'ssd' : 'hdd', ...(i < hot ? { pool: 'hot' } : {}) },
  }));
}

/**
 * Serves each spec as a simulated host on a unix socket in a new temp dir (started `parallel`
 * at a time). close() stops every server and removes the dir; a failure part way closes what
 * was started.
 */
export async function startSimHosts(specs: readonly SimHostSpec[], parallel = 64): Promise<SimHostFleet> {
  const dir = mkdtempSync('/tmp/nimbus-simhosts-');
  const servers: AgentServer[] = [];
  const agents: FakeAgent[] = [];
  const hosts: SimHost[] = [];
  // a signal handler that exits at once (the PostgreSQL fixture's) never reaches close(): the sockets go with the process, the dir here
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  process.on('exit', removeDir);
  const close = async () => {
    await Promise.all(servers.map((s) => s.close().catch(() => undefined)));
    servers.length = 0;
    removeDir();
    process.off('exit', removeDir);
  };
  try {
    for (let i = 0; i < specs.length; i += parallel) {
      await Promise.all(specs.slice(i, i + parallel).map(async (spec) => {
        const agent = new FakeAgent({
          name: spec.name, hostname: `${spec.name}.simulated`, kernel: 'simulated', cpus: spec.cpus, memoryBytes: spec.memoryBytes, diskBytes: spec.diskBytes,
          architecture: 'amd64', runtimes: ['runc'],
        });
        const token = randomBytes(24).toString('hex');
        const server = await startAgentServer(agent, { token, socketPath: join(dir, `${spec.name}.sock`) });
        servers.push(server);
        agents.push(agent);
        hosts.push({ ...spec, url: server.url, token });
      }));
    }
  } catch (e) {
    await close();
    throw e;
  }
  hosts.sort((a, b) => (a.name < b.name ? -1 : 1));
  return { hosts, dir, infoCalls: () => agents.reduce((n, a) => n + a.calls('info').length, 0), close };
}
