/**
 * Paths legate writes to (the access log): what is missing on the way to a
 * file, and what would keep it from being opened, found without creating or
 * changing anything, so `legate validate` can say it before a start fails.
 */
import { accessSync, constants, lstatSync, readlinkSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';

/**
 * `stat`, or undefined where nothing is: ENOENT, and ENOTDIR (a file where
 * a directory should be on the way), which Node 24's `throwIfNoEntry`
 * covers and Node 20's throws.
 */
function statOf(p: string): Stats | undefined {
  try {
    return statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw e;
  }
}

/**
 * The directories `mkdir -p dir` would make, the outermost first; [] when
 * `dir` exists. Throws, naming it, at a dangling symbolic link on the way:
 * mkdir would say EEXIST there (it is an entry, not a directory).
 */
export function missingDirectories(dir: string): string[] {
  const missing: string[] = [];
  for (let d = dir; statOf(d) === undefined; d = path.dirname(d)) {
    if (lstatSync(d, { throwIfNoEntry: false })?.isSymbolicLink() === true) {
      throw new Error(`${d} is a symbolic link to ${readlinkSync(d)}, which does not exist`);
    }
    missing.push(d);
    if (path.dirname(d) === d) break;
  }
  return missing.reverse();
}

/**
 * Why `file` could not be opened for appending, its missing directories
 * created first, or undefined when it could. Reads only: the file and its
 * directories are left as they are. Permissions are checked for the user
 * legate runs as (root passes them, as its open would).
 */
export function appendProblem(file: string): string | undefined {
  try {
    const st = statOf(file);
    if (st !== undefined) {
      if (st.isDirectory()) return `${file} is a directory`;
      accessSync(file, constants.W_OK);
      return undefined;
    }
    const dir = path.dirname(file);
    const missing = missingDirectories(dir);
    // The nearest existing ancestor: it must be a directory that takes a new entry.
    const parent = missing.length === 0 ? dir : path.dirname(missing[0] as string);
    if (!statSync(parent).isDirectory()) return `${parent} is not a directory`;
    accessSync(parent, constants.W_OK | constants.X_OK);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
