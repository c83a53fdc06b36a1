/**
 * Keeps V8's memory reducer able to act on an idle legate under Node 24+.
 *
 * V8's memory reducer is what gives a process's heap back to the operating
 * system once it goes quiet: every 8 s it estimates the allocation rate and,
 * when that is low, runs a few memory-reducing mark-compacts. Since V8 13.1
 * (Node 24) the estimate for the C++ heap (cppgc) decays exponentially and has
 * no floor, and a process that never allocated there has a rate of exactly 0,
 * which the check reads as the highest possible. legate never allocates there
 * by itself, so the reducer never judges it idle and only its watchdog, 100 s
 * after the last full collection (and pushed back by every one), runs it:
 * legate on Node 24.21 held 113 MiB with 1,000 idle connections where Node 20
 * gives the same process back to 71 MiB within 40 s (docs/benchmarks.md,
 * "Memory"). Upstream: https://issues.chromium.org/issues/570738027,
 * https://github.com/nodejs/node/issues/66564.
 *
 * Node's `vm.Script` is allocated on that heap: compiling a one-character
 * script now and then keeps the estimate a tiny positive number, which the
 * check reads as idle. A decayed value underflows back to 0 about 107 s after
 * the last allocation (the estimate halves every 100 ms), so one every 30 s,
 * on a timer that never holds the process open. Each costs a few
 * microseconds; nothing else in legate changes.
 */
import { Script } from 'node:vm';

/** Milliseconds between allocations: well inside the ~107 s after which the estimate is 0 again. */
export const MEMORY_REDUCER_NUDGE_MS = 30_000;

/** True for V8 versions whose allocation-rate estimate can be exactly 0 (13.1 and later). */
export function needsMemoryReducerNudge(v8Version: string = process.versions.v8): boolean {
  const [major = 0, minor = 0] = v8Version.split('.').map(Number);
  return major > 13 || (major === 13 && minor >= 1);
}

/**
 * Starts the periodic allocation when this V8 needs it; returns what stops it.
 * On V8 before 13.1 it does nothing: there the estimate is floored at 1 B/ms.
 */
export function startMemoryReducerNudge(intervalMs = MEMORY_REDUCER_NUDGE_MS): () => void {
  if (!needsMemoryReducerNudge()) return () => undefined;
  const allocate = (): void => {
    // The ContextifyScript wrapper is the cppgc allocation; the script is never run.
    new Script('0', { filename: 'legate:memory-reducer' });
  };
  allocate();
  const timer = setInterval(allocate, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
