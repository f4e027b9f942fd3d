/**
 * What a live move (`nimbus move --live`, CRIU) refuses, and why (docs/overlay.md, "Moving
 * containers"). On top of what any move refuses (moveRefusal: paused, secure, host network,
 * shared namespaces, bind mounts, shared volumes): the container itself (running, runc, no
 * terminal or stdin) and both hosts (agents of protocol 9 with a CRIU that passes `criu check`).
 * What CRIU itself refuses at the checkpoint (established TCP connections, a unix socket connected
 * outside the container) comes back from the source's agent as a Conflict, the container left
 * running there.
 */
import { Conflict, type NimbusError } from '../../core/errors.js';
import type { Agent, AgentInfo } from '../../agent/agent.js';
import { LIVE_MOVE_PROTOCOL, spokenProtocol, tooOldFor } from '../../agent/remote/agent-protocol.js';
import type { ContainerRecord } from '../../store/records.js';

/** What a live move of this container refuses on its own account; undefined when it may move live. */
export function liveMoveRefusal(c: ContainerRecord): NimbusError | undefined {
  if (c.status !== 'running') return new Conflict(`container ${c.name} is ${c.status}: only a running container moves live (its processes are carried); move it without --live`, { reason: 'not-running' });
  const runtime = c.runtime || c.config.runtime;
  if (runtime !== 'runc') {
    return new Conflict(`container ${c.name} runs on ${runtime ?? 'an unknown runtime'}: only runc containers move live (Debian builds crun without CRIU); create it with --runtime runc, or move it without --live`, { reason: 'runtime', runtime });
  }
  if (c.config.tty || c.config.openStdin) {
    return new Conflict(`container ${c.name} has ${c.config.tty ? 'a terminal (-t)' : 'an open stdin (-i)'}: its monitor's end cannot be carried by a checkpoint; move it without --live`, { reason: 'stdio' });
  }
  return undefined;
}

/** Why a host cannot take part in a live move (protocol, CRIU), from its info and protocol version; undefined when it can. */
export function liveHostRefusal(host: string, version: number | undefined, info: Pick<AgentInfo, 'liveMove'>): NimbusError | undefined {
  if (version !== undefined && version < LIVE_MOVE_PROTOCOL) return tooOldFor('checkpointContainer', version, host);
  const live = info.liveMove;
  if (!live) return new Conflict(`host ${host} does not say whether it can checkpoint containers (an agent older than protocol ${LIVE_MOVE_PROTOCOL}); upgrade it, or move without --live`, { host, reason: 'criu' });
  if (!live.usable) return new Conflict(`host ${host} cannot move containers live: ${live.reason ?? 'no working criu'}; move without --live`, { host, reason: 'criu' });
  return undefined;
}

/** Both hosts checked, the source first (each refusal names its host). */
export async function checkLiveHosts(hosts: Array<{ name: string; agent: Agent }>): Promise<void> {
  for (const { name, agent } of hosts) {
    const version = await spokenProtocol(agent);
    const refusal = liveHostRefusal(name, version, await agent.info());
    if (refusal) throw refusal;
  }
}
