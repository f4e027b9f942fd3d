import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ProjectTree } from './project-tree.js';

/** What the usage report's walk was (recursive, children in the listing's order): the order subtrees() keeps. */
function reference(parents: ReadonlyMap<string, string | null>, roots: readonly string[]): string[] {
  const children = new Map<string | null, string[]>();
  for (const [id, parent] of parents) children.set(parent, [...(children.get(parent) ?? []), id]);
  const out: string[] = [];
  const seen = new Set<string>();
  const walk = (id: string) => {
    if (seen.has(id)) return;
    seen.add(id);
    out.push(id);
    for (const c of children.get(id) ?? []) walk(c);
  };
  for (const id of roots) if (parents.has(id)) walk(id);
  return out;
}

test('subtrees: each root in turn, each project once and before its children, siblings in the listing\'s order', () => {
  fc.assert(
    fc.property(
      fc.array(fc.nat(), { minLength: 1, maxLength: 40 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      (parentPicks, rootPicks) => {
        const parents = new Map<string, string | null>();
        parentPicks.forEach((pick, i) => parents.set(`p${i}`, i === 0 || pick % 3 === 0 ? null : `p${pick % i}`));
        const roots = rootPicks.map((n) => `p${n % (parentPicks.length + 2)}`); // some the tree does not hold
        assert.deepEqual(new ProjectTree(parents).subtrees(roots), reference(parents, roots));
      },
    ),
    { numRuns: 300, seed: 31 },
  );
});

test('subtrees: a chain 50,000 deep is walked (no recursion)', () => {
  const parents = new Map<string, string | null>([['p0', null]]);
  for (let i = 1; i < 50_000; i++) parents.set(`p${i}`, `p${i - 1}`);
  const out = new ProjectTree(parents).subtrees(['p0']);
  assert.equal(out.length, 50_000);
  assert.equal(out[49_999], 'p49999');
});
