/**
 * Reads the app's control headers (SPEC §4) into the request's policy. They
 * were already removed from what is forwarded; here they are validated (a bad
 * one is a 400 naming it, before anything is sent) and applied. The Envoy
 * request headers are read with Envoy's meaning, so an app written for an
 * Envoy sidecar works unchanged; x-legate-* wins when both are sent.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { OptOut } from '../config/schema.js';
import { BadControlHeaderError } from '../errors.js';
import type { Layer, RequestPolicy } from '../proxy/types.js';

const RETRY_CONDITIONS = new Set(['connect-failure', 'reset', 'timeout', '5xx', 'gateway-error', 'retriable-4xx']);
const OPT_OUTS = new Set<string>(['retry', 'circuit-breaker', 'log']);
/**
 * Envoy retry-on names legate can honour, mapped to its own conditions. Envoy
 * treats a reset, a connect failure and a per-try timeout as a 5xx (and as a
 * gateway error), and `reset` covers all three (router/retry_state_impl.cc).
 * Names legate cannot honour are ignored, as Envoy ignores unknown ones.
 */
const ENVOY_RETRY_ON: Readonly<Record<string, readonly string[]>> = {
  '5xx': ['5xx', 'connect-failure', 'reset', 'timeout'],
  'gateway-error': ['gateway-error', 'connect-failure', 'reset', 'timeout'],
  reset: ['reset', 'connect-failure', 'timeout'],
  'connect-failure': ['connect-failure'],
  'retriable-4xx': ['retriable-4xx'],
  'refused-stream': ['reset'],
};
/** Upper bound of list headers: a 10,000-entry list is an attack, not a policy. */
const MAX_LIST = 32;
/** No deadline longer than a day is meaningful for one request. */
const MAX_MS = 86_400_000;

function single(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

function nonNegativeInt(name: string, raw: string, min: number): number {
  const v = raw.trim();
  if (!/^\d{1,15}$/.test(v)) {
    throw new BadControlHeaderError(name, `must be an integer >= ${min} of at most 15 digits, got ${JSON.stringify(raw.slice(0, 40))}`);
  }
  const n = Number(v);
  if (n < min) throw new BadControlHeaderError(name, `must be an integer >= ${min}, got ${n}`);
  return n;
}

function list(name: string, raw: string): string[] {
  const items = raw
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== '');
  if (items.length > MAX_LIST) throw new BadControlHeaderError(name, `lists at most ${MAX_LIST} entries, got ${items.length}`);
  return items;
}

function retryOn(name: string, raw: string): Array<string | number> {
  const out: Array<string | number> = [];
  for (const item of list(name, raw)) {
    if (RETRY_CONDITIONS.has(item)) out.push(item);
    else if (/^[1-5]\d\d$/.test(item)) out.push(Number(item));
    else {
      throw new BadControlHeaderError(
        name,
        `unknown retry condition ${JSON.stringify(item.slice(0, 40))}; use connect-failure, reset, timeout, 5xx, gateway-error, retriable-4xx or a status code`,
      );
    }
  }
  return out;
}

/** Applies the control headers of `headers` to `policy`, within what the route allows. */
export function applyControlHeaders(
  headers: IncomingHttpHeaders,
  policy: RequestPolicy,
  route: { readonly maxFromHeader: number; readonly optOut: ReadonlySet<OptOut> },
): void {
  const envoyRetries = single(headers, 'x-envoy-max-retries');
  const retries = single(headers, 'x-legate-max-retries');
  if (retries !== undefined || envoyRetries !== undefined) {
    const name = retries !== undefined ? 'x-legate-max-retries' : 'x-envoy-max-retries';
    policy.retries = Math.min(nonNegativeInt(name, (retries ?? envoyRetries) as string, 0), route.maxFromHeader);
  }

  const on = single(headers, 'x-legate-retry-on');
  if (on !== undefined) {
    policy.retryOn = retryOn('x-legate-retry-on', on);
  } else {
    const envoyOn = single(headers, 'x-envoy-retry-on');
    if (envoyOn !== undefined) {
      const mapped = list('x-envoy-retry-on', envoyOn).flatMap((i) => ENVOY_RETRY_ON[i] ?? []);
      policy.retryOn = [...new Set(mapped)];
    }
  }

  const timeout = single(headers, 'x-legate-timeout-ms');
  if (timeout !== undefined) {
    policy.timeoutMs = Math.min(nonNegativeInt('x-legate-timeout-ms', timeout, 1), MAX_MS);
  } else {
    const envoy = single(headers, 'x-envoy-upstream-rq-timeout-ms');
    // Envoy: 0 disables the timeout.
    if (envoy !== undefined) policy.timeoutMs = Math.min(nonNegativeInt('x-envoy-upstream-rq-timeout-ms', envoy, 0), MAX_MS);
  }

  const perTry = single(headers, 'x-legate-per-try-timeout-ms');
  if (perTry !== undefined) {
    policy.perTryTimeoutMs = Math.min(nonNegativeInt('x-legate-per-try-timeout-ms', perTry, 1), MAX_MS);
  } else {
    const envoy = single(headers, 'x-envoy-upstream-rq-per-try-timeout-ms');
    if (envoy !== undefined) {
      policy.perTryTimeoutMs = Math.min(nonNegativeInt('x-envoy-upstream-rq-per-try-timeout-ms', envoy, 0), MAX_MS);
    }
  }

  const optOut = single(headers, 'x-legate-opt-out');
  if (optOut !== undefined) {
    for (const item of list('x-legate-opt-out', optOut)) {
      if (!OPT_OUTS.has(item)) {
        throw new BadControlHeaderError(
          'x-legate-opt-out',
          `unknown step ${JSON.stringify(item.slice(0, 40))}; use retry, circuit-breaker or log`,
        );
      }
      const step = item as OptOut;
      if (route.optOut.has(step)) policy.optOut.add(step);
      else if (!policy.optOutDenied.includes(step)) policy.optOutDenied.push(step);
    }
    if (policy.optOut.has('retry')) policy.retries = 0;
  }
}

/**
 * Outermost layer: turns control headers into policy, or answers 400 before
 * anything else runs. Headers from untrusted peers are ignored (SPEC §4).
 */
export function createControlHeaderLayer(): Layer {
  return (next) => (req) => {
    if (req.trustControlHeaders) {
      try {
        applyControlHeaders(req.appHeaders, req.policy, {
          maxFromHeader: req.route.settings.retry.maxFromHeader,
          optOut: req.route.settings.optOut,
        });
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return next(req);
  };
}
