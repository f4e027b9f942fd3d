/** The container state machine: named states and the only legal transitions. */
import { Conflict } from '../../core/errors.js';
import type { ContainerStatus } from '../../store/records.js';

const LEGAL: Record<ContainerStatus, readonly ContainerStatus[]> = {
  created: ['running', 'exited', 'removing'],
  running: ['paused', 'exited', 'restarting', 'removing'],
  paused: ['running', 'exited', 'removing'],
  restarting: ['running', 'exited', 'removing'],
  exited: ['running', 'restarting', 'removing'],
  removing: ['dead'],
  dead: ['removing'],
};

export function canTransition(from: ContainerStatus, to: ContainerStatus): boolean {
  return from === to || LEGAL[from].includes(to);
}

export function assertTransition(name: string, from: ContainerStatus, to: ContainerStatus, verb: string): void {
  if (!canTransition(from, to)) {
    throw new Conflict(`cannot ${verb} container ${name}: it is ${from}`, { status: from });
  }
}
