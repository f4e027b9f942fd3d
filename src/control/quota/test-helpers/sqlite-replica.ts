/**
 * A second process on the same SQLite file, for replicas.test.ts: opens the ledger, prints "ready",
 * and on a line from stdin admits containers c<from>…c<to-1> into project p concurrently, then
 * prints the ids it admitted as one JSON line. Usage: node sqlite-replica.js FILE FROM TO
 */
import { once } from 'node:events';
import { openStore } from '../../../store/open.js';
import { QuotaService } from '../quota-service.js';

const [file, from, to] = process.argv.slice(2);
if (!file || from === undefined || to === undefined) throw new Error('usage: sqlite-replica FILE FROM TO');
const cfg = { image: 'busybox', env: [], restart: { name: 'no' as const }, autoRemove: false, labels: {} };
const store = await openStore(file);
const q = await QuotaService.open(store);
process.stdout.write('ready\n');
await once(process.stdin, 'data'); // the parent starts its own admissions at the same moment
process.stdin.destroy();
const ids = Array.from({ length: Number(to) - Number(from) }, (_, i) => `c${Number(from) + i}`);
const results = await Promise.allSettled(ids.map((id) => q.admitContainer(id, 'p', cfg)));
const failures = results.flatMap((r) => (r.status === 'rejected' && (r.reason as { code?: string }).code !== 'QuotaExceeded' ? [String(r.reason)] : []));
q.close();
await store.close();
process.stdout.write(`${JSON.stringify({ admitted: ids.filter((_, i) => results[i]!.status === 'fulfilled'), failures })}\n`);
