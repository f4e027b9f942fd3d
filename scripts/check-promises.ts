/**
 * The promise checker: a Promise nobody awaits is a write that may not have happened when the
 * caller goes on, and an error nobody sees. Since the store became asynchronous, a missing
 * `await` is the easiest bug to write and the hardest to find, so this tool refuses:
 *   - a statement whose value is a promise and is neither awaited, returned, nor marked
 *     `void` (deliberately detached work says so, as in `void this.run()`);
 *   - a promise used as a truth value (`if (store.get(id))` is always true).
 * It uses the TypeScript 5 compiler API (the build's TypeScript 7 has none yet) for types.
 *
 *   node dist/scripts/check-promises.js [ROOT]   prints each finding; exit 1 if any
 */
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as TS from 'typescript5';

const require = createRequire(import.meta.url);
const ts = require('typescript5') as typeof TS;

export interface PromiseFinding {
  file: string;
  line: number;
  kind: 'floating' | 'condition';
  text: string;
}

/** node:test's test() and describe() return promises the runner itself awaits. */
const RUNNER_CALLS = new Set(['test', 'describe', 'it', 'suite', 'before', 'after', 'beforeEach', 'afterEach']);

/** A call that handles the rejection itself: `p.catch(f)`, `p.then(f, g)`, either followed by `.finally(h)`. */
function handlesRejection(e: TS.CallExpression | TS.NewExpression): boolean {
  if (!ts.isCallExpression(e)) return false;
  const callee = e.expression;
  if (ts.isIdentifier(callee)) return RUNNER_CALLS.has(callee.text);
  if (!ts.isPropertyAccessExpression(callee)) return false;
  const method = callee.name.text;
  // `p.catch(f).finally(g)`: handled before the finally
  if (method === 'finally') return ts.isCallExpression(callee.expression) && handlesRejection(callee.expression);
  return method === 'catch' || (method === 'then' && e.arguments.length >= 2);
}

function isPromiseLike(checker: TS.TypeChecker, type: TS.Type): boolean {
  if (type.isUnion()) return type.types.some((t) => isPromiseLike(checker, t));
  const then = type.getProperty('then');
  if (!then) return false;
  const decl = then.valueDeclaration ?? then.declarations?.[0];
  if (!decl) return false;
  const thenType = checker.getTypeOfSymbolAtLocation(then, decl);
  return thenType.getCallSignatures().length > 0;
}

export function checkPromises(root: string): PromiseFinding[] {
  const configPath = join(root, 'tsconfig.json');
  const read = ts.readConfigFile(configPath, ts.sys.readFile);
  if (read.error) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, root);
  // TypeScript 5 does not know every option TypeScript 7 takes; the ones used here are the same.
  const program = ts.createProgram({ rootNames: parsed.fileNames, options: { ...parsed.options, noEmit: true } });
  const checker = program.getTypeChecker();
  const findings: PromiseFinding[] = [];

  const report = (sf: TS.SourceFile, node: TS.Node, kind: PromiseFinding['kind']) => {
    const { line } = sf.getLineAndCharacterOfPosition(node.getStart(sf));
    findings.push({ file: relative(root, sf.fileName), line: line + 1, kind, text: node.getText(sf).split('\n')[0]!.slice(0, 120) });
  };
  const promiseValued = (e: TS.Expression) => isPromiseLike(checker, checker.getTypeAtLocation(e));
  /** Always truthy because it is a promise: `Promise | undefined` is a fair thing to test. */
  const alwaysPromise = (e: TS.Expression) => {
    const t = checker.getTypeAtLocation(e);
    const members = t.isUnion() ? t.types : [t];
    return members.every((m) => isPromiseLike(checker, m));
  };

  for (const sf of program.getSourceFiles()) {
    if (sf.isDeclarationFile || sf.fileName.includes('/node_modules/')) continue;
    const visit = (node: TS.Node): void => {
      if (ts.isExpressionStatement(node)) {
        let e: TS.Expression = node.expression;
        while (ts.isParenthesizedExpression(e)) e = e.expression;
        const detached = ts.isVoidExpression(e) || ts.isAwaitExpression(e);
        // `x = promise` stores it (someone awaits it later); calls and member chains are what float
        if (!detached && (ts.isCallExpression(e) || ts.isNewExpression(e)) && !handlesRejection(e) && promiseValued(e)) report(sf, node, 'floating');
      }
      const condition =
        ts.isIfStatement(node) || ts.isWhileStatement(node) || ts.isDoStatement(node) ? node.expression
        : ts.isConditionalExpression(node) ? node.condition
        : ts.isPrefixUnaryExpression(node) && node.operator === ts.SyntaxKind.ExclamationToken ? node.operand
        : undefined;
      if (condition && (ts.isCallExpression(condition) || ts.isPropertyAccessExpression(condition) || ts.isIdentifier(condition)) && alwaysPromise(condition)) {
        report(sf, condition, 'condition');
      }
      ts.forEachChild(node, visit);
    };
    visit(sf);
  }
  return findings;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const here = dirname(fileURLToPath(import.meta.url));
  // dist/scripts → the repository root
  const root = resolve(process.argv[2] ?? join(here, '..', '..'));
  const findings = checkPromises(root);
  for (const f of findings) {
    const what = f.kind === 'floating' ? 'a promise nobody awaits (await it, return it, or mark it `void`)' : 'a promise used as a truth value (always true)';
    console.log(`${f.file}:${f.line}: ${what}: ${f.text}`);
  }
  if (findings.length) {
    console.log(`${findings.length} finding(s)`);
    process.exit(1);
  }
  console.log('promises: every promise is awaited, returned or marked void');
}
