/**
 * The python3 the agent's small helpers run on (descriptor passing, the jailer, inotify with a
 * mask): the system's, since a version manager's shim on PATH costs ~100 ms a run here; else
 * PATH's. Helpers run as `python3 -I -S -c PROGRAM`: no environment, user directory or site
 * packages (10 ms, nothing else imported).
 */
import { existsSync } from 'node:fs';

let pythonPath: string | undefined;
export const python3 = (): string => (pythonPath ??= existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');
