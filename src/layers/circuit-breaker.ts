/**
 * Circuit breaking (SPEC §7) on opossum: one breaker per endpoint of a
 * route (a single-endpoint route thus has one per route). It counts every
 * try; the failures are the route's `failOn`, including 5xx responses, which
 * opossum would otherwise see as successes. Open: `503 circuit-open` with
 * `Retry-After`, nothing sent. After `resetTimeout` one trial goes through.
 *
 * opossum runs the state machine, the reset timer and the rolling window;
 * legate decides when a closed breaker opens, because opossum's own rule
 * divides by every call fired — tries still in flight and calls it rejected
 * while open included — which is not SPEC's "failing share of the tries".
 */
import { EventEmitter } from 'node:events';
import CircuitBreaker from 'opossum';
import { performance } from 'node:perf_hooks';
import type { CircuitBreakerSettings } from '../config/model.js';
import { LegateError, isLegateError } from '../errors.js';
import type { BreakerState, Observer } from '../observability/observer.js';
import type { Handler, Layer, ProxyRequest, UpstreamResponse } from '../proxy/types.js';
import type { Endpoint, RouteRuntime } from '../runtime/route-runtime.js';

/** Buckets of the rolling window. */
const BUCKETS = 10;

/** A response that counts as a failure: thrown through opossum, then handed back. */
class CountedFailure extends Error {
  readonly response: UpstreamResponse;
  constructor(response: UpstreamResponse) {
    super(`upstream answered ${response.status}`);
    this.response = response;
  }
}

const ERROR_CONDITION: Readonly<Record<string, string>> = {
  'upstream-connect-failure': 'connect-failure',
  'upstream-reset': 'reset',
  'upstream-timeout': 'timeout',
  'upstream-tls-failure': 'tls-failure',
};

type Counter = Exclude<keyof CircuitBreaker.Bucket, 'percentiles' | 'latencyTimes'>;

/**
 * The breaker's rolling window, counting calls without keeping their run times.
 *
 * opossum's Status pushes every call's run time into the current bucket (for
 * latency percentiles) even with `rollingPercentilesEnabled: false`: opossum
 * 9.0.0 and 10.0.0, `lib/status.js` `increment`. legate reads only the counts.
 * Those arrays, a number per try held for the whole window (10 s by default),
 * were half of what legate promoted to V8's old space at a steady 1,000 req/s
 * (`--trace-gc-nvp`: 43–51 → 24–27 KB per 1,000 requests), where only a
 * mark-compact, a stall of 10–20 ms, frees them (docs/benchmarks.md, "The
 * 16 KiB tail").
 */
function countsOnlyStatus(options: CircuitBreaker.StatusOptions & { rotateBucketController: EventEmitter }): CircuitBreaker.Status {
  const status = CircuitBreaker.newStatus(options);
  // The current bucket, looked up once per rotation (`window` copies the array): this listener runs after
  // the Status's own, which put the new bucket first.
  let current = status.window[0];
  options.rotateBucketController.on('rotate', () => (current = status.window[0]));
  Object.defineProperty(status, 'increment', {
    value(property: Counter): void {
      if (current !== undefined) current[property]++;
    },
  });
  return status;
}

function statusFails(status: number, failOn: CircuitBreakerSettings['failOn']): boolean {
  for (const c of failOn) {
    if (c === status) return true;
    if (c === '5xx' && status >= 500) return true;
    if (c === 'gateway-error' && (status === 502 || status === 503 || status === 504)) return true;
  }
  return false;
}

/** A breaker with the bookkeeping legate adds: its trip rule, when it opened, and its dispose. */
export class EndpointBreaker {
  readonly breaker: CircuitBreaker<[ProxyRequest, Handler], UpstreamResponse>;
  readonly #resetTimeoutMs: number;
  /** Drives the rolling window's buckets, so a close can empty it. */
  readonly #rotate = new EventEmitter();
  readonly #rotation: NodeJS.Timeout;
  #openedAt = 0;
  #state: BreakerState = 'closed';

  constructor(settings: CircuitBreakerSettings, onTransition: (from: BreakerState, to: BreakerState) => void) {
    this.#resetTimeoutMs = settings.resetTimeoutMs;
    const failOn = settings.failOn;
    // One judge per breaker, chained onto each try's promise: no async frame per try.
    const judge = (response: UpstreamResponse): UpstreamResponse => {
      if (statusFails(response.status, failOn)) throw new CountedFailure(response);
      return response;
    };
    const window = {
      rollingCountTimeout: settings.windowMs,
      rollingCountBuckets: BUCKETS,
      rotateBucketController: this.#rotate,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
    };
    this.breaker = new CircuitBreaker<[ProxyRequest, Handler], UpstreamResponse>(
      (req, next) => next(req).then(judge),
      {
        // Deadlines are legate's own (deadline and per-try timeout); opossum's would leave the socket running.
        timeout: false,
        resetTimeout: settings.resetTimeoutMs,
        ...window,
        status: countsOnlyStatus(window),
        // Never reached: a closed breaker is opened by #judge; opossum still reopens on a failed trial.
        volumeThreshold: Number.MAX_SAFE_INTEGER,
        // True means "not a failure of the upstream": failures outside failOn, and tries that ended without
        // any word from it (the app hung up). Such a try cannot close a half-open breaker, though: it reopens.
        errorFilter: (err: unknown) => {
          if (err instanceof CountedFailure) return false;
          const condition = isLegateError(err) ? ERROR_CONDITION[err.code] : undefined;
          if (condition === undefined) return !this.breaker.halfOpen;
          return !failOn.includes(condition as never);
        },
      },
    );
    this.#rotation = setInterval(() => this.#rotate.emit('rotate'), Math.max(1, Math.floor(settings.windowMs / BUCKETS)));
    this.#rotation.unref();
    // Runs after opossum has counted the failure.
    this.breaker.on('failure', () => this.#judge(settings));
    const move = (to: BreakerState) => () => {
      const from = this.#state;
      this.#state = to;
      if (to === 'open') this.#openedAt = performance.now();
      // A breaker that closes starts a fresh window: the failures that opened it, and the calls refused
      // while it was open, say nothing about the upstream that just answered the trial.
      if (to === 'closed') for (let i = 0; i < BUCKETS; i++) this.#rotate.emit('rotate');
      if (from !== to) onTransition(from, to);
    };
    this.breaker.on('open', move('open'));
    this.breaker.on('halfOpen', move('half-open'));
    this.breaker.on('close', move('closed'));
  }

  /** Opens a closed breaker once the window holds volumeThreshold finished tries and the failing share reached the threshold. */
  #judge(settings: CircuitBreakerSettings): void {
    if (!this.breaker.closed) return;
    const { failures, successes } = this.breaker.stats;
    const tries = failures + successes;
    if (tries >= settings.volumeThreshold && failures * 100 >= settings.errorThresholdPercentage * tries) this.breaker.open();
  }

  get state(): BreakerState {
    return this.#state;
  }

  /** False while open, and while half-open with its one trial already in flight. */
  allows(): boolean {
    return this.breaker.closed || this.breaker.pendingClose;
  }

  /** Seconds until a trial request will be let through. */
  retryAfterSeconds(): number {
    return Math.max(1, Math.ceil((this.#openedAt + this.#resetTimeoutMs - performance.now()) / 1000));
  }

  dispose(): void {
    clearInterval(this.#rotation);
    this.breaker.shutdown();
  }
}

/** The breaker of one endpoint of a route, created on first use. */
export function breakerFor(route: RouteRuntime, endpoint: Endpoint, observer: Observer): EndpointBreaker {
  return endpoint.state.get('breaker', () => {
    const name = route.name;
    return new EndpointBreaker(route.settings.circuitBreaker, (from, to) => observer.breakerTransition(name, endpoint.key, from, to));
  });
}

/** Endpoint filter for the balancer and the retry layer: is this endpoint's breaker letting requests through? */
export function endpointUsable(route: RouteRuntime, endpoint: Endpoint, observer: Observer): boolean {
  return !route.settings.circuitBreaker.enabled || breakerFor(route, endpoint, observer).allows();
}

export function createCircuitBreakerLayer(observer: Observer): Layer {
  return (next) => async (req) => {
    const route = req.route;
    const endpoint = req.endpoint;
    if (!route.settings.circuitBreaker.enabled || endpoint === undefined || req.policy.optOut.has('circuit-breaker')) {
      return next(req);
    }
    const b = breakerFor(route, endpoint, observer);
    try {
      return await b.breaker.fire(req, next);
    } catch (e) {
      if (e instanceof CountedFailure) return e.response;
      if ((e as { code?: string }).code === 'EOPENBREAKER') {
        throw new LegateError('circuit-open', `circuit breaker for ${endpoint.key} on route ${route.name} is open`, {
          retryAfterSeconds: b.retryAfterSeconds(),
        });
      }
      throw e;
    }
  };
}
