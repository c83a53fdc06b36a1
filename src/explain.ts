/**
 * `legate explain`: which route a request would take, where it would be
 * sent, and the policy that would apply — or, route by route, why none.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { formatIssue, loadConfigFile } from './config/load.js';
import type { LegateConfig, RouteSettings } from './config/model.js';
import { isLegateError } from './errors.js';
import { applyControlHeaders } from './layers/control-headers.js';
import { ENVOY_CONTROL_HEADERS } from './proxy/headers.js';
import type { RequestPolicy } from './proxy/types.js';
import { upstreamPath } from './layers/forward.js';
import { findRoute, whyNot } from './routing/router.js';
import { parseTarget, type RequestTarget } from './routing/target.js';

function headersFrom(list: readonly string[]): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const h of list) {
    const colon = h.indexOf(':');
    if (colon <= 0) throw new Error(`header ${JSON.stringify(h)} is not "name: value"`);
    out[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
  }
  return out;
}

/** Reads URL the way legate would receive it from an app. */
export function targetFor(config: LegateConfig, url: string, headers: IncomingHttpHeaders): RequestTarget {
  if (url.startsWith('/')) return parseTarget(url, headers.host ?? config.listen.text);
  const u = new URL(url);
  const own = new Set([config.listen.text, `localhost:${config.listen.port}`, `127.0.0.1:${config.listen.port}`]);
  if (own.has(u.host)) return parseTarget(url.slice(url.indexOf(u.host) + u.host.length) || '/', headers.host ?? u.host);
  return parseTarget(url, headers.host);
}

function policyLines(r: RouteSettings): string[] {
  const cb = r.circuitBreaker;
  return [
    `  timeout:        ${r.timeoutMs === 0 ? 'none' : `${r.timeoutMs} ms`} whole exchange; idle ${r.idleTimeoutMs === 0 ? 'none' : `${r.idleTimeoutMs} ms`}`,
    `  retry:          ${r.retry.retries} retries on [${r.retry.on.join(', ')}]; per try ${r.retry.perTryTimeoutMs === 0 ? 'no timeout' : `${r.retry.perTryTimeoutMs} ms`}; back-off ${r.retry.backoff.baseMs}–${r.retry.backoff.maxMs} ms; budget ${r.retry.budget.ratio} + ${r.retry.budget.minPerSecond}/s; header may ask up to ${r.retry.maxFromHeader}`,
    `  circuit breaker: ${cb.enabled ? `opens at ${cb.errorThresholdPercentage}% of ≥${cb.volumeThreshold} tries in ${cb.windowMs} ms on [${cb.failOn.join(', ')}]; retries after ${cb.resetTimeoutMs} ms` : 'off'}`,
    `  limits:         body ${r.limits.maxRequestBodyBytes === 0 ? 'unlimited' : `≤ ${r.limits.maxRequestBodyBytes} bytes`}; concurrent ${r.limits.maxConcurrent === 0 ? 'unlimited' : `${r.limits.maxConcurrent}, ${r.limits.maxPending} may wait`}`,
    ...(r.rateLimit === undefined ? [] : [`  rate limit:     ${r.rateLimit.perSecond}/s, burst ${r.rateLimit.burst}`]),
    `  tls:            ${r.tls === undefined ? 'none' : [r.tls.ca && 'ca', r.tls.cert && 'client certificate', r.tls.serverName && `serverName ${r.tls.serverName}`].filter(Boolean).join(', ') || 'system CAs'}`,
    `  opt-outs allowed: ${r.optOut.size === 0 ? 'none' : [...r.optOut].join(', ')}`,
    ...headerLines('request', r.headers.request),
    ...headerLines('response', r.headers.response),
  ];
}

/** What the request's own control headers change, as legate would apply them (from a loopback client). */
function requestPolicyLines(r: RouteSettings, headers: IncomingHttpHeaders): string[] {
  if (!Object.keys(headers).some((h) => h.startsWith('x-legate-') || ENVOY_CONTROL_HEADERS.has(h))) return [];
  const policy: RequestPolicy = {
    retries: r.retry.retries,
    retryOn: r.retry.on,
    timeoutMs: r.timeoutMs,
    perTryTimeoutMs: r.retry.perTryTimeoutMs,
    optOut: new Set(),
    optOutDenied: [],
  };
  try {
    applyControlHeaders(headers, policy, { maxFromHeader: r.retry.maxFromHeader, optOut: r.optOut });
  } catch (e) {
    return [`  this request:   → 400 bad-control-header: ${(e as Error).message}`];
  }
  return [
    `  this request:   ${policy.retries} retries on [${policy.retryOn.join(', ')}]; timeout ${policy.timeoutMs === 0 ? 'none' : `${policy.timeoutMs} ms`}; per try ${policy.perTryTimeoutMs === 0 ? 'none' : `${policy.perTryTimeoutMs} ms`}` +
      (policy.optOut.size > 0 ? `; skips ${[...policy.optOut].join(', ')}` : '') +
      (policy.optOutDenied.length > 0 ? `; opt-out denied: ${policy.optOutDenied.join(', ')}` : ''),
  ];
}

/** Header rules by name only: their values may be credentials. */
function headerLines(side: string, rules: RouteSettings['headers']['request']): string[] {
  const out: string[] = [];
  if (rules.set.length > 0) out.push(`  ${side} headers set: ${rules.set.map(([n]) => n).join(', ')} (values not shown)`);
  if (rules.remove.length > 0) out.push(`  ${side} headers removed: ${rules.remove.join(', ')}`);
  return out;
}

export async function explain(file: string, method: string, url: string, headerArgs: readonly string[]): Promise<number> {
  const loaded = await loadConfigFile(file);
  if (!loaded.ok) {
    for (const issue of loaded.issues) process.stderr.write(formatIssue(issue) + '\n');
    return 1;
  }
  const config = loaded.config;
  const out: string[] = [];
  let target: RequestTarget;
  let headers: IncomingHttpHeaders;
  try {
    headers = headersFrom(headerArgs);
    target = targetFor(config, url, headers);
  } catch (e) {
    process.stdout.write(`${method} ${url}\n  → 400 bad-request: ${(e as Error).message}\n`);
    return 1;
  }
  const m = method.toUpperCase();
  const main = config.routes.filter((r) => r.listen === undefined).map((settings) => ({ settings, matches: () => whyNot(settings.match, m, target, headers) === undefined }));
  out.push(`${m} ${url}  (${target.form}-form, host ${target.authority || '(none)'}, path ${target.path})`);
  try {
    const { settings: r } = findRoute(main, m, target, headers);
    const prefix = r.match.pathPrefix;
    const rest = r.stripPrefix && prefix !== undefined ? target.path.slice(prefix.endsWith('/') ? prefix.length - 1 : prefix.length) : target.path;
    out.push(`  → route ${r.name} (routes[${r.index}])`);
    for (const e of r.upstream.endpoints) {
      const base = e.url.pathname.endsWith('/') ? e.url.pathname.slice(0, -1) : e.url.pathname;
      const host = r.preserveHost ? target.authority : e.url.host;
      out.push(`  → ${e.url.protocol}//${e.url.host}${upstreamPath(base, rest + target.query)}  (Host: ${host}${r.upstream.endpoints.length > 1 ? `, weight ${e.weight}` : ''})`);
    }
    const d = r.upstream.discovery;
    if (d !== undefined) {
      out.push(`  endpoints: every address ${d.type === 'dns-srv' ? `of the SRV records of ${d.name ?? '?'}` : `of ${r.upstream.endpoints[0]?.url.hostname ?? '?'}`} in DNS${d.resolver === undefined ? '' : ` (resolver ${d.resolver.text})`}, refreshed every ${d.refreshMs} ms or at the record's TTL`);
    }
    out.push(...policyLines(r));
    out.push(...requestPolicyLines(r, headers));
    process.stdout.write(out.join('\n') + '\n');
    return 0;
  } catch (e) {
    if (!isLegateError(e)) throw e;
    out.push(`  → ${e.status} ${e.code}: ${e.message}`);
    for (const r of config.routes) {
      if (r.listen !== undefined) {
        out.push(`    ${r.name}: serves only its own listener ${r.listen.text}`);
        continue;
      }
      out.push(`    ${r.name}: ${whyNot(r.match, m, target, headers) ?? 'matches the path as written, not as normalised'}`);
    }
    process.stdout.write(out.join('\n') + '\n');
    return 1;
  }
}
