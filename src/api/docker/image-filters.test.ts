import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFilters } from './mapping.js';
import { IMAGE_PRUNE_FILTERS, checkImageFilters, compileGlob, danglingWanted, imageCreated, matchesImageFilters, tagsMatching } from './image-filters.js';

test("reference globs are Go's path.Match: * and ? stop at /, classes, ranges, negation, escapes", () => {
  const m = (p: string, s: string) => compileGlob(p).test(s);
  assert.equal(m('busy*', 'busybox'), true);
  assert.equal(m('*', 'library/busybox'), false, '* does not cross a /');
  assert.equal(m('*/*', 'library/busybox'), true);
  assert.equal(m('b?sybox', 'busybox'), true);
  assert.equal(m('b?sybox', 'b/sybox'), false, '? is not a /');
  assert.equal(m('[a-c]usybox', 'busybox'), true);
  assert.equal(m('[^a-c]usybox', 'busybox'), false);
  assert.equal(m('[^a-c]usybox', 'musybox'), true);
  assert.equal(m('[xyb]usybox', 'busybox'), true);
  assert.equal(m('busybox\\*', 'busybox*'), true);
  assert.equal(m('busybox\\*', 'busyboxes'), false);
  assert.equal(m('a.b', 'aXb'), false, 'a dot is a dot, not any character');
  assert.equal(m('a+b(c)', 'a+b(c)'), true, 'regular-expression characters are literal');
  assert.equal(m('[z-a]x', 'mx'), false, 'a range upside down matches nothing');
  for (const bad of ['[', '[]', '[a', 'a\\', '[-a]', '[a-]', '[^]']) assert.throws(() => compileGlob(bad), /syntax error in pattern/, bad);
  assert.throws(() => compileGlob('*'.repeat(300)), /longer than 256/);
});

test('reference matches the familiar string or the familiar name, never the full name', () => {
  const tags = ['docker.io/library/busybox:latest', '127.0.0.1:5000/team/app:v1', 'docker.io/someone/tool:2'];
  assert.deepEqual(tagsMatching(tags, ['busybox']), ['docker.io/library/busybox:latest']);
  assert.deepEqual(tagsMatching(tags, ['busybox:latest']), ['docker.io/library/busybox:latest']);
  assert.deepEqual(tagsMatching(tags, ['busybox:1']), []);
  assert.deepEqual(tagsMatching(tags, ['library/busybox']), [], 'docker.io/library/ is not part of the familiar name');
  assert.deepEqual(tagsMatching(tags, ['docker.io/library/busybox']), []);
  assert.deepEqual(tagsMatching(tags, ['127.0.0.1:5000/team/*']), ['127.0.0.1:5000/team/app:v1']);
  assert.deepEqual(tagsMatching(tags, ['*/*:2']), ['docker.io/someone/tool:2']);
  assert.deepEqual(tagsMatching(tags, ['*']), ['docker.io/library/busybox:latest'], '* is one path component');
});

test('image list filters: dangling, label, before and since (strict), unknown ones refused by name', () => {
  const img = (tags: string[], created: string, labels: Record<string, string> = {}) => ({ tags, config: { created, config: { Labels: labels } }, createdAt: '2026-12-01T00:00:00Z' });
  const old = img(['docker.io/library/a:1'], '2026-01-01T00:00:00Z', { tier: 'web', team: 'x' });
  const mid = img([], '2026-02-01T00:00:00Z', { tier: 'db' });
  const young = img(['docker.io/library/c:1'], '2026-03-01T00:00:00Z');
  const all = [old, mid, young];
  const pick = (json: string, bounds = {}) => all.filter((i) => matchesImageFilters(i, parseFilters(json), bounds)).map((i) => i.config.created.slice(5, 7));
  assert.deepEqual(pick('{"dangling":["true"]}'), ['02']);
  assert.deepEqual(pick('{"dangling":["false"]}'), ['01', '03']);
  assert.deepEqual(pick('{"label":["tier"]}'), ['01', '02']);
  assert.deepEqual(pick('{"label":["tier=web","team=x"]}'), ['01'], 'every label must hold');
  assert.deepEqual(pick('{"label":["tier=web","team=y"]}'), []);
  assert.deepEqual(pick('{"reference":["c"]}'), ['03'], 'an untagged image never matches a reference');
  const t = (i: typeof old) => imageCreated(i);
  assert.deepEqual(pick('{"before":["m"]}', { before: t(mid) }), ['01'], 'before: strictly older');
  assert.deepEqual(pick('{"since":["m"]}', { since: t(mid) }), ['03'], 'since: strictly newer');
  assert.deepEqual(pick('{"since":["o"],"before":["y"]}', { since: t(old), before: t(young) }), ['02']);
  assert.throws(() => pick('{"until":["1h"]}'), /invalid filter 'until'/);
  assert.throws(() => pick('{"dangling":["maybe"]}'), /invalid filter 'dangling=maybe'/);
  // without a config time, when Nimbus recorded it
  assert.equal(imageCreated({ config: {}, createdAt: '2026-12-01T00:00:00Z' }), Date.parse('2026-12-01T00:00:00Z'));
});

test('image prune filters: dangling, label, label!, until; the list-only ones refused', () => {
  const f = (json: string) => parseFilters(json);
  checkImageFilters(f('{"dangling":["false"],"label":["a"],"label!":["b"],"until":["1h"]}'), IMAGE_PRUNE_FILTERS);
  assert.throws(() => checkImageFilters(f('{"reference":["x"]}'), IMAGE_PRUNE_FILTERS), /invalid filter 'reference'/);
  assert.equal(danglingWanted(f('{"dangling":["false"]}')), false);
  assert.equal(danglingWanted(f('{"dangling":["1"]}')), true);
  assert.equal(danglingWanted(f('{}')), undefined);
});
