/**
 * Writes the JSON Schema of routes.yaml, generated from `schema.ts`, so that
 * editors can complete and check the file:
 *
 *     node dist/config/write-schema.js schema/routes.schema.json
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { routesJsonSchema } from './schema.js';

/** The schema file's exact text: pretty JSON with a final newline. */
export function renderRoutesSchema(): string {
  return `${JSON.stringify(routesJsonSchema(), null, 2)}\n`;
}

/** Writes the schema to `out`, creating its directory. */
export function writeRoutesSchema(out: string): void {
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, renderRoutesSchema());
}

/**
 * Whether the shipped schema file is what `schema.ts` generates today; a
 * test runs this so the file cannot silently go stale.
 */
export function checkShippedSchema(file: string): { readonly upToDate: boolean; readonly expected: string; readonly actual: string | null } {
  const expected = renderRoutesSchema();
  let actual: string | null;
  try {
    actual = readFileSync(file, 'utf8');
  } catch {
    actual = null;
  }
  return { upToDate: actual === expected, expected, actual };
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (invokedDirectly) {
  const out = process.argv[2];
  if (out === undefined) {
    console.error('usage: node dist/config/write-schema.js OUT');
    process.exit(2);
  }
  writeRoutesSchema(out);
  console.log(`wrote ${out}`);
}
