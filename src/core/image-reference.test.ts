import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isLoopbackHost } from './hostname.js';
import { parseReference } from './image-reference.js';

test('references normalise like Docker', () => {
  const cases: [string, string, string][] = [
    ['busybox', 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['busybox:1.36', 'docker.io/library/busybox:1.36', 'busybox:1.36'],
    ['user/app', 'docker.io/user/app:latest', 'user/app:latest'],
    ['localhost:5000/a/b:tag', 'localhost:5000/a/b:tag', 'localhost:5000/a/b:tag'],
    ['127.0.0.1:5000/x@sha256:' + 'a'.repeat(64), '127.0.0.1:5000/x@sha256:' + 'a'.repeat(64), '127.0.0.1:5000/x@sha256:' + 'a'.repeat(64)],
    ['docker.io/library/busybox', 'docker.io/library/busybox:latest', 'busybox:latest'],
    ['quay.io/org/img:v1@sha256:' + 'b'.repeat(64), 'quay.io/org/img:v1@sha256:' + 'b'.repeat(64), 'quay.io/org/img:v1@sha256:' + 'b'.repeat(64)],
  ];
  for (const [input, full, familiar] of cases) {
    const r = parseReference(input);
    assert.equal(r.toString(), full, input);
    assert.equal(r.familiar(), familiar, input);
  }
  assert.equal(parseReference('localhost:5000/a').registry, 'localhost:5000');
  assert.equal(parseReference('localhost:5000/a').repository, 'a');
  assert.equal(parseReference('x@sha256:' + 'c'.repeat(64)).tag, undefined);
});

test('bad references are InvalidArgument with the reason', () => {
  for (const bad of ['', 'UPPER/case', 'a:b:c', 'x@sha256:short', 'a//b', 'a:' + 't'.repeat(200), '-lead']) {
    assert.throws(() => parseReference(bad), { code: 'InvalidArgument' }, bad);
  }
});

test('loopback registries', () => {
  assert.ok(isLoopbackHost('127.0.0.1:5000'));
  assert.ok(isLoopbackHost('localhost:5000'));
  assert.ok(isLoopbackHost('[::1]:5000'));
  assert.ok(!isLoopbackHost('10.0.0.1:5000'));
  assert.ok(!isLoopbackHost('registry.example.com'));
});
