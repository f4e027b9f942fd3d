import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tar from 'tar-stream';
import { contextTar, ignored, parseDockerignore } from './build.js';

test('.dockerignore: globs, directories, ** and ! exceptions; the last match decides', () => {
  const rules = parseDockerignore('# comment\n*.log\n!keep.log\nsecret/\n**/tmp\n/build\n');
  const out = (p: string) => ignored(p, rules);
  assert.equal(out('a.log'), true);
  assert.equal(out('keep.log'), false);
  assert.equal(out('sub/a.log'), false, '* does not cross /');
  assert.equal(out('secret/key.pem'), true, 'a directory excludes what is under it');
  assert.equal(out('x/y/tmp/z'), true);
  assert.equal(out('tmp'), true);
  assert.equal(out('build/out'), true);
  assert.equal(out('src/main.ts'), false);
});

test('the context tar: what .dockerignore excludes is left out, the Dockerfile and .dockerignore always go, symlinks as links', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'nimbus-cli-ctx-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'Dockerfile'), 'FROM x\n');
  writeFileSync(join(dir, '.dockerignore'), '*\n!app\n');
  mkdirSync(join(dir, 'app'));
  writeFileSync(join(dir, 'app', 'main.js'), 'x');
  writeFileSync(join(dir, 'secret.txt'), 'no');
  symlinkSync('main.js', join(dir, 'app', 'link'));
  const names: string[] = [];
  const extract = tar.extract();
  extract.on('entry', (h, s, next) => {
    names.push(`${h.type}:${h.name}${h.linkname ? `->${h.linkname}` : ''}`);
    s.on('end', () => next());
    s.resume();
  });
  const done = new Promise<void>((r) => extract.on('finish', () => r()));
  contextTar(dir, 'Dockerfile').pipe(extract as unknown as NodeJS.WritableStream);
  await done;
  assert.deepEqual(names.sort(), ['directory:app', 'file:.dockerignore', 'file:Dockerfile', 'file:app/main.js', 'symlink:app/link->main.js']);
});
