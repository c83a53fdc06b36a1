/**
 * First-match routing in file order. Each route's predicate is compiled once
 * when the config loads, so a lookup is a loop of cheap string compares.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { MatchSettings, RouteSettings } from '../config/model.js';
import { LegateError, RouteNotFoundError } from '../errors.js';
import { pathHasPrefix, type RequestTarget } from './target.js';

export type RoutePredicate = (method: string, target: RequestTarget, headers: IncomingHttpHeaders) => boolean;

function compileHost(pattern: string): (target: RequestTarget) => boolean {
  const withPort = pattern.includes(':');
  if (pattern.startsWith('*.')) {
    const suffix = pattern.slice(1); // ".example.com"
    return withPort
      ? (t) => t.authority.endsWith(suffix) && t.authority.length > suffix.length
      : (t) => t.hostname.endsWith(suffix) && t.hostname.length > suffix.length;
  }
  return withPort ? (t) => t.authority === pattern : (t) => t.hostname === pattern;
}

/** Compiles a route's `match:` into one predicate. */
export function compileMatch(match: MatchSettings): RoutePredicate {
  const checks: RoutePredicate[] = [];
  const hostCheck = match.host === undefined ? undefined : compileHost(match.host);
  // An absolute-form request names its destination; only a route that names
  // that host may take it, so legate never forwards to a host nobody configured.
  checks.push(hostCheck === undefined ? (_m, t) => t.form === 'origin' : (_m, t) => hostCheck(t));
  if (match.pathPrefix !== undefined) {
    const prefix = match.pathPrefix;
    checks.push((_m, t) => pathHasPrefix(t.path, prefix));
  }
  if (match.methods !== undefined) {
    const methods = match.methods;
    checks.push((m) => methods.has(m));
  }
  if (match.headers !== undefined && match.headers.length > 0) {
    const wanted = match.headers;
    checks.push((_m, _t, h) => wanted.every(([name, value]) => h[name] === value));
  }
  if (checks.length === 1) return checks[0] as RoutePredicate;
  return (m, t, h) => {
    for (const check of checks) if (!check(m, t, h)) return false;
    return true;
  };
}

export interface Routable {
  readonly settings: RouteSettings;
  readonly matches: RoutePredicate;
}

/**
 * Finds the first route that takes the request. Throws 404 `no-route`, or 400
 * when normalising the path moved it out of a prefix it was written under
 * (`/api/../admin`): such a request is refused rather than re-routed.
 */
export function findRoute<R extends Routable>(
  routes: readonly R[],
  method: string,
  target: RequestTarget,
  headers: IncomingHttpHeaders,
): R {
  if (target.path !== target.rawPath) {
    for (const route of routes) {
      const prefix = route.settings.match.pathPrefix;
      if (prefix !== undefined && pathHasPrefix(target.rawPath, prefix) && !pathHasPrefix(target.path, prefix)) {
        throw new LegateError('bad-request', `path ${target.rawPath} climbs out of ${prefix}`);
      }
    }
  }
  for (const route of routes) {
    if (route.matches(method, target, headers)) return route;
  }
  const where = target.form === 'absolute' ? `http://${target.authority}${target.path}` : target.path;
  throw new RouteNotFoundError(`${method} ${where}`);
}

/** Why `match` does not take the request, in words; undefined when it does. */
export function whyNot(
  match: MatchSettings,
  method: string,
  target: RequestTarget,
  headers: IncomingHttpHeaders,
): string | undefined {
  if (match.host === undefined) {
    if (target.form === 'absolute') return `names no host, and ${target.authority} was asked for by absolute URL`;
  } else if (!compileHost(match.host)(target)) {
    return `host ${target.authority || '(none)'} is not ${match.host}`;
  }
  if (match.pathPrefix !== undefined && !pathHasPrefix(target.path, match.pathPrefix)) {
    return `path ${target.path} is not under ${match.pathPrefix}`;
  }
  if (match.methods !== undefined && !match.methods.has(method)) {
    return `method ${method} is not one of ${[...match.methods].join(', ')}`;
  }
  for (const [name, value] of match.headers ?? []) {
    if (headers[name] !== value) return `header ${name} is not ${JSON.stringify(value)}`;
  }
  return undefined;
}
