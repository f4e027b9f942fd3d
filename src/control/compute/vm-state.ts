/** The VM state machine as the control plane keeps it: named states and the only legal transitions. */
import { Conflict } from '../../core/errors.js';
import type { VmStatus } from '../../store/records.js';

const LEGAL: Record<VmStatus, readonly VmStatus[]> = {
  created: ['running', 'removing'],
  running: ['paused', 'saved', 'stopped', 'removing'],
  paused: ['running', 'saved', 'stopped', 'removing'],
  // a saved VM comes back by restore (→ running) only: its disk has moved on with the saved RAM
  saved: ['running', 'removing'],
  stopped: ['running', 'removing'],
  removing: [],
};

export function canTransition(from: VmStatus, to: VmStatus): boolean {
  return LEGAL[from].includes(to);
}

export function assertVmTransition(name: string, from: VmStatus, to: VmStatus, verb: string): void {
  if (!canTransition(from, to)) throw new Conflict(`cannot ${verb} VM ${name}: it is ${from}`, { status: from });
}

/** Running or paused: QEMU is alive. */
export const isLive = (s: VmStatus): boolean => s === 'running' || s === 'paused';
