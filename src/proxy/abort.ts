/**
 * A request's abort signal without EventTarget. Node's AbortController builds
 * an EventTarget per request and dispatches through it, which the benchmark's
 * profile put at ~20 µs per request with the listeners legate adds and
 * removes per try. legate uses only the members below; Node's
 * timers/promises and p-retry, which take an AbortSignal, read the same ones
 * (`aborted`, `reason`, `throwIfAborted`, an 'abort' listener).
 */

/** The members of AbortSignal that legate's layers use. A real AbortSignal is one too. */
export interface AbortLike {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
  throwIfAborted(): void;
}

export class RequestAbort implements AbortLike {
  aborted = false;
  reason: unknown = undefined;
  #listeners: Array<() => void> | undefined;

  /** Every listener runs at most once: a request aborts at most once. */
  addEventListener(_type: 'abort', listener: () => void): void {
    (this.#listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const listeners = this.#listeners;
    if (listeners === undefined) return;
    const i = listeners.indexOf(listener);
    if (i !== -1) listeners.splice(i, 1);
  }

  throwIfAborted(): void {
    if (this.aborted) throw this.reason;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.#listeners;
    this.#listeners = undefined;
    if (listeners !== undefined) for (const listener of listeners) listener();
  }
}

/**
 * For the Node and p-retry APIs typed to take an AbortSignal: they read only
 * the AbortLike members (checked by the retry and deadline tests, which abort
 * back-off waits through them).
 */
export function asAbortSignal(signal: AbortLike): AbortSignal {
  return signal as unknown as AbortSignal;
}
