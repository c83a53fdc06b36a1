import type { IncomingHttpHeaders } from 'node:http';
import { describe, expect, it } from 'vitest';
import type { OptOut } from '../../src/config/schema.js';
import { BadControlHeaderError } from '../../src/errors.js';
import { applyControlHeaders, createControlHeaderLayer } from '../../src/layers/control-headers.js';
import type { Handler, ProxyRequest, RequestPolicy, UpstreamResponse } from '../../src/proxy/types.js';
import { isLoopback } from '../../src/server/proxy-listener.js';

const ROUTE_ON = ['connect-failure', 'reset', 'timeout', 502, 503, 504] as const;

function policy(): RequestPolicy {
  return { retries: 2, retryOn: ROUTE_ON, timeoutMs: 15_000, perTryTimeoutMs: 0, optOut: new Set(), optOutDenied: [] };
}

function apply(headers: IncomingHttpHeaders, route: { maxFromHeader?: number; optOut?: OptOut[] } = {}): RequestPolicy {
  const p = policy();
  applyControlHeaders(headers, p, { maxFromHeader: route.maxFromHeader ?? 5, optOut: new Set(route.optOut ?? []) });
  return p;
}

function rejection(headers: IncomingHttpHeaders, route: { optOut?: OptOut[] } = {}): BadControlHeaderError {
  try {
    apply(headers, route);
  } catch (e) {
    if (e instanceof BadControlHeaderError) return e;
    throw e;
  }
  throw new Error(`expected ${JSON.stringify(headers).slice(0, 80)} to be rejected`);
}

describe('applyControlHeaders: valid values', () => {
  it.each<[string, IncomingHttpHeaders, Partial<RequestPolicy>]>([
    ['no headers leave the route policy', {}, { retries: 2, retryOn: ROUTE_ON, timeoutMs: 15_000, perTryTimeoutMs: 0 }],
    ['max-retries within the clamp', { 'x-legate-max-retries': '3' }, { retries: 3 }],
    ['max-retries clamped to maxFromHeader', { 'x-legate-max-retries': '50' }, { retries: 5 }],
    ['max-retries 0', { 'x-legate-max-retries': '0' }, { retries: 0 }],
    ['retry-on replaces the route list', { 'x-legate-retry-on': '409, 5xx,Retriable-4xx' }, { retryOn: [409, '5xx', 'retriable-4xx'] }],
    ['retry-on with every named condition', { 'x-legate-retry-on': 'connect-failure,reset,timeout,gateway-error' }, { retryOn: ['connect-failure', 'reset', 'timeout', 'gateway-error'] }],
    ['timeout-ms', { 'x-legate-timeout-ms': '250' }, { timeoutMs: 250 }],
    ['per-try-timeout-ms', { 'x-legate-per-try-timeout-ms': '100' }, { perTryTimeoutMs: 100 }],
    ['x-legate wins over x-envoy', { 'x-legate-max-retries': '1', 'x-envoy-max-retries': '4' }, { retries: 1 }],
    ['envoy max-retries', { 'x-envoy-max-retries': '4' }, { retries: 4 }],
    ['envoy max-retries clamped too', { 'x-envoy-max-retries': '40' }, { retries: 5 }],
    ['envoy timeout', { 'x-envoy-upstream-rq-timeout-ms': '300' }, { timeoutMs: 300 }],
    ['envoy timeout 0 disables the deadline', { 'x-envoy-upstream-rq-timeout-ms': '0' }, { timeoutMs: 0 }],
    ['envoy per-try timeout', { 'x-envoy-upstream-rq-per-try-timeout-ms': '120' }, { perTryTimeoutMs: 120 }],
    ['x-legate timeout wins over envoy', { 'x-legate-timeout-ms': '10', 'x-envoy-upstream-rq-timeout-ms': '20' }, { timeoutMs: 10 }],
  ])('%s', (_name, headers, expected) => {
    expect(apply(headers)).toMatchObject(expected);
  });
});

describe('applyControlHeaders: x-envoy-retry-on with Envoy meaning', () => {
  const setOf = (headers: IncomingHttpHeaders): Set<string | number> => new Set(apply(headers).retryOn);
  it.each<[string, Array<string | number>]>([
    // Envoy counts a reset, a connect failure and a per-try timeout as a 5xx (router retry_state.cc).
    ['5xx', ['5xx', 'connect-failure', 'reset', 'timeout']],
    ['gateway-error', ['gateway-error', 'connect-failure', 'reset', 'timeout']],
    ['reset', ['reset', 'connect-failure', 'timeout']],
    ['connect-failure', ['connect-failure']],
    ['retriable-4xx', ['retriable-4xx']],
    ['refused-stream', ['reset']],
  ])('%s', (value, expected) => {
    expect(setOf({ 'x-envoy-retry-on': value })).toEqual(new Set(expected));
  });

  it('ignores names it does not know, as Envoy does', () => {
    expect(setOf({ 'x-envoy-retry-on': 'retriable-headers,envoy-ratelimited,retriable-4xx' })).toEqual(new Set(['retriable-4xx']));
  });

  it('x-legate-retry-on wins', () => {
    expect(apply({ 'x-legate-retry-on': '409', 'x-envoy-retry-on': '5xx' }).retryOn).toEqual([409]);
  });
});

describe('applyControlHeaders: opt-out', () => {
  it('applies what the route allows and reports what it denies', () => {
    const p = apply({ 'x-legate-opt-out': 'retry, circuit-breaker, log' }, { optOut: ['retry'] });
    expect([...p.optOut]).toEqual(['retry']);
    expect(p.optOutDenied).toEqual(['circuit-breaker', 'log']);
    expect(p.retries).toBe(0);
  });

  it('denies every opt-out on a route that allows none', () => {
    const p = apply({ 'x-legate-opt-out': 'retry' });
    expect(p.optOut.size).toBe(0);
    expect(p.optOutDenied).toEqual(['retry']);
    expect(p.retries).toBe(2);
  });

  it('opting out of retries wins over x-legate-max-retries', () => {
    expect(apply({ 'x-legate-opt-out': 'retry', 'x-legate-max-retries': '4' }, { optOut: ['retry'] }).retries).toBe(0);
  });
});

/** [header, label, value]: a long value is labelled by a prefix, so the 10,000-entry list does not swamp the report. */
function labelled(cases: ReadonlyArray<readonly [string, string]>): Array<[string, string, string]> {
  return cases.map(([name, value]) => [name, value.length > 20 ? `${value.slice(0, 12)}… (${value.length} chars)` : value, value]);
}

const huge = Array.from({ length: 10_000 }, () => '503').join(',');

describe('applyControlHeaders: malformed values name the header', () => {
  const cases: Array<[string, string]> = [
    ['x-legate-max-retries', '-1'],
    ['x-legate-max-retries', 'three'],
    ['x-legate-max-retries', '1.5'],
    ['x-legate-max-retries', ''],
    ['x-legate-max-retries', '99999999999999999999'],
    ['x-legate-retry-on', 'sometimes'],
    ['x-legate-retry-on', '5xx,600'],
    ['x-legate-retry-on', huge],
    ['x-legate-timeout-ms', '0'],
    ['x-legate-timeout-ms', '-5'],
    ['x-legate-timeout-ms', '1e3'],
    ['x-legate-timeout-ms', '2s'],
    ['x-legate-per-try-timeout-ms', 'abc'],
    ['x-legate-per-try-timeout-ms', '0'],
    ['x-legate-opt-out', 'teleport'],
    ['x-legate-opt-out', 'retry,everything'],
  ];
  it.each(labelled(cases))('%s: %s', (name, _label, value) => {
    const e = rejection({ [name]: value });
    expect(e.code).toBe('bad-control-header');
    expect(e.status).toBe(400);
    expect(e.header).toBe(name);
    expect(e.message.startsWith(`${name}:`)).toBe(true);
    // The message quotes at most a short prefix of what was sent.
    expect(e.message.length).toBeLessThan(300);
  });
});

describe('applyControlHeaders: x-envoy-* values Envoy could not parse are ignored, as Envoy ignores them', () => {
  const cases: Array<[string, string]> = [
    ['x-envoy-max-retries', 'abc'],
    ['x-envoy-max-retries', '-1'],
    ['x-envoy-upstream-rq-timeout-ms', '-1'],
    ['x-envoy-upstream-rq-timeout-ms', '1500.0'],
    ['x-envoy-upstream-rq-per-try-timeout-ms', 'soon'],
    ['x-envoy-upstream-rq-per-try-timeout-ms', '99999999999999999999'],
    ['x-envoy-retry-on', huge],
  ];
  it.each(labelled(cases))('%s: %s', (name, _label, value) => {
    // The route's policy stands, as if the header had not been sent.
    expect(apply({ [name]: value })).toEqual(apply({}));
  });

  it('an x-legate-* header is still checked when an Envoy one beside it is ignored', () => {
    expect(rejection({ 'x-legate-max-retries': 'abc', 'x-envoy-max-retries': 'abc' }).header).toBe('x-legate-max-retries');
    expect(apply({ 'x-envoy-max-retries': 'abc', 'x-envoy-upstream-rq-timeout-ms': '250' }).timeoutMs).toBe(250);
  });
});

describe('createControlHeaderLayer: trust', () => {
  const answer = { status: 200 } as unknown as UpstreamResponse;
  const next: Handler = () => Promise.resolve(answer);

  function fakeRequest(trustControlHeaders: boolean, headers: IncomingHttpHeaders): ProxyRequest {
    const route = { settings: { retry: { maxFromHeader: 5 }, optOut: new Set<OptOut>(['retry']) } };
    return { trustControlHeaders, appHeaders: headers, policy: policy(), route } as unknown as ProxyRequest;
  }

  it('applies control headers from a trusted peer', async () => {
    const req = fakeRequest(true, { 'x-legate-max-retries': '4', 'x-legate-timeout-ms': '100' });
    await createControlHeaderLayer()(next)(req);
    expect(req.policy).toMatchObject({ retries: 4, timeoutMs: 100 });
  });

  it('ignores them from an untrusted peer, even malformed ones', async () => {
    const req = fakeRequest(false, { 'x-legate-max-retries': '4', 'x-legate-opt-out': 'retry', 'x-legate-timeout-ms': 'bogus' });
    await expect(createControlHeaderLayer()(next)(req)).resolves.toBe(answer);
    expect(req.policy).toEqual(policy());
  });

  it('rejects a malformed header from a trusted peer before calling next', async () => {
    let called = false;
    const req = fakeRequest(true, { 'x-legate-timeout-ms': 'bogus' });
    await expect(
      createControlHeaderLayer()(() => {
        called = true;
        return Promise.resolve(answer);
      })(req),
    ).rejects.toMatchObject({ code: 'bad-control-header', header: 'x-legate-timeout-ms' });
    expect(called).toBe(false);
  });

  it.each<[string | undefined, boolean]>([
    ['127.0.0.1', true],
    ['127.8.9.10', true],
    ['::1', true],
    ['::ffff:127.0.0.1', true],
    ['10.0.0.5', false],
    ['::ffff:10.0.0.5', false],
    ['fe80::1', false],
    ['1.127.0.0', false],
    [undefined, false],
  ])('peer %s is loopback: %s', (address, expected) => {
    expect(isLoopback(address)).toBe(expected);
  });
});
