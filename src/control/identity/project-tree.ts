/**
 * The projects' tree as one listing gave it: each project's parent, and (built on first use, kept
 * with it) each one's children. What access control keeps for its members' requests and what the
 * usage report walks.
 */
export class ProjectTree {
  private children: Map<string, string[]> | undefined;

  constructor(
    /** Each project's parent (null: a root), in the listing's order. */
    readonly parents: ReadonlyMap<string, string | null>,
  ) {}

  static readonly empty = new ProjectTree(new Map());

  /**
   * The projects and every project below them, each once, each before its children (a walk from
   * each root in turn, children in the listing's order); those the tree does not hold left out.
   */
  subtrees(roots: Iterable<string>): string[] {
    const children = this.childIndex();
    const out: string[] = [];
    const seen = new Set<string>();
    // a stack, not recursion: a deep tree must not exhaust the call stack
    const todo = [...roots].filter((id) => this.parents.has(id)).reverse();
    while (todo.length) {
      const id = todo.pop()!;
      if (seen.has(id)) continue;
      seen.add(id);
      out.push(id);
      const below = children.get(id) ?? [];
      for (let i = below.length - 1; i >= 0; i--) todo.push(below[i]!);
    }
    return out;
  }

  private childIndex(): Map<string, string[]> {
    if (!this.children) {
      this.children = new Map();
      for (const [id, parent] of this.parents) {
        if (parent === null) continue;
        const list = this.children.get(parent);
        if (list) list.push(id);
        else this.children.set(parent, [id]);
      }
    }
    return this.children;
  }
}
