import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { routesFileSchema } from '../../src/config/generated/routes-validator.js';
import { routesJsonSchema } from '../../src/config/schema.js';
import { checkGeneratedValidator } from '../../src/config/write-schema.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

describe('generated routes.yaml validator', () => {
  it('is what schema.ts generates today (run `npm run schema`)', () => {
    const check = checkGeneratedValidator(join(root, 'src/config/generated/routes-validator.ts'));
    // Comparing `upToDate` first keeps a 300 KB diff out of the failure message.
    expect(check.upToDate, 'src/config/generated/routes-validator.ts is stale: run `npm run schema`').toBe(true);
  });

  it('carries the shipped schema as data for the error formatter', () => {
    const { $schema: _, ...shipped } = routesJsonSchema() as Record<string, unknown>;
    expect(routesFileSchema).toEqual(JSON.parse(JSON.stringify(shipped)));
  });
});

/** Module specifiers a file loads at run time: everything but `import type` / `export type`. */
function runtimeSpecifiers(file: string): string[] {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && node.importClause?.isTypeOnly !== true && ts.isStringLiteral(node.moduleSpecifier)) {
      out.push(node.moduleSpecifier.text);
    } else if (ts.isExportDeclaration(node) && !node.isTypeOnly && node.moduleSpecifier !== undefined && ts.isStringLiteral(node.moduleSpecifier)) {
      out.push(node.moduleSpecifier.text);
    } else if (ts.isCallExpression(node) && isLoader(node.expression)) {
      const [arg] = node.arguments;
      if (arg !== undefined && ts.isStringLiteralLike(arg)) out.push(arg.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return out;
}

function isLoader(callee: ts.Expression): boolean {
  return callee.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(callee) && callee.text === 'require');
}

/** The `.ts` source a relative `.js` specifier names. */
function sourceFor(from: string, specifier: string): string {
  const base = resolve(dirname(from), specifier).replace(/\.js$/, '');
  const candidate = [`${base}.ts`, join(base, 'index.ts')].find((f) => existsSync(f));
  if (candidate === undefined) throw new Error(`cannot resolve ${specifier} from ${from}`);
  return candidate;
}

/** Every package a module and its local imports load at run time, with a file that loads it. */
function packagesLoadedFrom(entry: string): Map<string, string> {
  const packages = new Map<string, string>();
  const seen = new Set<string>();
  const queue = [entry];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    for (const spec of runtimeSpecifiers(file)) {
      if (spec.startsWith('.')) queue.push(sourceFor(file, spec));
      else if (!packages.has(spec)) packages.set(spec, relative(root, file));
    }
  }
  return packages;
}

describe('the proxy process', () => {
  it('loads neither TypeBox nor Ajv’s compiler, only Ajv’s runtime helpers', () => {
    const loaded = packagesLoadedFrom(join(root, 'src/cli.ts'));
    const heavy = [...loaded].filter(([spec]) => /^@sinclair\/typebox(\/|$)/.test(spec) || (/^ajv(\/|$)/.test(spec) && !spec.startsWith('ajv/dist/runtime/')));
    expect(heavy.map(([spec, by]) => `${spec} (from ${by})`)).toEqual([]);
    // Guards the scan itself: a walk that missed the validator would pass vacuously.
    expect([...loaded.keys()].some((spec) => spec.startsWith('ajv/dist/runtime/'))).toBe(true);
  });
});
