import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { FifoStock } from './fifo-stock.js';

describe('FifoStock', () => {
  const base = mkdtempSync(path.join(tmpdir(), 'nimbus-fifos-'));
  after(() => rmSync(base, { recursive: true, force: true }));

  it('places fresh FIFOs with the mode asked for, a batch per mkfifo, and removes its stock when cleared', async () => {
    const stockDir = path.join(base, 'stock');
    mkdirSync(stockDir);
    writeFileSync(path.join(stockDir, 'stale'), ''); // what a killed daemon left
    const stock = new FifoStock(stockDir, '0644');
    assert.equal(existsSync(stockDir), false, 'a stale stock is removed');
    const dests = Array.from({ length: 40 }, (_, i) => path.join(base, `go${i}`));
    await Promise.all(dests.map((d) => stock.place(d)));
    for (const d of dests) {
      const st = statSync(d);
      assert.ok(st.isFIFO(), `${d} is a FIFO`);
      assert.equal(st.mode & 0o777, 0o644);
    }
    assert.equal(readdirSync(stockDir).length, 8, '3 batches of 16 made, 40 placed');
    stock.clear();
    assert.equal(existsSync(stockDir), false);
    await stock.place(path.join(base, 'after-clear'));
    assert.ok(statSync(path.join(base, 'after-clear')).isFIFO());
    stock.clear();
  });

  it("makes more when another driver removed the stock, and fails for a destination that cannot be", async () => {
    const stockDir = path.join(base, 'stock2');
    const stock = new FifoStock(stockDir);
    await stock.place(path.join(base, 'first'));
    new FifoStock(stockDir); // a second driver on the same state dir removes the stock
    await stock.place(path.join(base, 'second'));
    assert.ok(statSync(path.join(base, 'second')).isFIFO());
    await assert.rejects(stock.place(path.join(base, 'no-such-dir', 'go')), /ENOENT/);
    stock.clear();
  });
});
