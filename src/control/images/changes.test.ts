/** `--change` lines (changes.ts): what each instruction does to an image config, and what is refused. */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { hasCode } from '../../core/errors.js';
import { applyChanges, parseChanges, splitWords, type RuntimeConfig } from './changes.js';

const apply = (base: RuntimeConfig, ...lines: string[]) => applyChanges(base, parseChanges(lines));
const refused = (lines: string[], re: RegExp) => assert.throws(() => apply({}, ...lines), (e: unknown) => hasCode(e, 'InvalidArgument') && re.test(String((e as Error).message)));

describe('--change parsing', () => {
  test('CMD and ENTRYPOINT: JSON form as given, shell form through /bin/sh -c', () => {
    assert.deepEqual(apply({}, 'CMD ["cat", "/a b"]').Cmd, ['cat', '/a b']);
    assert.deepEqual(apply({}, 'cmd echo $HOME && ls').Cmd, ['/bin/sh', '-c', 'echo $HOME && ls']);
    assert.deepEqual(apply({}, 'ENTRYPOINT ["/bin/app"]').Entrypoint, ['/bin/app']);
    // not a JSON list of strings: the shell form, as dockerd
    assert.deepEqual(apply({}, 'CMD [1, 2]').Cmd, ['/bin/sh', '-c', '[1, 2]']);
  });

  test('an ENTRYPOINT clears the CMD unless the changes set one (a Dockerfile\'s rule)', () => {
    assert.equal(apply({ Cmd: ['old'] }, 'ENTRYPOINT ["/bin/app"]').Cmd, null);
    assert.deepEqual(apply({ Cmd: ['old'] }, 'CMD ["new"]', 'ENTRYPOINT ["/bin/app"]').Cmd, ['new']);
  });

  test('ENV: KEY=VALUE pairs with quotes, the legacy KEY VALUE, an existing key replaced in place', () => {
    const env = apply({ Env: ['PATH=/bin', 'A=1'] }, 'ENV A=2 B="two words" C=\'x y\'', 'ENV LEGACY some value').Env;
    assert.deepEqual(env, ['PATH=/bin', 'A=2', 'B=two words', 'C=x y', 'LEGACY=some value']);
    refused(['ENV A="unterminated'], /unmatched quote/);
  });

  test('LABEL, EXPOSE, USER, WORKDIR, VOLUME, STOPSIGNAL', () => {
    const c = apply({ Labels: { keep: '1' }, WorkingDir: '/srv' },
      'LABEL a=b "c d"=e', 'EXPOSE 80 53/udp 8080/TCP', 'USER app:app', 'WORKDIR sub', 'VOLUME ["/data", "/logs"]', 'VOLUME /cache', 'STOPSIGNAL SIGINT');
    assert.deepEqual(c.Labels, { keep: '1', a: 'b', 'c d': 'e' });
    assert.deepEqual(c.ExposedPorts, { '80/tcp': {}, '53/udp': {}, '8080/tcp': {} });
    assert.equal(c.User, 'app:app');
    assert.equal(c.WorkingDir, '/srv/sub');
    assert.deepEqual(Object.keys(c.Volumes ?? {}), ['/data', '/logs', '/cache']);
    assert.equal(c.StopSignal, 'SIGINT');
    assert.equal(apply({ WorkingDir: '/srv' }, 'WORKDIR /abs/../x').WorkingDir, '/x');
  });

  test('the base config is not modified', () => {
    const base: RuntimeConfig = { Env: ['A=1'], Labels: { a: '1' } };
    apply(base, 'ENV A=2', 'LABEL a=2');
    assert.deepEqual(base, { Env: ['A=1'], Labels: { a: '1' } });
  });

  test('instructions that are no config change are refused by name, as dockerd refuses them', () => {
    for (const word of ['RUN', 'COPY', 'ADD', 'FROM', 'ARG', 'SHELL', 'MAINTAINER', 'NOPE']) refused([`${word} x`], new RegExp(`${word} is not a valid change command`));
  });

  test('what dockerd takes and Nimbus does not keep yet is refused as such', () => {
    refused(['HEALTHCHECK CMD true'], /HEALTHCHECK is not supported by Nimbus yet/);
    refused(['ONBUILD RUN x'], /ONBUILD is not supported by Nimbus yet/);
  });

  test('malformed arguments are refused, naming the change', () => {
    refused(['EXPOSE 8000-8010'], /ranges are not supported/);
    refused(['EXPOSE 70000'], /not a port/);
    refused(['LABEL novalue'], /is not KEY=VALUE/);
    refused(['USER'], /USER needs an argument/);
    refused(['STOPSIGNAL kill -9'], /not a signal/);
    refused(Array.from({ length: 300 }, () => 'USER x'), /at most 256/);
  });

  test('blank lines and comments are skipped; a change of several lines counts each; continuations join', () => {
    assert.deepEqual(parseChanges(['', '# note', 'USER a\nWORKDIR /w', 'CMD echo \\\n  hi']).map((c) => c.instruction), ['USER', 'WORKDIR', 'CMD']);
    assert.deepEqual(apply({}, 'CMD echo \\\n  hi').Cmd, ['/bin/sh', '-c', 'echo    hi']);
  });

  test('splitWords: quotes and escapes', () => {
    assert.deepEqual(splitWords('a "b c" \'d e\' f\\ g "h\\"i"'), ['a', 'b c', 'd e', 'f g', 'h"i']);
  });
});
