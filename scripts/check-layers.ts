/**
 * The layer checker: production code under src/ may import only from its own layer or the
 * layers below it (core ← store ← agent ← control ← api ← daemon); the CLI reaches nimbusd
 * only through the API, so it imports core and the API's wire types, nothing that runs the
 * server. Tests (*.test.ts) and test helpers may import anything.
 *
 *   node dist/scripts/check-layers.js [ROOT]   prints each violation; exit 1 if any
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Layers from the bottom up: each may import those at or below its index. */
export const LAYERS = ['core', 'store', 'agent', 'control', 'api', 'daemon'] as const;

/** What each top-level folder of src/ may import (the CLI beside the stack, a client of the API). */
export const ALLOWED: Record<string, readonly string[]> = {
  ...Object.fromEntries(LAYERS.map((l, i) => [l, LAYERS.slice(0, i + 1)])),
  // the CLI: its own code, core's types and helpers, the API's wire types (type-only imports, checked below)
  cli: ['cli', 'core'],
};
/** Imports a layer may make of another for types only (erased at build: no code crosses). */
export const TYPE_ONLY: Record<string, readonly string[]> = { cli: ['api', 'store', 'control', 'agent'] };

/** Single files a layer may import across the rule, each with the reason. */
export const EXCEPTIONS: { from: string; to: string; why: string }[] = [
  { from: 'src/daemon/agent-process.ts', to: 'src/cli/client.ts', why: 'a `nimbusd agent` registers with the control plane as any API client does' },
];

export interface Violation {
  file: string;
  line: number;
  from: string;
  to: string;
  spec: string;
}

/** Test code and fixtures: free to reach anything. */
const isTestFile = (rel: string) => /\.test\.ts$|-test-env\.ts$|conformance\.ts$|\/test-helpers?\//.test(rel);

function walk(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

const IMPORT = /^\s*(import|export)\s+(type\s+)?(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]/gm;

/** Every import in root/src that crosses a layer boundary the wrong way. */
export function checkLayers(root: string): Violation[] {
  const src = join(root, 'src');
  const out: Violation[] = [];
  for (const file of walk(src)) {
    const rel = relative(src, file);
    if (isTestFile(rel)) continue;
    const from = rel.split(sep)[0]!;
    const allowed = ALLOWED[from];
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(IMPORT)) {
      const spec = m[3]!;
      if (!spec.startsWith('.')) continue; // packages and node: builtins
      const target = relative(root, resolve(dirname(file), spec));
      const parts = target.split(sep);
      const line = text.slice(0, m.index).split('\n').length;
      if (parts[0] !== 'src') {
        out.push({ file: relative(root, file), line, from, to: parts[0]!, spec });
        continue;
      }
      const to = parts[1]!;
      if (!allowed) {
        out.push({ file: relative(root, file), line, from, to, spec });
        continue;
      }
      const typeOnly = m[2] !== undefined || /^\s*import\s+type\b/.test(m[0]);
      if (allowed.includes(to) || (typeOnly && TYPE_ONLY[from]?.includes(to))) continue;
      const targetFile = target.replace(/\.js$/, '.ts');
      if (EXCEPTIONS.some((e) => e.from === relative(root, file) && e.to === targetFile)) continue;
      out.push({ file: relative(root, file), line, from, to, spec });
    }
  }
  return out;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '../..'));
  const violations = checkLayers(root);
  for (const v of violations) console.log(`${v.file}:${v.line}: ${v.from} imports ${v.to} (${v.spec})`);
  console.log(violations.length ? `check-layers: ${violations.length} violation(s)` : 'check-layers: every import respects core ← store ← agent ← control ← api ← daemon');
  process.exit(violations.length ? 1 : 0);
}
