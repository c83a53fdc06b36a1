/**
 * Reads a child process's stdout as JSON lines (legate's logs), for the demo
 * and for tests that drive the real CLI.
 */
import type { Readable } from 'node:stream';

/** Calls `onLine` for each complete line: parsed, or undefined when it is not JSON. */
export function readJsonLines(stream: Readable, onLine: (parsed: Record<string, unknown> | undefined, raw: string) => void): void {
  let partial = '';
  stream.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    let nl: number;
    while ((nl = partial.indexOf('\n')) !== -1) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      let parsed: Record<string, unknown> | undefined;
      try {
        parsed = JSON.parse(line) as Record<string, unknown>;
      } catch {
        parsed = undefined;
      }
      onLine(parsed, line);
    }
  });
}
