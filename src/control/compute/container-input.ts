/**
 * Checks on a container request's fields that are not its process (process-spec.ts has those),
 * made by the service whatever the API schema already refused: every caller, not only HTTP, and
 * nothing invalid reaches the agent or the runtime.
 */
import { InvalidArgument } from '../../core/errors.js';
import { isHostname } from '../../core/hostname.js';
import { MAX_MEMORY_BYTES, MAX_PIDS_LIMIT, MAX_STOP_TIMEOUT_SEC, MAX_STORAGE_BYTES, MIN_STORAGE_BYTES } from '../../core/limits.js';
import { ipToInt } from '../../agent/network/network-driver.js';
import { assertPublishCount } from '../../core/port-ranges.js';
import type { PortSpec } from '../../store/records.js';

/** A graceful stop's timeout in seconds: 0 to MAX_STOP_TIMEOUT_SEC (a longer one would hold the container's lifecycle lock as long). */
export function checkStopTimeout(sec: number, field = 'timeout'): void {
  if (!Number.isFinite(sec) || sec < 0 || sec > MAX_STOP_TIMEOUT_SEC) {
    throw new InvalidArgument(`${field} must be 0 to ${MAX_STOP_TIMEOUT_SEC} seconds, got ${String(sec)}`, { field, max: MAX_STOP_TIMEOUT_SEC });
  }
}

/** RFC 1123 host name, within the 64 bytes of a UTS name (it is written into /etc/hosts too: no spaces, newlines, slashes). */
export function checkHostname(h: string): void {
  if (!isHostname(h, 63)) {
    throw new InvalidArgument(`hostname ${JSON.stringify(h.slice(0, 80))} is not a valid host name (RFC 1123: letters, digits, '-', dots between labels; at most 63 characters)`, { field: 'hostname' });
  }
}

/** A dotted IPv4 address, as the network layer parses it; the error names the field. */
export function checkIpv4(ip: string, field = 'ip'): void {
  try {
    ipToInt(ip);
  } catch {
    throw new InvalidArgument(`${field} ${JSON.stringify(ip.slice(0, 80))} is not an IPv4 address`, { field });
  }
}

/** Resource limits within their documented ranges (runc fails, or the quota overflows, past them). */
export function checkResources(r: { memoryBytes?: number; pidsLimit?: number; cpus?: number; storageBytes?: number }): void {
  if (r.pidsLimit !== undefined && !(Number.isInteger(r.pidsLimit) && r.pidsLimit >= 1 && r.pidsLimit <= MAX_PIDS_LIMIT)) {
    throw new InvalidArgument(`pidsLimit must be a whole number from 1 to ${MAX_PIDS_LIMIT}, got ${String(r.pidsLimit)}`, { field: 'pidsLimit' });
  }
  if (r.memoryBytes !== undefined && !(Number.isInteger(r.memoryBytes) && r.memoryBytes <= MAX_MEMORY_BYTES)) {
    throw new InvalidArgument(`memoryBytes must be a whole number of bytes up to ${MAX_MEMORY_BYTES}, got ${String(r.memoryBytes)}`, { field: 'memoryBytes' });
  }
  if (r.cpus !== undefined && !(Number.isFinite(r.cpus) && r.cpus > 0)) {
    throw new InvalidArgument(`cpus must be more than 0, got ${String(r.cpus)}`, { field: 'cpus' });
  }
  if (r.storageBytes !== undefined && !(Number.isInteger(r.storageBytes) && r.storageBytes >= MIN_STORAGE_BYTES && r.storageBytes <= MAX_STORAGE_BYTES)) {
    throw new InvalidArgument(`a writable layer's size (storage) must be from 16 MiB to 16 TiB, got ${String(r.storageBytes)} bytes`, { field: 'storageBytes' });
  }
}

/** Published ports: a host range (hostPortEnd) starts at a port and does not end before it; MAX_PUBLISHED_PORTS at most. */
export function checkPorts(ports: readonly PortSpec[] | undefined): void {
  assertPublishCount(ports?.length ?? 0, 'the request');
  for (const p of ports ?? []) {
    if (p.hostPortEnd === undefined) continue;
    if (p.hostPort < 1 || p.hostPortEnd < p.hostPort || p.hostPortEnd > 65535) {
      throw new InvalidArgument(`host port range ${p.hostPort}-${p.hostPortEnd} is not a range of ports 1-65535`, { field: 'ports' });
    }
  }
}
