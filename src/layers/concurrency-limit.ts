/**
 * Concurrency limits per route (SPEC §12): at most `maxConcurrent` requests
 * of the route in flight, up to `maxPending` more waiting in FIFO order, and
 * `503 overloaded` beyond that, without contacting the upstream.
 *
 * A slot is held from the moment it is granted until the response body is
 * done (the chain returns at the response head, so the layer waits for the
 * body's 'close'), and released exactly once whatever the outcome: error,
 * app gone, deadline, or a failure while the body streams. A waiting request
 * leaves the queue when the app hangs up or its deadline passes.
 */
import type { AbortLike } from '../proxy/abort.js';
import { performance } from 'node:perf_hooks';
import { LegateError } from '../errors.js';
import type { Handler, Layer, UpstreamResponse } from '../proxy/types.js';
import type { MarkedRequest } from './rate-limit.js';

/** The route-state key of a route's limiter (kept across reloads while the policy is unchanged). */
export const CONCURRENCY_STATE = 'concurrency';

/** Gives a slot back; calling it more than once is harmless. */
export type Release = () => void;

interface Waiter {
  grant(release: Release): void;
}

/**
 * Slots and a FIFO queue of waiters. A granted slot passes straight from a
 * releasing request to the oldest waiter, so a burst of new arrivals cannot
 * overtake requests that were already queued.
 */
export class ConcurrencyLimiter {
  readonly maxConcurrent: number;
  readonly maxPending: number;
  #active = 0;
  // A Set keeps insertion order and removes a waiter that gives up in O(1).
  readonly #queue = new Set<Waiter>();

  constructor(maxConcurrent: number, maxPending: number) {
    this.maxConcurrent = maxConcurrent;
    this.maxPending = maxPending;
  }

  /** Requests holding a slot. */
  get active(): number {
    return this.#active;
  }

  /** Requests waiting for one. */
  get pending(): number {
    return this.#queue.size;
  }

  /** A slot now, or undefined when all are taken. */
  tryAcquire(): Release | undefined {
    if (this.#active >= this.maxConcurrent || this.#queue.size > 0) return undefined;
    this.#active++;
    return this.#release();
  }

  /**
   * Waits for a slot. Rejects with `503 overloaded` when the queue is full,
   * with the signal's reason when it aborts, and with `504 upstream-timeout`
   * when `waitMs` passes first.
   */
  acquire(signal: AbortLike, waitMs: number, route: string): Promise<Release> {
    const now = this.tryAcquire();
    if (now !== undefined) return Promise.resolve(now);
    if (this.#queue.size >= this.maxPending) {
      return Promise.reject(
        new LegateError(
          'overloaded',
          `route ${route} has ${this.#active} requests in flight (maxConcurrent ${this.maxConcurrent}) and ${this.#queue.size} waiting (maxPending ${this.maxPending}); the upstream was not contacted`,
        ),
      );
    }
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise<Release>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const leave = (err: Error): void => {
        if (!this.#queue.delete(waiter)) return;
        cleanup();
        reject(err);
      };
      const onAbort = (): void => leave(signal.reason as Error);
      const cleanup = (): void => {
        signal.removeEventListener('abort', onAbort);
        if (timer !== undefined) clearTimeout(timer);
      };
      const waiter: Waiter = {
        grant: (release) => {
          cleanup();
          resolve(release);
        },
      };
      this.#queue.add(waiter);
      signal.addEventListener('abort', onAbort, { once: true });
      if (Number.isFinite(waitMs)) {
        timer = setTimeout(
          () =>
            leave(
              new LegateError(
                'upstream-timeout',
                `no concurrency slot on route ${route} became free within the request deadline; the upstream was not contacted`,
              ),
            ),
          Math.max(0, waitMs),
        );
      }
    });
  }

  #release(): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#queue.values().next();
      if (next.done === true) {
        this.#active--;
        return;
      }
      // The slot moves to the oldest waiter: `active` stays as it is.
      this.#queue.delete(next.value);
      next.value.grant(this.#release());
    };
  }
}

/** The concurrency limit layer. Placed above the deadline layer, so it reads the deadline from the policy. */
export function createConcurrencyLimitLayer(): Layer {
  return (next) => (req) => {
    const { maxConcurrent, maxPending } = req.route.settings.limits;
    // No limit: no limiter and no extra promise on the hot path.
    if (maxConcurrent <= 0) return next(req);
    const limiter = req.route.state.get(CONCURRENCY_STATE, () => new ConcurrencyLimiter(maxConcurrent, maxPending));
    return withSlot(limiter, req, next);
  };
}

async function withSlot(limiter: ConcurrencyLimiter, req: MarkedRequest, next: Handler): Promise<UpstreamResponse> {
  let release = limiter.tryAcquire();
  if (release === undefined) {
    const began = performance.now();
    const timeoutMs = req.policy.timeoutMs;
    const waitMs = timeoutMs > 0 ? req.startedAt + timeoutMs - began : Infinity;
    try {
      release = await limiter.acquire(req.signal, waitMs, req.route.name);
    } catch (e) {
      const code = (e as Partial<LegateError>).code;
      if (code === 'overloaded' || code === 'upstream-timeout') req.limited = 'concurrency';
      throw e;
    } finally {
      req.queuedMs = Math.round((performance.now() - began) * 1000) / 1000;
    }
  }
  let response: UpstreamResponse;
  try {
    response = await next(req);
  } catch (e) {
    release();
    throw e;
  }
  // The slot is held until the body is done: ended, failed or cut.
  response.body.onSettled(release);
  return response;
}
