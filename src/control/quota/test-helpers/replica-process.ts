/**
 * A second control-plane process on the same store (a SQLite file or a PostgreSQL URL), for
 * replicas.test.ts: opens the ledger (as replica REPLICA_ID when given), prints "ready", and on a
 * line from stdin admits containers c<from>…c<to-1> into project p concurrently, printing
 * "+ID" as each is admitted (so a test can kill it in the middle), then "result " and the ids it
 * admitted as one JSON line. Usage: node replica-process.js STORE FROM TO [REPLICA_ID]
 */
import { once } from 'node:events';
import { openStore } from '../../../store/open.js';
import { QuotaService } from '../quota-service.js';

const [where, from, to, replicaId] = process.argv.slice(2);
if (!where || from === undefined || to === undefined) throw new Error('usage: replica-process STORE FROM TO [REPLICA_ID]');
const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };
const store = await openStore(where);
const q = await QuotaService.open(store, replicaId ? { replicaId } : {});
process.stdout.write('ready\n');
await once(process.stdin, 'data'); // the parent starts its own admissions at the same moment
process.stdin.destroy();
const ids = Array.from({ length: Number(to) - Number(from) }, (_, i) => `c${Number(from) + i}`);
const results = await Promise.allSettled(ids.map((id) => q.admitContainer(id, 'p', cfg).then(() => process.stdout.write(`+${id}\n`))));
const failures = results.flatMap((r) => (r.status === 'rejected' && (r.reason as { code?: string }).code !== 'QuotaExceeded' ? [String(r.reason)] : []));
q.close();
await store.close();
process.stdout.write(`result ${JSON.stringify({ admitted: ids.filter((_, i) => results[i]!.status === 'fulfilled'), failures })}\n`);
