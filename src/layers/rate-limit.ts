/**
 * Outbound rate limiting per route (SPEC §12): a token bucket that refills at
 * `perSecond` and holds at most `burst` tokens, one taken per request (not
 * per try: retries are governed by the retry budget). Over the limit the app
 * gets `429 rate-limited` at once with `Retry-After`, and nothing is sent.
 * There is no opt-out: the limit protects the upstream, not the app.
 */
import { performance } from 'node:perf_hooks';
import { LegateError } from '../errors.js';
import type { Layer, ProxyRequest } from '../proxy/types.js';

/** The route-state key of a route's bucket (kept across reloads while the policy is unchanged). */
export const RATE_LIMIT_STATE = 'rate-limit';

/**
 * What the limit layers record on the request for the access log and
 * metrics, which read the finished request (observer.ts).
 */
export interface LimitMarks {
  /** Which limit answered the request instead of the upstream. */
  limited?: 'rate' | 'concurrency';
  /** Milliseconds the request waited for a concurrency slot, when it had to wait. */
  queuedMs?: number;
}

/** The request as the limit layers see it: a ProxyRequest they may mark. */
export type MarkedRequest = ProxyRequest & LimitMarks;

/**
 * A token bucket on the `performance.now()` clock. Refilled lazily when a
 * token is asked for, so an idle route costs nothing and needs no timer.
 */
export class TokenBucket {
  readonly perSecond: number;
  readonly burst: number;
  #tokens: number;
  #last: number;

  constructor(perSecond: number, burst: number, now = performance.now()) {
    this.perSecond = perSecond;
    this.burst = burst;
    // A fresh bucket is full: the first `burst` requests pass at once.
    this.#tokens = burst;
    this.#last = now;
  }

  #refill(now: number): void {
    if (now > this.#last) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) / 1000) * this.perSecond);
      this.#last = now;
    }
  }

  /** Tokens available now (fractional). */
  available(now = performance.now()): number {
    this.#refill(now);
    return this.#tokens;
  }

  /** Takes one token when there is one; false when the bucket is spent. */
  tryTake(now = performance.now()): boolean {
    this.#refill(now);
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Whole seconds until a token will be there, at least 1 (what `Retry-After` says). */
  retryAfterSeconds(now = performance.now()): number {
    this.#refill(now);
    const missing = Math.max(0, 1 - this.#tokens);
    return Math.max(1, Math.ceil(missing / this.perSecond));
  }
}

/** The rate limit layer: answers 429 before anything below it runs. */
export function createRateLimitLayer(): Layer {
  return (next) => (req) => {
    const route = req.route;
    const limit = route.settings.rateLimit;
    if (limit === undefined) return next(req);
    const bucket = route.state.get(RATE_LIMIT_STATE, () => new TokenBucket(limit.perSecond, limit.burst));
    const now = performance.now();
    if (bucket.tryTake(now)) return next(req);
    (req as MarkedRequest).limited = 'rate';
    return Promise.reject(
      new LegateError('rate-limited', `route ${route.name} is over its rate limit of ${limit.perSecond}/s (burst ${limit.burst}); the upstream was not contacted`, {
        retryAfterSeconds: bucket.retryAfterSeconds(now),
      }),
    );
  };
}
