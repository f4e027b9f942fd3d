import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dockerfileImages, expandArgs, remoteAddSources, runWithFlags } from './dockerfile.js';

test('the images a Dockerfile names: FROM (ARGs and build args expanded), COPY --from an image; not scratch, not stages', () => {
  const text = [
    '# syntax comment',
    'ARG BASE=busybox',
    'ARG TAG',
    'FROM ${BASE}:${TAG:-1.36} AS build',
    'RUN echo \\',
    '  FROM not-an-image',
    'FROM scratch AS empty',
    'FROM build',
    'COPY --from=build /a /a',
    'COPY --from=0 /b /b',
    'COPY --from=registry.example:5000/tools:2 /bin/tool /bin/tool',
    'from alpine as Final',
  ].join('\n');
  assert.deepEqual(dockerfileImages(text), { images: ['busybox:1.36', 'registry.example:5000/tools:2', 'alpine'], stages: ['build', 'empty', 'final'] });
  assert.deepEqual(dockerfileImages(text, { BASE: 'debian', TAG: '12' }).images[0], 'debian:12');
  assert.throws(() => dockerfileImages('RUN true\n'), /no FROM/);
  assert.throws(() => dockerfileImages('FROM a b c d\n'), /expected FROM image/);
  assert.throws(() => dockerfileImages('FROM --platform=linux/arm64 busybox\n'), /linux\/amd64 images only/);
  assert.throws(() => dockerfileImages('FROM x\n'.repeat(1) + Array.from({ length: 20 }, (_, i) => `FROM img${i}`).join('\n')), /more than 16 images/);
});

test('expandArgs: $X, ${X}, ${X:-d}, ${X:+a}; unset is empty', () => {
  const v = new Map([['A', 'a'], ['E', '']]);
  assert.equal(expandArgs('$A-${A}-${B:-d}-${A:+alt}-${E:-e}-$B.', v), 'a-a-d-alt-e-.');
});

test('remote ADD sources are found, through ARG and ENV', () => {
  assert.deepEqual(remoteAddSources('FROM x\nADD ctx.tar /\nCOPY http://no /\n'), []);
  assert.deepEqual(remoteAddSources('FROM x\nADD https://example.com/a.tgz /a\n'), ['https://example.com/a.tgz']);
  assert.deepEqual(remoteAddSources('FROM x\nARG U=http://10.0.0.1/\nADD ["$U", "/x"]\n'), ['http://10.0.0.1/']);
  assert.deepEqual(remoteAddSources('FROM x\nENV G=git@github.com:a/b\nADD --chown=1 $G /src\n'), ['git@github.com:a/b']);
  assert.deepEqual(remoteAddSources('FROM x\nARG U\nADD $U /x\n', { U: 'http://169.254.169.254/' }), ['http://169.254.169.254/']);
});

test('lines are joined as buildah joins them: nothing put between a line and its continuation, comments in it dropped, the escape directive honoured', () => {
  assert.deepEqual(remoteAddSources('FROM x\nADD http:/\\\n/10.0.0.1/a /a\n'), ['http://10.0.0.1/a']);
  assert.deepEqual(remoteAddSources('FROM x\nADD http:/\\ \t\r\n# a comment\n\n/10.0.0.1/a /a\n'), ['http://10.0.0.1/a']);
  assert.deepEqual(remoteAddSources('  # escape=`\nFROM x\nADD http:/`\n/10.0.0.1/a /a\n'), ['http://10.0.0.1/a']);
  // a directive only opens the file: later, it is a comment and `\` stays the mark
  assert.deepEqual(remoteAddSources('FROM x\n# escape=`\nADD http:/\\\n/10.0.0.1/a /a\n'), ['http://10.0.0.1/a']);
});

test('RUN flags (buildah takes --mount) are found however spelt, ONBUILD triggers included; a RUN merely mentioning one is not', () => {
  assert.deepEqual(runWithFlags('FROM x\nRUN echo --mount=x\nRUN ["--mount=x", "y"]\nRUN \\\n  # --mount=a\n  true\nCOPY --from=a /a /a\n'), []);
  for (const text of [
    'FROM x\nRUN --mount=type=cache,target=/c true\n',
    'FROM x\nrun \t --mount=a b\n',
    'FROM x\nRUN --mo\\\nunt=a b\n',
    'FROM x\nRUN \\\n# c\n--mount=a b\n',
    '# escape=`\nFROM x\nRUN `\n  --mount=a b\n',
    'FROM x\nRUN \xA0--mount=a b\n', // Go's flag parser takes the byte 0xA0 (latin1 here) for a space
    'FROM x\n\xC2\xA0RUN --mount=a b\n', // a UTF-8 no-break space before the keyword is trimmed
    'FROM x\nRUN --$M b\n', // expanded by buildah after parsing
    'FROM x\nONBUILD RUN --mount=a b\n',
    'FROM x\nONBUILD --x RUN true\n',
  ]) assert.equal(runWithFlags(text).length, 1, JSON.stringify(text));
});
