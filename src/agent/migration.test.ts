// migrateLive, the five steps of a live migration driven from outside its two sides, with stand-in
// sides: the stream token goes to the source only when the destination said it checks it (an
// older destination would hand the token's bytes to QEMU as the start of the stream), and a
// failure while sending abandons the destination and lets the guest go on at the source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { IncomingMigrationTarget, MigrateOutOptions, OutgoingMigration, VmMigrationSpec } from './agent.js';
import { migrateLive } from './migration.js';

const TOKEN = 'ab'.repeat(32);
const spec: VmMigrationSpec = { id: 'vm-1', name: 'v', createdAt: '2026-12-07T00:00:00.000Z', config: {}, streamToken: TOKEN };
const sent: OutgoingMigration = { stoppedAt: 1_000, qemuDowntimeMs: 5, totalMs: 100, bytes: 1 << 20, iterations: 2, diskBytes: 0, tls: true, consoleHistory: '' };

function sides(target: IncomingMigrationTarget, fail?: Error) {
  const calls: string[] = [];
  let options: MigrateOutOptions | undefined;
  return {
    calls,
    options: () => options,
    source: {
      spec: async () => spec,
      send: async (_uri: string, o: MigrateOutOptions) => {
        calls.push('send');
        options = o;
        if (fail) throw fail;
        return sent;
      },
      end: async (outcome: 'moved' | 'resume') => void calls.push(`end ${outcome}`),
    },
    destination: {
      prepare: async (s: VmMigrationSpec) => {
        calls.push(`prepare ${s.streamToken ?? 'no token'}`);
        return target;
      },
      finish: async () => {
        calls.push('finish');
        return { resumedAt: 1_010 };
      },
      abandon: async () => void calls.push('abandon'),
    },
  };
}

test('the source sends the stream token only to a destination that says it checks it', async () => {
  const checking = sides({ uri: 'tcp:10.0.0.2:4444', tls: 'migration.b.1', checksStreamToken: true });
  const { report } = await migrateLive('vm-1', checking.source, checking.destination);
  assert.equal(checking.options()?.streamToken, TOKEN);
  assert.equal(checking.options()?.tls, 'migration.b.1');
  assert.deepEqual(checking.calls, [`prepare ${TOKEN}`, 'send', 'finish', 'end moved']);
  assert.equal(report.downtimeMs, 10);

  // a destination of protocol 13 answers no checksStreamToken: the token stays with the source
  const older = sides({ uri: 'tcp:10.0.0.2:4444' });
  await migrateLive('vm-1', older.source, older.destination);
  assert.equal(older.options()?.streamToken, undefined);
  assert.ok(!('streamToken' in older.options()!), 'not even as undefined');
});

test('a failed send abandons the destination and resumes the guest at the source', async () => {
  const failing = sides({ uri: 'tcp:10.0.0.2:4444', checksStreamToken: true }, new Error("'10.0.0.2:4444' did not accept this migration's token"));
  await assert.rejects(migrateLive('vm-1', failing.source, failing.destination), /did not accept/);
  assert.deepEqual(failing.calls, [`prepare ${TOKEN}`, 'send', 'abandon', 'end resume']);
});
