/**
 * Retries (SPEC §6), on p-retry. p-retry runs the loop, counts retries and
 * stops on the request's abort signal; legate decides in `shouldRetry`
 * whether a failure may be retried (condition, method safety, replayable
 * body, deadline, budget, breaker) and waits its own back-off there, because
 * SPEC's full-jitter and `Retry-After` rules are not p-retry's formula.
 *
 * Retries happen inside the chain, before respond.ts writes anything, so no
 * retry can follow a response byte that reached the app.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pRetry from 'p-retry';
import type { RouteSettings } from '../config/model.js';
import { isLegateError, UpstreamError } from '../errors.js';
import { asAbortSignal, RequestAbort } from '../proxy/abort.js';
import { bufferForReplay } from '../proxy/body.js';
import type { RequestContext } from '../proxy/context.js';
import type { Handler, Layer, ProxyRequest, UpstreamResponse } from '../proxy/types.js';
import { RetryBudget } from '../runtime/retry-budget.js';
import type { Endpoint } from '../runtime/route-runtime.js';
import { TRY_SIGNAL, type TrySignalCarrier } from './forward.js';

/** Methods that may be sent twice without changing the outcome (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
/** Without a deadline, a `Retry-After` longer than this is not waited for. */
const MAX_RETRY_AFTER_MS = 60_000;
/** Discarded responses up to this size are drained so their connection is reused. */
const DRAIN_LIMIT = 64 * 1024;

/** A response the retry policy wants to try again; carries it so the last one can be returned. */
export class RetryableResponse extends Error {
  readonly response: UpstreamResponse;
  constructor(response: UpstreamResponse) {
    super(`upstream answered ${response.status}`);
    this.name = 'RetryableResponse';
    this.response = response;
  }
}

/** Whether `status` meets one of the retry conditions in `on`. */
export function statusMatches(status: number, on: ReadonlyArray<string | number>): boolean {
  for (const c of on) {
    if (c === status) return true;
    if (c === '5xx' && status >= 500 && status <= 599) return true;
    if (c === 'gateway-error' && (status === 502 || status === 503 || status === 504)) return true;
    if (c === 'retriable-4xx' && status === 409) return true;
  }
  return false;
}

/** The retry condition a failed try meets: a class of failure or a status; undefined when it is never retried. */
export function failureCondition(error: unknown): 'connect-failure' | 'reset' | 'timeout' | number | undefined {
  if (error instanceof RetryableResponse) return error.response.status;
  if (error instanceof UpstreamError) {
    if (error.code === 'upstream-connect-failure') return 'connect-failure';
    if (error.code === 'upstream-reset') return 'reset';
    if (error.code === 'upstream-timeout') return 'timeout';
  }
  return undefined;
}

/** Seconds or an HTTP date, as ms from now; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined) return undefined;
  if (/^\d{1,10}$/.test(v.trim())) return Number(v.trim()) * 1000;
  // An HTTP-date names its month; Date.parse alone would read "-1" as a year.
  if (!/\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b/.test(v)) return undefined;
  const date = Date.parse(v);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Full jitter (as Envoy and AWS): uniform in [0, min(max, base·2^n)). */
export function backoffMs(retryNumber: number, baseMs: number, maxMs: number, random = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** retryNumber);
  return Math.floor(random() * ceiling);
}

function mayResend(req: ProxyRequest, settings: RouteSettings): boolean {
  return IDEMPOTENT.has(req.method) || req.appHeaders['idempotency-key'] !== undefined || settings.retry.methods.has(req.method);
}

function discard(response: UpstreamResponse): void {
  const length = Number(response.headers['content-length'] ?? NaN);
  // Reading a small body keeps the keep-alive connection; a large or unknown one is cheaper to drop.
  if (length <= DRAIN_LIMIT) response.body.drain();
  else response.body.destroy();
}

export interface RetryLayerOptions {
  /** False when every endpoint's breaker is open: an open breaker ends retrying. */
  readonly anyEndpointUsable: (req: ProxyRequest, endpoints: readonly Endpoint[]) => boolean;
}

/** One try, bounded by the per-try timeout; a status the policy retries is thrown as RetryableResponse. */
async function tryOnce(next: Handler, req: ProxyRequest, retryStatuses: boolean): Promise<UpstreamResponse> {
  const perTry = req.policy.perTryTimeoutMs;
  let timer: NodeJS.Timeout | undefined;
  if (perTry > 0) {
    const controller = new RequestAbort();
    (req as ProxyRequest & TrySignalCarrier)[TRY_SIGNAL] = controller;
    timer = setTimeout(() => {
      controller.abort(new UpstreamError('upstream-timeout', req.endpoint?.key ?? '', `no response head within the per-try timeout of ${perTry} ms`));
    }, perTry);
  }
  try {
    const response = await next(req);
    if (retryStatuses && statusMatches(response.status, req.policy.retryOn)) throw new RetryableResponse(response);
    return response;
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}

/** A request that opted out of circuit breaking is not stopped by one either. */
function everyBreakerOpen(req: ProxyRequest, opts: RetryLayerOptions): boolean {
  return !req.policy.optOut.has('circuit-breaker') && !opts.anyEndpointUsable(req, req.route.balancer.endpoints);
}

/**
 * Whether the try that failed with `error` may be followed by another, and
 * if so, waits the back-off. `retriesConsumed` counts retries already made.
 */
async function decideRetry(req: ProxyRequest, opts: RetryLayerOptions, budget: RetryBudget, error: unknown, retriesConsumed: number): Promise<boolean> {
  const settings = req.route.settings;
  const condition = failureCondition(error);
  if (condition === undefined || req.signal.aborted) return false;
  const enabled = typeof condition === 'number' ? statusMatches(condition, req.policy.retryOn) : req.policy.retryOn.includes(condition);
  if (!enabled) return false;
  // Only a connect failure proves the upstream never saw the request.
  if (condition !== 'connect-failure' && !mayResend(req, settings)) return false;
  if (!req.body.replayable && req.body.consumed) return false;
  if (everyBreakerOpen(req, opts)) return false;

  let wait = backoffMs(retriesConsumed, settings.retry.backoff.baseMs, settings.retry.backoff.maxMs);
  if (error instanceof RetryableResponse && error.response.status === 503) {
    const after = parseRetryAfter(error.response.headers['retry-after']);
    if (after !== undefined) {
      if (req.deadline === Infinity && after > MAX_RETRY_AFTER_MS) return false;
      wait = after;
    }
  }
  if (performance.now() + wait >= req.deadline) return false;
  if (!budget.tryWithdraw()) {
    (req as RequestContext).budgetExhausted = true;
    return false;
  }
  if (wait > 0) {
    try {
      await sleep(wait, undefined, { signal: asAbortSignal(req.signal) });
    } catch (e) {
      // Abandoned during the back-off (deadline, app gone): the response held for the app goes too.
      if (error instanceof RetryableResponse) error.response.body.destroy();
      throw e;
    }
  }
  // A breaker may have opened during the back-off: that ends retrying too, and the app gets this
  // try's real outcome rather than a circuit-open for a try that never happened.
  if (everyBreakerOpen(req, opts)) return false;
  const last = req.tries[req.tries.length - 1];
  if (last !== undefined) last.retryReason = String(condition);
  if (error instanceof RetryableResponse) discard(error.response);
  return true;
}

/** The outcome of the last try: a held response is the answer; an abort surfaces as its reason (the deadline's 504). */
function settle(req: ProxyRequest, e: unknown): UpstreamResponse {
  if (e instanceof RetryableResponse) return e.response;
  if ((e as Error).name === 'AbortError' && isLegateError(req.signal.reason)) throw req.signal.reason;
  throw e;
}

export function createRetryLayer(opts: RetryLayerOptions): Layer {
  return (next) => async (req) => {
    const settings = req.route.settings;
    const budget = req.route.state.get('retry-budget', () => new RetryBudget(settings.retry.budget.ratio, settings.retry.budget.minPerSecond));
    budget.recordRequest();
    const retries = req.policy.retries;
    if (retries === 0) return tryOnce(next, req, false);

    req.body = await bufferForReplay(req.raw, req.body, settings.retry.bufferLimitBytes, req.signal);
    // The first try runs on its own: it almost always succeeds, and p-retry's loop costs a few
    // microseconds per request. p-retry takes over only once a retry is decided.
    try {
      return await tryOnce(next, req, true);
    } catch (first) {
      try {
        if (!(await decideRetry(req, opts, budget, first, 0))) return settle(req, first);
      } catch (e) {
        return settle(req, e);
      }
    }
    try {
      return await pRetry(() => tryOnce(next, req, true), {
        retries: retries - 1,
        minTimeout: 0,
        factor: 1,
        signal: asAbortSignal(req.signal),
        shouldRetry: ({ error, retriesConsumed }) => decideRetry(req, opts, budget, error, retriesConsumed + 1),
      });
    } catch (e) {
      return settle(req, e);
    }
  };
}
