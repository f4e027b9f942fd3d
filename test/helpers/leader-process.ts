/**
 * A contender for leadership in a process of its own, for tests that SIGKILL the leader:
 *   node dist/test/helpers/leader-process.js STORE_URL REPLICA_ID [TICK_MS]
 * Prints one JSON line per change, {"replica":…,"leader":true|false,"at":epochMs,"backendPid":n},
 * and {"ready":true} once its first try is made. Closes (stepping down) when stdin ends.
 */
import { PostgresLeadership } from '../../src/control/leader/leadership.js';

const [url, replicaId, tick] = process.argv.slice(2);
if (!url || !replicaId) {
  process.stderr.write('usage: leader-process STORE_URL REPLICA_ID [TICK_MS]\n');
  process.exit(2);
}
const leadership = new PostgresLeadership(url, replicaId, tick ? { tickMs: Number(tick) } : {});
const say = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
leadership.onChange((leader) => {
  say({ replica: replicaId, leader, at: Date.now(), backendPid: leadership.backendPid });
});
await leadership.start();
say({ ready: true, replica: replicaId });
process.stdin.resume();
process.stdin.on('end', () => {
  void leadership.close().then(() => process.exit(0));
});
