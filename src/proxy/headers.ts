/**
 * Which headers cross legate. RFC 9110 §7.6.1 hop-by-hop headers (and every
 * header `Connection` names) never do; neither do the app's control headers,
 * which are read before forwarding and then dropped (SPEC §2, §4).
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  // legate answers `Expect: 100-continue` itself (Node does, before the
  // request event); forwarding it would make the upstream wait for a second one.
  'expect',
]);

/** True for the headers that belong to one connection, never to the message (RFC 9110 §7.6.1), and `Expect`. */
export function isHopByHop(name: string): boolean {
  return HOP_BY_HOP.has(name) || name.startsWith('proxy-');
}

/** The Envoy request headers legate honours with Envoy's meaning, dropped like x-legate-*. */
export const ENVOY_CONTROL_HEADERS = new Set([
  'x-envoy-max-retries',
  'x-envoy-retry-on',
  'x-envoy-upstream-rq-timeout-ms',
  'x-envoy-upstream-rq-per-try-timeout-ms',
]);

/** `Connection` values that name no header to drop. */
const NAMES_NOTHING: ReadonlySet<string> = new Set(['keep-alive', 'close']);

function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  // What nearly every peer sends, and names no header to drop: no split, no Set, on each exchange.
  if (typeof value === 'string' && value.length <= 10 && NAMES_NOTHING.has(value.toLowerCase())) return undefined;
  const joined = Array.isArray(value) ? value.join(',') : value;
  const tokens = new Set<string>();
  for (const t of joined.split(',')) {
    const name = t.trim().toLowerCase();
    if (name !== '' && name !== 'close' && name !== 'keep-alive') tokens.add(name);
  }
  return tokens.size === 0 ? undefined : tokens;
}

function isDropped(name: string, named: Set<string> | undefined): boolean {
  return (
    HOP_BY_HOP.has(name) ||
    name.startsWith('proxy-') ||
    (named !== undefined && named.has(name)) ||
    (name.charCodeAt(0) === 120 /* x */ && (name.startsWith('x-legate-') || ENVOY_CONTROL_HEADERS.has(name)))
  );
}

/**
 * The headers to send upstream: the app's, minus hop-by-hop and control
 * headers, with `Host` and `x-request-id` set.
 */
export function upstreamRequestHeaders(
  app: IncomingHttpHeaders,
  host: string,
  requestId: string,
): OutgoingHttpHeaders {
  const named = connectionTokens(app.connection);
  const out: OutgoingHttpHeaders = {};
  for (const name in app) {
    if (!isDropped(name, named)) out[name] = app[name];
  }
  out.host = host;
  out['x-request-id'] = requestId;
  return out;
}

/** The upstream's response headers the app may see: hop-by-hop removed. */
export function downstreamResponseHeaders(upstream: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = connectionTokens(upstream.connection);
  const out: OutgoingHttpHeaders = {};
  for (const name in upstream) {
    if (HOP_BY_HOP.has(name) || name.startsWith('proxy-') || (named !== undefined && named.has(name))) continue;
    out[name] = upstream[name];
  }
  return out;
}

const REQUEST_ID = /^[\x21-\x7e]{1,200}$/;

/** The app's x-request-id when it is one sane token, else undefined (a new one is made). */
export function appRequestId(value: string | string[] | undefined): string | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  return v !== undefined && REQUEST_ID.test(v) ? v : undefined;
}
