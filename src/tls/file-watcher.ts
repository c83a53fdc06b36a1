/**
 * Tells when files in some folders may have changed. It watches folders, not
 * files: a watch on a file follows its inode and goes blind when the file is
 * replaced by rename (editors, cert-manager) or when a Kubernetes Secret swaps
 * its `..data` symlink, while a folder watch sees all three. Events only say
 * "look again"; the caller compares content digests, so spurious events are
 * harmless. A slow poll covers filesystems where watching is unreliable
 * (network mounts, some container volumes) and folders that do not exist yet.
 */
import { watch, type FSWatcher } from 'node:fs';

/** Timing of a FolderWatcher. */
export interface FolderWatcherOptions {
  /** Quiet time after the last event before `onChange` runs: a rotation writes several files. */
  readonly debounceMs: number;
  /** Longest `onChange` is held back while events keep coming. */
  readonly maxWaitMs: number;
  /** Interval of the backup poll; 0 = none. */
  readonly pollMs: number;
  /** A folder could not be watched (the poll still covers it). */
  readonly onWatchError?: (folder: string, err: unknown) => void;
}

/** Calls `onChange` (debounced) when anything in the watched folders may have changed, and on each poll. */
export class FolderWatcher {
  readonly #onChange: () => void;
  readonly #opts: FolderWatcherOptions;
  readonly #watchers = new Map<string, FSWatcher | undefined>();
  #timer: NodeJS.Timeout | undefined;
  #firstEventAt = 0;
  #poll: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(onChange: () => void, opts: FolderWatcherOptions) {
    this.#onChange = onChange;
    this.#opts = opts;
  }

  /** Folders currently watched by fs.watch (not counting those left to the poll). */
  get watching(): string[] {
    return [...this.#watchers].filter(([, w]) => w !== undefined).map(([f]) => f);
  }

  /** True while any watcher or timer is open. */
  get active(): boolean {
    return this.watching.length > 0 || this.#poll !== undefined || this.#timer !== undefined;
  }

  /** Watches exactly `folders`: new ones are opened, ones no longer wanted closed. */
  setFolders(folders: Iterable<string>): void {
    if (this.#closed) return;
    const wanted = new Set(folders);
    for (const [folder, w] of this.#watchers) {
      if (!wanted.has(folder)) {
        w?.close();
        this.#watchers.delete(folder);
      }
    }
    for (const folder of wanted) if (!this.#watchers.has(folder)) this.#open(folder);
    if (wanted.size === 0) {
      this.#stopPoll();
    } else if (this.#poll === undefined && this.#opts.pollMs > 0) {
      this.#poll = setInterval(() => this.#onPoll(), this.#opts.pollMs);
      this.#poll.unref();
    }
  }

  #open(folder: string): void {
    try {
      const w = watch(folder, { persistent: false }, () => this.#schedule());
      w.on('error', (err) => {
        // The folder was removed or the watch limit hit: drop it and let the poll reopen it.
        w.close();
        if (this.#watchers.get(folder) === w) this.#watchers.set(folder, undefined);
        this.#opts.onWatchError?.(folder, err);
        this.#schedule();
      });
      this.#watchers.set(folder, w);
    } catch (err) {
      this.#watchers.set(folder, undefined);
      this.#opts.onWatchError?.(folder, err);
    }
  }

  #onPoll(): void {
    for (const [folder, w] of this.#watchers) if (w === undefined) this.#open(folder);
    this.#fire();
  }

  #schedule(): void {
    if (this.#closed) return;
    const now = Date.now();
    if (this.#timer === undefined) {
      this.#firstEventAt = now;
    } else {
      // Keep pushing the run back while events arrive, but not past maxWaitMs: a busy folder must not starve it.
      if (now - this.#firstEventAt >= this.#opts.maxWaitMs) return;
      clearTimeout(this.#timer);
    }
    this.#timer = setTimeout(() => this.#fire(), this.#opts.debounceMs);
    this.#timer.unref();
  }

  #fire(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#closed) this.#onChange();
  }

  #stopPoll(): void {
    if (this.#poll !== undefined) clearInterval(this.#poll);
    this.#poll = undefined;
  }

  /** Closes every watcher and timer; nothing fires afterwards. */
  close(): void {
    this.#closed = true;
    for (const w of this.#watchers.values()) w?.close();
    this.#watchers.clear();
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#stopPoll();
  }
}
