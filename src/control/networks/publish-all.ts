/**
 * `-P` (publish all): the ports an image exposes, each published on a host port its host chooses
 * (hostPort 0), unless the request publishes that container port already. Pure.
 */
import type { PortSpec } from '../../store/records.js';

/** Docker's ExposedPorts keys ("80/tcp", "53/udp", "8080") added to `ports` with hostPort 0; other protocols are passed over. */
export function withExposedPorts(ports: readonly PortSpec[] | undefined, exposed: readonly string[]): PortSpec[] {
  const out = [...(ports ?? [])];
  for (const key of exposed) {
    const m = /^(\d{1,5})(?:\/(tcp|udp|sctp))?$/.exec(key);
    if (!m || m[2] === 'sctp') continue; // an image's odd entry is not worth failing its run
    const containerPort = Number(m[1]);
    const protocol = (m[2] ?? 'tcp') as 'tcp' | 'udp';
    if (containerPort < 1 || containerPort > 65535) continue;
    if (out.some((p) => p.containerPort === containerPort && p.protocol === protocol)) continue;
    out.push({ protocol, hostPort: 0, containerPort });
  }
  return out;
}
