import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MuxParser, resizeMessage } from './conmon-attach.js';
import { conmonArgs } from './conmon.js';

const frameOf = (stream: number, text: string) => {
  const h = Buffer.alloc(8);
  h[0] = stream;
  h.writeUInt32BE(Buffer.byteLength(text), 4);
  return Buffer.concat([h, Buffer.from(text)]);
};

test('the bridge\'s frames come out whole however the pipe cuts them', () => {
  const wire = Buffer.concat([frameOf(0, ''), frameOf(1, 'hello\n'), frameOf(2, 'oops'), frameOf(1, '')]);
  for (let cut = 1; cut < wire.length; cut++) {
    const p = new MuxParser();
    const frames = [...p.push(wire.subarray(0, cut)), ...p.push(wire.subarray(cut))];
    assert.deepEqual(frames.map((f) => [f.stream, f.data.toString()]), [[0, ''], [1, 'hello\n'], [2, 'oops'], [1, '']], `cut at ${cut}`);
    assert.equal(p.buffered, 0);
  }
  const p = new MuxParser();
  assert.deepEqual(p.push(frameOf(1, 'abc').subarray(0, 9)), []);
  assert.equal(p.buffered, 9, 'an incomplete frame is held');
});

test('a stream that is not the framing is refused, not read as sizes', () => {
  assert.throws(() => new MuxParser().push(Buffer.from('HTTP/1.1 200 OK\r\n')), /not a multiplexed stream/);
  const huge = Buffer.alloc(8);
  huge[0] = 1;
  huge.writeUInt32BE(0xffffffff, 4);
  assert.throws(() => new MuxParser().push(huge), /not a multiplexed stream/);
});

test('a resize is one padded winsz line; -t, -i and --leave-stdin-open on conmon\'s command line', () => {
  const m = resizeMessage(40, 120);
  assert.equal(m.length, 199, 'one of conmon\'s reads exactly: two resizes never share one (conmon 2.1.6 applies a read\'s first line only)');
  assert.match(m, /^ +40 120\n$/);
  const base = { conmonPath: 'conmon', id: 'c', name: 'n', runtimePath: 'runc', runtimeArgs: [], bundle: 'b', containerPidFile: 'p', conmonPidFile: 'P', logPath: 'l', exitDir: 'e', socketDir: 's' };
  const plain = conmonArgs(base);
  assert.ok(!plain.includes('--terminal') && !plain.includes('--stdin'));
  const once = conmonArgs({ ...base, terminal: true, stdin: 'once' });
  assert.ok(once.includes('--terminal') && once.includes('--stdin') && !once.includes('--leave-stdin-open'));
  assert.ok(conmonArgs({ ...base, stdin: 'open' }).includes('--leave-stdin-open'));
});
