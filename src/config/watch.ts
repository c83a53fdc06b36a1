/**
 * Watches a config file for change: edits in place, replacement by rename
 * (editors), and Kubernetes ConfigMap `..data` symlink swaps. It watches the
 * file's folder (where all three show up as events), debounces, and reports
 * only when the content really changed. A slow poll backs up the events.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

export interface ConfigWatcher {
  close(): void;
  /** Re-reads now (SIGHUP). */
  check(): Promise<void>;
}

export interface WatchOptions {
  debounceMs?: number;
  pollMs?: number;
  /** Called with the new text when the file's content changed. */
  onChange(text: string): void;
  onError?(err: Error): void;
}

export function digest(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export function watchConfigFile(file: string, initialText: string, opts: WatchOptions): ConfigWatcher {
  let last = digest(initialText);
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let watcher: FSWatcher | undefined;

  const check = async (): Promise<void> => {
    if (closed) return;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      // Mid-swap the file can be briefly missing; the next event or poll sees the new one.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') opts.onError?.(e as Error);
      return;
    }
    const d = digest(text);
    if (d === last || closed) return;
    last = d;
    opts.onChange(text);
  };
  const schedule = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      void check();
    }, opts.debounceMs ?? 100);
  };

  try {
    watcher = watch(path.dirname(file), { persistent: false }, schedule);
    watcher.on('error', (e) => opts.onError?.(e));
  } catch (e) {
    opts.onError?.(e as Error);
  }
  const poll = setInterval(() => void check(), opts.pollMs ?? 2_000);
  poll.unref();

  return {
    check,
    close() {
      closed = true;
      watcher?.close();
      clearInterval(poll);
      if (timer !== undefined) clearTimeout(timer);
    },
  };
}
