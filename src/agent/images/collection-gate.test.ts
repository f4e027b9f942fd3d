import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CollectionGate } from './collection-gate.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('CollectionGate', () => {
  it('a collection does nothing while work is in flight, and runs once it has left', async () => {
    const gate = new CollectionGate();
    const leave = await gate.enter();
    let ran = 0;
    assert.equal(await gate.collect(async () => ++ran), undefined);
    leave();
    leave(); // a second call changes nothing
    assert.equal(gate.inFlight, 0);
    assert.equal(await gate.collect(async () => ++ran), 1);
  });

  it('work that arrives during a collection waits for its end', async () => {
    const gate = new CollectionGate();
    let release!: () => void;
    const order: string[] = [];
    const collecting = gate.collect(() => new Promise<void>((r) => (release = r)).then(() => void order.push('collected')));
    await tick();
    const work = gate.enter().then((leave) => {
      order.push('work entered');
      leave();
    });
    await tick();
    assert.deepEqual(order, [], 'the work waits');
    assert.equal(gate.inFlight, 0);
    release();
    await Promise.all([collecting, work]);
    assert.deepEqual(order, ['collected', 'work entered']);
  });

  it('a second collection waits for the first, then runs on its own', async () => {
    const gate = new CollectionGate();
    let release!: () => void;
    let running = 0, most = 0;
    const body = async (wait?: Promise<void>) => {
      running++;
      most = Math.max(most, running);
      await wait;
      running--;
      return 'done';
    };
    const first = gate.collect(() => body(new Promise<void>((r) => (release = r))));
    await tick();
    const second = gate.collect(() => body());
    await tick();
    release();
    assert.deepEqual(await Promise.all([first, second]), ['done', 'done']);
    assert.equal(most, 1, 'never two at once');
  });

  it('a collection that fails lets work in afterwards', async () => {
    const gate = new CollectionGate();
    await assert.rejects(gate.collect(async () => {
      throw new Error('disk');
    }), /disk/);
    const leave = await gate.enter();
    assert.equal(gate.inFlight, 1);
    leave();
  });
});
