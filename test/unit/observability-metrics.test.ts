/**
 * The metrics of SPEC §9 from recorded outcomes, read back through the
 * strict exposition parser: names, types, label sets, values, and the
 * scrape-time sources (active requests, certificates, breaker state).
 */
import { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import pino from 'pino';
import { register as globalRegistry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfigText } from '../../src/config/load.js';
import { RequestContext } from '../../src/proxy/context.js';
import { createObserver, type Observer, type ObserverOptions } from '../../src/observability/observer.js';
import { DURATION_BUCKETS, methodLabel, tryOutcome } from '../../src/observability/metrics.js';
import { createEndpoint, LayerState, RouteRuntime } from '../../src/runtime/route-runtime.js';
import { LogSink } from '../helpers/legate.js';
import { parsePrometheusText, sampleValue, samplesOf, type MetricFamily } from '../helpers/prom.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()?.();
});

// These tests never forward; a connection pool of any kind would only need closing.
const noAgent = (): never => {
  throw new Error('no upstream connections in this test');
};

function routes(yaml: string): RouteRuntime[] {
  const loaded = loadConfigText(yaml, '/tmp/routes.yaml');
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  return loaded.config.routes.map(
    (s) =>
      new RouteRuntime(
        s,
        s.upstream.endpoints.map((e) => createEndpoint(e, noAgent)),
        new LayerState(),
      ),
  );
}

const [API] = routes('routes:\n  - name: api\n    match: { pathPrefix: /api }\n    upstream: http://10.0.0.7:8080\n');

function context(method = 'GET', route = API as RouteRuntime): RequestContext {
  const raw = new IncomingMessage(new Socket());
  raw.method = method;
  raw.headers = {};
  return new RequestContext({
    id: 'r',
    raw,
    res: new ServerResponse(raw),
    route,
    path: '/api/users/12345',
    forwardPath: '/users/12345',
    headers: {},
    trustControlHeaders: true,
    startedAt: performance.now(),
  });
}

function observer(opts: ObserverOptions = {}): Observer {
  const o = createObserver(pino({ level: 'info' }, new LogSink()), opts);
  cleanups.push(() => o.close());
  return o;
}

async function scrape(o: Observer): Promise<Map<string, MetricFamily>> {
  const m = await o.metrics();
  expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(m.body);
}

describe('legate metrics', () => {
  it('exposes every family of SPEC §9 with its type, all prefixed legate_, process metrics included', async () => {
    const families = await scrape(observer());
    const types = Object.fromEntries([...families.values()].map((f) => [f.name, f.type]));
    expect(types).toMatchObject({
      legate_requests_total: 'counter',
      legate_request_duration_seconds: 'histogram',
      legate_upstream_duration_seconds: 'histogram',
      legate_upstream_tries_total: 'counter',
      legate_retries_total: 'counter',
      legate_retry_budget_exhausted_total: 'counter',
      legate_circuit_breaker_state: 'gauge',
      legate_circuit_breaker_transitions_total: 'counter',
      legate_active_requests: 'gauge',
      legate_config_reloads_total: 'counter',
      legate_certificate_expiry_timestamp_seconds: 'gauge',
      legate_response_resets_total: 'counter',
      legate_process_cpu_seconds_total: 'counter',
      legate_process_resident_memory_bytes: 'gauge',
    });
    for (const f of families.values()) {
      expect(f.name).toMatch(/^legate_/);
      expect(f.help).toBeTruthy();
      if (f.type === 'counter') expect(f.name).toMatch(/_total$/);
    }
    expect(sampleValue(families, 'legate_config_reloads_total', { result: 'applied' })).toBe(0);
    expect(sampleValue(families, 'legate_config_reloads_total', { result: 'rejected' })).toBe(0);
  });

  it('counts requests, tries, retries, budget exhaustion and resets by route, with sub-millisecond buckets', async () => {
    const o = observer();
    const ctx = context();
    ctx.tries.push({ endpoint: '10.0.0.7:8080', status: 503, ms: 0.3, retryReason: '503' });
    ctx.tries.push({ endpoint: '10.0.0.7:8080', error: 'upstream-reset', ms: 0.7, retryReason: 'reset' });
    ctx.tries.push({ endpoint: '10.0.0.7:8080', status: 200, ms: 2 });
    ctx.status = 200;
    ctx.budgetExhausted = true;
    ctx.resetAfterHead = true;
    o.onComplete(ctx);
    const f = await scrape(o);
    expect(sampleValue(f, 'legate_requests_total', { route: 'api', method: 'GET', status: '200' })).toBe(1);
    expect(sampleValue(f, 'legate_upstream_tries_total', { route: 'api', outcome: '5xx' })).toBe(1);
    expect(sampleValue(f, 'legate_upstream_tries_total', { route: 'api', outcome: 'upstream-reset' })).toBe(1);
    expect(sampleValue(f, 'legate_upstream_tries_total', { route: 'api', outcome: '2xx' })).toBe(1);
    expect(sampleValue(f, 'legate_retries_total', { route: 'api', reason: '503' })).toBe(1);
    expect(sampleValue(f, 'legate_retries_total', { route: 'api', reason: 'reset' })).toBe(1);
    expect(sampleValue(f, 'legate_retry_budget_exhausted_total', { route: 'api' })).toBe(1);
    expect(sampleValue(f, 'legate_response_resets_total', { route: 'api' })).toBe(1);
    // One observation per try, each in its own bucket at the sub-millisecond end.
    expect(sampleValue(f, 'legate_upstream_duration_seconds_count', { route: 'api' })).toBe(3);
    expect(sampleValue(f, 'legate_upstream_duration_seconds_bucket', { route: 'api', le: '0.0005' })).toBe(1);
    expect(sampleValue(f, 'legate_upstream_duration_seconds_bucket', { route: 'api', le: '0.001' })).toBe(2);
    expect(sampleValue(f, 'legate_upstream_duration_seconds_bucket', { route: 'api', le: '0.0025' })).toBe(3);
    expect(sampleValue(f, 'legate_upstream_duration_seconds_sum', { route: 'api' })).toBeCloseTo(0.003, 9);
    expect(sampleValue(f, 'legate_request_duration_seconds_count', { route: 'api' })).toBe(1);
    const les = samplesOf(f, 'legate_request_duration_seconds')
      .filter((s) => s.name.endsWith('_bucket'))
      .map((s) => s.labels.le);
    expect(les).toEqual([...DURATION_BUCKETS.map(String), '+Inf']);
  });

  it('keeps labels to route names, standard methods, status codes and outcome words', async () => {
    const o = observer();
    const weird = context('PROPFIND');
    weird.status = 404;
    o.onComplete(weird);
    o.onComplete({ early: true, id: 'e', method: 'BREW', path: '/coffee/pot?x=1', status: 404, errorCode: 'no-route', startedAt: performance.now(), bytesOut: 120 });
    const f = await scrape(o);
    expect(sampleValue(f, 'legate_requests_total', { route: 'api', method: 'OTHER', status: '404' })).toBe(1);
    expect(sampleValue(f, 'legate_requests_total', { route: '', method: 'OTHER', status: '404' })).toBe(1);
    expect(sampleValue(f, 'legate_request_duration_seconds_count', { route: '' })).toBe(1);
    for (const family of f.values()) {
      for (const s of family.samples) {
        for (const v of Object.values(s.labels)) expect(v).not.toMatch(/coffee|users|12345|\?/);
      }
    }
    expect(methodLabel('get')).toBe('OTHER');
    expect(methodLabel('DELETE')).toBe('DELETE');
    expect(tryOutcome({ endpoint: 'e', status: 101, ms: 1 })).toBe('1xx');
    expect(tryOutcome({ endpoint: 'e', status: 999, ms: 1 })).toBe('other-status');
    expect(tryOutcome({ endpoint: 'e', ms: 1 })).toBe('unknown');
  });

  it('counts a request that opted out of logging all the same', async () => {
    const o = observer();
    const ctx = context();
    ctx.policy.optOut.add('log');
    ctx.status = 200;
    o.onComplete(ctx);
    expect(sampleValue(await scrape(o), 'legate_requests_total', { route: 'api', method: 'GET', status: '200' })).toBe(1);
  });

  it('gives each observer its own registry and never touches the global one', async () => {
    const a = observer();
    const b = observer();
    const ctx = context();
    ctx.status = 200;
    a.onComplete(ctx);
    a.reload('rejected');
    expect(sampleValue(await scrape(a), 'legate_requests_total', { route: 'api', method: 'GET', status: '200' })).toBe(1);
    expect(sampleValue(await scrape(b), 'legate_requests_total', { route: 'api', method: 'GET', status: '200' })).toBeUndefined();
    expect(sampleValue(await scrape(a), 'legate_config_reloads_total', { result: 'rejected' })).toBe(1);
    expect(sampleValue(await scrape(b), 'legate_config_reloads_total', { result: 'rejected' })).toBe(0);
    expect(await globalRegistry.metrics()).not.toContain('legate_');
  });

  it('reads active requests and certificate expiry at scrape time', async () => {
    let active = 3;
    const certs = [
      { file: '/certs/client.pem', subject: 'CN=payments-client', notAfter: 1_900_000_000 },
      { file: '/certs/ca.pem', subject: 'CN=ca', notAfter: 2_000_000_000 },
      { file: '/certs/ca.pem', subject: 'CN=ca', notAfter: 1_800_000_000 },
    ];
    const o = observer({ activeRequests: () => active, certificates: () => certs });
    let f = await scrape(o);
    expect(sampleValue(f, 'legate_active_requests')).toBe(3);
    expect(sampleValue(f, 'legate_certificate_expiry_timestamp_seconds', { file: '/certs/client.pem', subject: 'CN=payments-client' })).toBe(1_900_000_000);
    // Two CAs of one name in one bundle: the one that expires first.
    expect(sampleValue(f, 'legate_certificate_expiry_timestamp_seconds', { file: '/certs/ca.pem', subject: 'CN=ca' })).toBe(1_800_000_000);
    active = 0;
    certs.splice(0, certs.length, { file: '/certs/client.pem', subject: 'CN=payments-client-2', notAfter: 1_950_000_000 });
    f = await scrape(o);
    expect(sampleValue(f, 'legate_active_requests')).toBe(0);
    // The rotated-away certificate is gone, not left at its old value.
    expect(samplesOf(f, 'legate_certificate_expiry_timestamp_seconds')).toEqual([
      { name: 'legate_certificate_expiry_timestamp_seconds', labels: { file: '/certs/client.pem', subject: 'CN=payments-client-2' }, value: 1_950_000_000 },
    ]);
  });

  it('shows every breaker closed from the start, follows transitions, and forgets breakers a reload replaced or removed', async () => {
    let current = routes(`routes:
  - name: pay
    match: { pathPrefix: /pay }
    upstream: [{ url: "http://10.0.0.1:80" }, { url: "http://10.0.0.2:80" }]
  - name: off
    match: { pathPrefix: /off }
    upstream: http://10.0.0.3:80
    circuitBreaker: { enabled: false }
`);
    const o = observer({ routes: () => current });
    const state = async () =>
      Object.fromEntries(samplesOf(await scrape(o), 'legate_circuit_breaker_state').map((s) => [`${s.labels.route} ${s.labels.endpoint}`, s.value]));
    expect(await state()).toEqual({ 'pay 10.0.0.1:80': 0, 'pay 10.0.0.2:80': 0 });
    o.breakerTransition('pay', '10.0.0.2:80', 'closed', 'open');
    expect(await state()).toEqual({ 'pay 10.0.0.1:80': 0, 'pay 10.0.0.2:80': 2 });
    o.breakerTransition('pay', '10.0.0.2:80', 'open', 'half-open');
    expect(await state()).toEqual({ 'pay 10.0.0.1:80': 0, 'pay 10.0.0.2:80': 1 });
    o.breakerTransition('pay', '10.0.0.2:80', 'half-open', 'open');
    const f = await scrape(o);
    expect(sampleValue(f, 'legate_circuit_breaker_transitions_total', { route: 'pay', endpoint: '10.0.0.2:80', to: 'open' })).toBe(2);
    expect(sampleValue(f, 'legate_circuit_breaker_transitions_total', { route: 'pay', endpoint: '10.0.0.2:80', to: 'half-open' })).toBe(1);
    // A reload that changed the policy starts new breakers: closed, whatever the old one was.
    current = routes(`routes:
  - name: pay
    match: { pathPrefix: /pay }
    upstream: [{ url: "http://10.0.0.1:80" }, { url: "http://10.0.0.2:80" }]
    timeout: 3s
`);
    expect(await state()).toEqual({ 'pay 10.0.0.1:80': 0, 'pay 10.0.0.2:80': 0 });
    current = [];
    expect(await state()).toEqual({});
  });

  it('without a routes source, reports the breakers it heard of', async () => {
    const o = observer();
    o.breakerTransition('pay', '10.0.0.2:80', 'closed', 'open');
    expect(sampleValue(await scrape(o), 'legate_circuit_breaker_state', { route: 'pay', endpoint: '10.0.0.2:80' })).toBe(2);
  });
});
