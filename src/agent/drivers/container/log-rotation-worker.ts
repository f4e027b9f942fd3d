/**
 * The rotation worker (log-rotation.ts): watches each running container's directory and runs
 * rotateOnce after every change there. Its event loop does only this, so the daemon's own
 * work (a client reading 1 GB of logs, a burst of creates) does not delay a rotation.
 */
import { readlinkSync, watch, type FSWatcher } from 'node:fs';
import { setPriority } from 'node:os';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { rotateOnce } from './container-logs.js';
import type { RotationMessage } from './log-rotation.js';

const port = parentPort;
if (!port) throw new Error('log-rotation-worker runs as a worker thread');

// Scheduled ahead of the containers it rotates for: a pass lagging two generations behind a fast
// writer loses one (container-logs.ts), and on a loaded host (2 cores, load 3) a worker at the
// default priority, even at nice -10, lagged that far in 3 runs of 5 with 256 KiB files; as a
// real-time thread (SCHED_FIFO 10) in none of 5. Its work per event is a few syscalls, so it
// cannot hog a CPU (and the kernel's RT throttling bounds it anyway). Without the privilege: nice -10, or nothing.
// What it got is told once ('ready'): a pass that lags on a loaded host loses log lines, and a
// fallback the log does not mention was the first thing a lossy CI run could not tell.
let priority = 'default';
try {
  const tid = String(Number(readlinkSync('/proc/thread-self').split('/').pop()));
  if (spawnSync('chrt', ['-f', '-p', '10', tid], { stdio: 'ignore' }).status === 0) priority = 'SCHED_FIFO 10';
  else {
    setPriority(Number(tid), -10);
    priority = 'nice -10 (chrt refused real-time)';
  }
} catch (e) {
  priority = `default (${(e as NodeJS.ErrnoException).code ?? String(e)})`;
}

const watched = new Map<string, { logPath: string; maxFiles: number; watcher: FSWatcher | undefined }>();

function pass(id: string): void {
  const w = watched.get(id);
  if (!w) return;
  try {
    rotateOnce(w.logPath, w.maxFiles);
  } catch (e) {
    port!.postMessage({ id, error: (e as NodeJS.ErrnoException).code ?? String(e) });
  }
}

function stop(id: string): void {
  watched.get(id)?.watcher?.close();
  watched.delete(id);
}

port.on('message', (m: RotationMessage) => {
  switch (m.op) {
    case 'start': {
      stop(m.id);
      const base = path.basename(m.logPath);
      let watcher: FSWatcher | undefined;
      try {
        // renames and creations only: every write of conmon's is a 'change' here too
        watcher = watch(path.dirname(m.logPath), { persistent: false }, (event, name) => {
          if (event === 'rename' && typeof name === 'string' && name.startsWith(base)) pass(m.id);
        });
        watcher.on('error', () => undefined);
      } catch (e) {
        port.postMessage({ id: m.id, error: `cannot watch: ${String(e)}` });
      }
      watched.set(m.id, { logPath: m.logPath, maxFiles: m.maxFiles, watcher });
      pass(m.id);
      break;
    }
    case 'maxFiles': {
      const w = watched.get(m.id);
      if (w) w.maxFiles = m.maxFiles;
      pass(m.id);
      break;
    }
    case 'finish':
      pass(m.id); // conmon has gone: the last rotation's pruning
      stop(m.id);
      break;
    case 'stop':
      stop(m.id);
      break;
  }
});

port.postMessage({ ready: true, priority });
