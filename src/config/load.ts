/**
 * The one entry point for reading routes.yaml: text → parse → schema check
 * → normalise, with every problem reported as a positioned issue. Used at
 * start, on reload and by `legate validate`.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { LegateConfig } from './model.js';
import { normalise } from './normalise.js';
import { formatIssue, validateRoutesText, type ConfigIssue } from './validate.js';

export { formatIssue, type ConfigIssue };

/** A runnable config with its warnings, or every issue found. */
export type LoadResult =
  | { readonly ok: true; readonly config: LegateConfig; readonly warnings: string[] }
  | { readonly ok: false; readonly issues: ConfigIssue[] };

export interface LoadOptions {
  /** Also check the access log file could be opened for appending (`legate validate`). */
  readonly probeAccessLog?: boolean;
}

/**
 * Reads and loads a config file. An unreadable file is one issue at 1:1
 * with path `(file)`. Never throws for bad input.
 *
 * @param file the path as the user gave it; issues show it unchanged.
 */
export async function loadConfigFile(file: string, opts: LoadOptions = {}): Promise<LoadResult> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    return { ok: false, issues: [{ file, line: 1, col: 1, path: '(file)', message: `cannot read the config file: ${errorText(err)}` }] };
  }
  return loadConfigText(text, file, opts);
}

/**
 * Loads config text as if it were read from `file`: relative paths in it
 * resolve against the file's directory, and `file` names it in issues.
 * Certificate files named in it are read synchronously. Never throws for
 * bad input.
 */
export function loadConfigText(text: string, file: string, opts: LoadOptions = {}): LoadResult {
  try {
    const checked = validateRoutesText(text, file);
    if (!checked.ok) return checked;
    return normalise(checked.value, { file, path: resolve(file), locator: checked.locator, probeAccessLog: opts.probeAccessLog === true });
  } catch (err) {
    // A bug here must not take down a running proxy on reload: report it like any other problem.
    return { ok: false, issues: [{ file, line: 1, col: 1, path: '(internal)', message: `internal error while loading: ${errorText(err)}` }] };
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
