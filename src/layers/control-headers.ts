/**
 * Reads the app's control headers (SPEC §4) into the request's policy. They
 * were already removed from what is forwarded; here they are validated (a bad
 * x-legate-* one is a 400 naming it, before anything is sent) and applied.
 * The Envoy request headers are read with Envoy's meaning, so an app written
 * for an Envoy sidecar works unchanged: a value Envoy could not parse is
 * ignored, as Envoy ignores it. x-legate-* wins when both are sent.
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

/** A decimal integer of at most 15 digits (surrounding spaces allowed), or undefined. */
function parseCount(raw: string): number | undefined {
  const v = raw.trim();
  return /^\d{1,15}$/.test(v) ? Number(v) : undefined;
}

function nonNegativeInt(name: string, raw: string, min: number): number {
  const n = parseCount(raw);
  if (n === undefined) {
    throw new BadControlHeaderError(name, `must be an integer >= ${min} of at most 15 digits, got ${JSON.stringify(raw.slice(0, 40))}`);
  }
  if (n < min) throw new BadControlHeaderError(name, `must be an integer >= ${min}, got ${n}`);
  return n;
}

/**
 * An Envoy header's number, or undefined when it is not one: Envoy ignores
 * a value it cannot parse (absl::SimpleAtoi fails and the route's setting
 * stands; only a router with `strict_check_headers` answers 400), so an app
 * written for an Envoy sidecar that sends one gets the same from legate.
 */
function envoyCount(headers: IncomingHttpHeaders, name: string): number | undefined {
  const raw = single(headers, name);
  return raw === undefined ? undefined : parseCount(raw);
}

/** The entries of a comma-separated header, trimmed and lower-cased. */
function entries(raw: string): string[] {
  return raw
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== '');
}

function list(name: string, raw: string): string[] {
  const items = entries(raw);
  if (items.length > MAX_LIST) throw new BadControlHeaderError(name, `lists at most ${MAX_LIST} entries, got ${items.length}`);
  return items;
}

/** x-envoy-retry-on's names; undefined for a list longer than any policy (ignored, not refused). */
function envoyList(raw: string): string[] | undefined {
  const items = entries(raw);
  return items.length > MAX_LIST ? undefined : items;
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
  const retries = single(headers, 'x-legate-max-retries');
  if (retries !== undefined) {
    policy.retries = Math.min(nonNegativeInt('x-legate-max-retries', retries, 0), route.maxFromHeader);
  } else {
    const envoy = envoyCount(headers, 'x-envoy-max-retries');
    if (envoy !== undefined) policy.retries = Math.min(envoy, route.maxFromHeader);
  }

  const on = single(headers, 'x-legate-retry-on');
  if (on !== undefined) {
    policy.retryOn = retryOn('x-legate-retry-on', on);
  } else {
    const envoyOn = single(headers, 'x-envoy-retry-on');
    // Names legate cannot honour are ignored, as Envoy ignores unknown ones; a list too long to be a
    // policy is ignored whole, as a value Envoy cannot parse would be.
    const items = envoyOn === undefined ? undefined : envoyList(envoyOn);
    if (items !== undefined) policy.retryOn = [...new Set(items.flatMap((i) => ENVOY_RETRY_ON[i] ?? []))];
  }

  const timeout = single(headers, 'x-legate-timeout-ms');
  if (timeout !== undefined) {
    policy.timeoutMs = Math.min(nonNegativeInt('x-legate-timeout-ms', timeout, 1), MAX_MS);
  } else {
    // Envoy: 0 disables the timeout.
    const envoy = envoyCount(headers, 'x-envoy-upstream-rq-timeout-ms');
    if (envoy !== undefined) policy.timeoutMs = Math.min(envoy, MAX_MS);
  }

  const perTry = single(headers, 'x-legate-per-try-timeout-ms');
  if (perTry !== undefined) {
    policy.perTryTimeoutMs = Math.min(nonNegativeInt('x-legate-per-try-timeout-ms', perTry, 1), MAX_MS);
  } else {
    const envoy = envoyCount(headers, 'x-envoy-upstream-rq-per-try-timeout-ms');
    if (envoy !== undefined) policy.perTryTimeoutMs = Math.min(envoy, MAX_MS);
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
