/**
 * The layer rule (core ← store ← agent ← control ← api ← daemon; the CLI a client of the API)
 * holds for every import under src/, and the checker finds a violation when there is one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { checkLayers } from '../scripts/check-layers.js';

const ROOT = resolve(import.meta.dirname, '../..'); // dist/test → repo root

test('every import under src/ respects the layers', () => {
  const violations = checkLayers(ROOT);
  assert.deepEqual(violations.map((v) => `${v.file}:${v.line}: ${v.from} imports ${v.to}`), []);
});

test('the checker reports upward imports, a CLI reaching past the API, and imports outside src/', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nimbus-layers-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const files: Record<string, string> = {
    'src/core/ok.ts': "export const x = 1;\n",
    'src/core/up.ts': "import { y } from '../agent/a.js';\nexport const z = y;\n",
    'src/agent/a.ts': "import { x } from '../core/ok.js';\nimport type { S } from '../control/s.js';\nexport const y = x;\nexport type T = S;\n",
    'src/control/s.ts': "export type S = number;\nexport const s = 1;\n",
    'src/cli/c.ts': "import type { S } from '../control/s.js';\nimport { s } from '../control/s.js';\nexport const c: S = s;\n",
    'src/api/fixture.ts': "export { x } from '../../scripts/fixtures/thing.js';\n",
    'src/daemon/d.ts': "import { s } from '../control/s.js';\nexport const d = s;\n",
    'src/agent/a.test.ts': "import { s } from '../control/s.js';\nvoid s;\n",
  };
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), text);
  }
  const found = checkLayers(root).map((v) => `${v.file}:${v.line} ${v.from}->${v.to}`).sort();
  assert.deepEqual(found, [
    'src/agent/a.ts:2 agent->control', // a type-only import upward is still upward
    'src/api/fixture.ts:1 api->scripts',
    'src/cli/c.ts:2 cli->control', // the CLI may take the API's types, never the control plane's code
    'src/core/up.ts:1 core->agent',
  ]);
});
