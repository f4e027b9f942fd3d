/**
 * The rotation worker (log-rotation.ts): watches each running container's directory for the
 * names conmon's rotations make (log-dir-events.ts) and runs rotateOnce after each. Its event loop does only this, so the daemon's own
 * work (a client reading 1 GB of logs, a burst of creates) does not delay a rotation.
 */
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { rotateOnce } from './container-logs.js';
import { LogDirEvents } from './log-dir-events.js';
import type { RotationMessage } from './log-rotation.js';

const port = parentPort;
if (!port) throw new Error('log-rotation-worker runs as a worker thread');

// Scheduled ahead of the containers it rotates for: a pass lagging two generations behind a fast
// writer loses one (container-logs.ts), and on a loaded host (2 cores, load 3) a worker at the
// default priority, even at nice -10, lagged that far in 3 runs of 5 with 256 KiB files; as a
// real-time thread (SCHED_FIFO 10) in none of 5. It wakes once per rotation (not per write:
// log-dir-events.ts) for a few syscalls, so it cannot hog a CPU (RT throttling bounds it anyway). Without the privilege: nice -10, or nothing.
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

const watched = new Map<string, { logPath: string; maxFiles: number }>();

function pass(id: string): void {
  const w = watched.get(id);
  if (!w) return;
  try {
    rotateOnce(w.logPath, w.maxFiles);
  } catch (e) {
    port!.postMessage({ id, error: (e as NodeJS.ErrnoException).code ?? String(e) });
  }
}

const events = new LogDirEvents({
  changed: pass,
  failed: (id, why) => port.postMessage({ id, error: `cannot watch: ${why}` }),
  degraded: (why) => port.postMessage({ degraded: why }),
});

function stop(id: string): void {
  events.remove(id);
  watched.delete(id);
}

port.on('message', (m: RotationMessage) => {
  switch (m.op) {
    case 'start': {
      stop(m.id);
      watched.set(m.id, { logPath: m.logPath, maxFiles: m.maxFiles });
      // conmon's creations and its renames over the log (events say again once the watch is in place)
      events.add(m.id, path.dirname(m.logPath), path.basename(m.logPath), { prepareNext: true });
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
    case 'close':
      // the helper reaped before this thread ends (a thread terminated first leaves it a zombie)
      void events.close().then(() => process.exit(0));
      break;
  }
});

// ready once the helper watches: the agent starts no conmon before (log-rotation.ts ready())
void events.ready().then(() => port.postMessage({ ready: true, priority }));
