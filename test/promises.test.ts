/**
 * Every promise in the tree is awaited, returned or deliberately detached (`void`), and none
 * is used as a truth value; and the checker finds both mistakes when they are there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { checkPromises } from '../scripts/check-promises.js';

const ROOT = resolve(import.meta.dirname, '../..'); // dist/test → repo root

test('no promise in src/, test/, scripts/ or bench/ floats or stands for a boolean', () => {
  const findings = checkPromises(ROOT);
  assert.deepEqual(findings.map((f) => `${f.file}:${f.line}: ${f.kind}: ${f.text}`), []);
});

test('the checker reports a floating call and a promise used as a condition, and spares the handled ones', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-promises-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  writeFileSync(join(root, 'tsconfig.json'), JSON.stringify({ compilerOptions: { strict: true, target: 'ES2022', module: 'NodeNext', lib: ['ES2023'], types: [] }, include: ['*.ts'] }));
  writeFileSync(join(root, 'a.ts'), [
    'async function save(): Promise<number> { return 1; }',
    'async function find(): Promise<string | undefined> { return undefined; }',
    'export async function f(): Promise<void> {',
    '  save();', // 4: floating
    '  void save();',
    '  await save();',
    '  save().catch(() => undefined);',
    '  const p = find();',
    '  if (p) return;', // 9: condition
    '  if (await find()) return;',
    '  const n = !find();', // 11: condition
    '  void n;',
    '}',
    '',
  ].join('\n'));
  const found = checkPromises(root).map((f) => `${f.line}:${f.kind}`);
  assert.deepEqual(found, ['4:floating', '9:condition', '11:condition']);
});
