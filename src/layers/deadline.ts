/**
 * The whole-exchange deadline (`timeout`, or `x-legate-timeout-ms`): it
 * covers every try, all back-off and the response body. When it passes the
 * request is aborted: the try in flight is destroyed, or the body stream is
 * cut, and the app gets `504 upstream-timeout` if nothing was sent yet.
 */
import { performance } from 'node:perf_hooks';
import { LegateError } from '../errors.js';
import type { RequestContext } from '../proxy/context.js';
import type { Layer } from '../proxy/types.js';

export function createDeadlineLayer(): Layer {
  return (next) => (req) => {
    const ms = req.policy.timeoutMs;
    if (ms > 0) {
      req.deadline = req.startedAt + ms;
      const remaining = req.deadline - performance.now();
      // Built only when the deadline passes: an Error captures a stack, which costs every request otherwise.
      const timeout = (): LegateError => new LegateError('upstream-timeout', `no complete response within ${ms} ms`);
      if (remaining <= 0) return Promise.reject(timeout());
      (req as RequestContext).schedule(remaining, () => req.abort(timeout()));
    }
    return next(req);
  };
}
