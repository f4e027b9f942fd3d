// The CLI's block volume options: what `volume create` and `vm create|run` send, and their usage errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../args.js';
import { volumeTypeBody } from './volumes.js';
import { vmCreateBody } from './vms.js';
import { resolveCommand } from '../cli.js';

test('volume create: --type block, --shared and --snapshot (or --from-snapshot) make a block volume; mix-ups are usage errors', () => {
  assert.deepEqual(volumeTypeBody({}), {});
  assert.deepEqual(volumeTypeBody({ type: 'filesystem' }), { type: 'filesystem' });
  assert.deepEqual(volumeTypeBody({ type: 'block' }), { type: 'block' });
  assert.deepEqual(volumeTypeBody({ shared: true }), { type: 'block', shared: true });
  assert.deepEqual(volumeTypeBody({ snapshot: 'nightly' }), { type: 'block', fromSnapshot: 'nightly' });
  assert.deepEqual(volumeTypeBody({ 'from-snapshot': 'nightly' }), { type: 'block', fromSnapshot: 'nightly' });
  assert.throws(() => volumeTypeBody({ snapshot: 'a', 'from-snapshot': 'b' }), UsageError);
  assert.throws(() => volumeTypeBody({ type: 'filesystem', shared: true }), UsageError);
  assert.throws(() => volumeTypeBody({ shared: true, snapshot: 'a' }), /cannot be cloned/);
});

test('vm create --boot-volume: a boot source of its own, exclusive with --image and --disk', () => {
  assert.deepEqual(vmCreateBody({ 'boot-volume': 'root' }, ['web']), { name: 'web', bootVolume: 'root' });
  assert.throws(() => vmCreateBody({ 'boot-volume': 'root', image: 'debian' }, []), /give one/);
  assert.throws(() => vmCreateBody({}, []), /--boot-volume/);
});

test('the commands resolve: volume snapshot [create|ls|inspect|rm], vm attach-volume, vm detach-volume', () => {
  assert.equal(resolveCommand(['volume', 'snapshot', 'create', 'v', 's'])?.spec.name, 'volume snapshot create');
  assert.equal(resolveCommand(['volume', 'snapshot', 'v', 's'])?.spec.name, 'volume snapshot');
  assert.equal(resolveCommand(['volume', 'snapshot', 'ls'])?.spec.name, 'volume snapshot ls');
  assert.equal(resolveCommand(['volume', 'snapshot', 'rm', 's'])?.spec.name, 'volume snapshot rm');
  assert.equal(resolveCommand(['vm', 'attach-volume', 'vm', 'v'])?.spec.name, 'vm attach-volume');
  assert.equal(resolveCommand(['vm', 'detach-volume', 'vm', 'v'])?.spec.name, 'vm detach-volume');
});
