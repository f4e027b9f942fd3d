import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgument } from './errors.js';
import { MAX_PUBLISHED_PORTS, hostChoosesPort, hostPortOf, parsePublishSpec } from './port-ranges.js';

describe('-p with port ranges (Docker\'s nat.ParsePortSpec)', () => {
  test('single ports as before', () => {
    assert.deepEqual(parsePublishSpec('8080:80'), [{ protocol: 'tcp', hostPort: 8080, containerPort: 80 }]);
    assert.deepEqual(parsePublishSpec('80'), [{ protocol: 'tcp', hostPort: 0, containerPort: 80 }]);
    assert.deepEqual(parsePublishSpec('127.0.0.1::53/udp'), [{ protocol: 'udp', hostIp: '127.0.0.1', hostPort: 0, containerPort: 53 }]);
    assert.deepEqual(parsePublishSpec('0.0.0.0:8080:80'), [{ protocol: 'tcp', hostPort: 8080, containerPort: 80 }]);
  });

  test('equal ranges are mapped pairwise', () => {
    assert.deepEqual(parsePublishSpec('8000-8002:80-82'), [
      { protocol: 'tcp', hostPort: 8000, containerPort: 80 }, { protocol: 'tcp', hostPort: 8001, containerPort: 81 }, { protocol: 'tcp', hostPort: 8002, containerPort: 82 },
    ]);
    assert.deepEqual(parsePublishSpec('127.0.0.1:8000-8001:80-81/udp'), [
      { protocol: 'udp', hostIp: '127.0.0.1', hostPort: 8000, containerPort: 80 }, { protocol: 'udp', hostIp: '127.0.0.1', hostPort: 8001, containerPort: 81 },
    ]);
  });

  test('a host range beside one container port: one port of it, chosen by the host', () => {
    const [p, more] = parsePublishSpec('8000-8010:80');
    assert.deepEqual(p, { protocol: 'tcp', hostPort: 8000, hostPortEnd: 8010, containerPort: 80 });
    assert.equal(more, undefined);
    assert.equal(hostChoosesPort(p!), true);
    assert.deepEqual(hostPortOf('8000-8000'), { hostPort: 8000 }, 'a range of one is that port');
  });

  test('a container range alone: each port on a host port the host chooses', () => {
    assert.deepEqual(parsePublishSpec('80-82'), [80, 81, 82].map((containerPort) => ({ protocol: 'tcp', hostPort: 0, containerPort })));
    assert.deepEqual(parsePublishSpec('127.0.0.1::80-81').map((p) => [p.hostIp, p.hostPort, p.containerPort]), [['127.0.0.1', 0, 80], ['127.0.0.1', 0, 81]]);
  });

  test('refusals say why', () => {
    const refused: Array<[string, RegExp]> = [
      ['8000-8010:80-85', /the host and container ranges differ in length/],
      ['8000:80-81', /the host and container ranges differ in length/],
      ['90-80', /the range ends before it starts/],
      ['8000-70000:80', /ports are 1-65535/],
      ['0:80', /ports are 1-65535/],
      ['80-', /expected PORT or FIRST-LAST/],
      ['1-1000', new RegExp(`publishes 1000 ports; a container publishes at most ${MAX_PUBLISHED_PORTS} \\(each is a rule on its host`)],
      ['1000-1999:1-1000', /publishes 1000 ports/],
      ['80/sctp', /expected \[IP:\]/],
      ['::80', /expected \[IP:\]/],
    ];
    for (const [spec, message] of refused) assert.throws(() => parsePublishSpec(spec), (e: unknown) => e instanceof InvalidArgument && message.test(e.message), spec);
    assert.equal(parsePublishSpec(`1-${MAX_PUBLISHED_PORTS}`).length, MAX_PUBLISHED_PORTS, 'the cap itself is allowed');
  });
});
