/**
 * Retries (SPEC §6) and the control headers that steer them (SPEC §4),
 * through the real CLI, against upstreams that fail on purpose. Every test
 * counts what the upstream actually received.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { describe, expect, it } from 'vitest';
import type { RequestContext } from '../../src/proxy/context.js';
import {
  casePath,
  Cleanup,
  type Fault,
  ok,
  reset,
  routesYaml,
  send,
  sendMany,
  sequence,
  sha256,
  stall,
  startFaulty,
  status,
  table,
} from '../helpers/faulty.js';
import { startApp, startCli, waitFor } from '../helpers/legate.js';

/** Fast back-off and no breaker, so a test sees retries alone. */
const FAST = { backoff: { base: '1ms', max: '5ms' } };
const NO_BREAKER = { enabled: false };

function route(upstream: string, retry: Record<string, unknown> = {}, more: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: 'r', upstream, retry: { ...FAST, ...retry }, circuitBreaker: NO_BREAKER, ...more };
}

describe('retry.on conditions', () => {
  interface Case {
    readonly name: string;
    readonly retry: Record<string, unknown>;
    readonly faults: Fault[];
    readonly status: number;
    readonly attempts: number;
    readonly error?: string;
  }
  const cases: Case[] = [
    { name: 'reset is retried', retry: { on: ['reset'] }, faults: [reset, ok], status: 200, attempts: 2 },
    { name: 'reset is not retried when not listed', retry: { on: [503] }, faults: [reset, ok], status: 502, attempts: 1, error: 'upstream-reset' },
    { name: 'timeout (perTryTimeout) is retried', retry: { on: ['timeout'], perTryTimeout: '400ms' }, faults: [stall, ok], status: 200, attempts: 2 },
    {
      name: 'timeout is not retried when not listed',
      retry: { on: ['reset'], perTryTimeout: '400ms' },
      faults: [stall, ok],
      status: 504,
      attempts: 1,
      error: 'upstream-timeout',
    },
    { name: '5xx retries any 5xx', retry: { on: ['5xx'] }, faults: [status(500), status(507), ok], status: 200, attempts: 3 },
    { name: '5xx does not retry a 4xx', retry: { on: ['5xx'] }, faults: [status(404), ok], status: 404, attempts: 1 },
    {
      name: 'gateway-error retries 502, 503, 504',
      retry: { on: ['gateway-error'], retries: 3 },
      faults: [status(502), status(503), status(504), ok],
      status: 200,
      attempts: 4,
    },
    { name: 'gateway-error does not retry a 500', retry: { on: ['gateway-error'] }, faults: [status(500), ok], status: 500, attempts: 1 },
    { name: 'retriable-4xx retries a 409', retry: { on: ['retriable-4xx'] }, faults: [status(409), ok], status: 200, attempts: 2 },
    { name: 'retriable-4xx does not retry a 429', retry: { on: ['retriable-4xx'] }, faults: [status(429), ok], status: 429, attempts: 1 },
    { name: 'an explicit code is retried', retry: { on: [429] }, faults: [status(429), ok], status: 200, attempts: 2 },
    { name: 'an explicit code retries only itself', retry: { on: [429] }, faults: [status(503), ok], status: 503, attempts: 1 },
    { name: 'default retries a 502 then a 503', retry: {}, faults: [status(502), status(503), ok], status: 200, attempts: 3 },
    { name: 'default does not retry a 500', retry: {}, faults: [status(500), ok], status: 500, attempts: 1 },
    { name: 'default retries a reset', retry: {}, faults: [reset, ok], status: 200, attempts: 2 },
    { name: 'default retries a per-try timeout', retry: { perTryTimeout: '400ms' }, faults: [stall, ok], status: 200, attempts: 2 },
    { name: 'default retries twice, then returns the failure', retry: {}, faults: [status(502)], status: 502, attempts: 3 },
  ];

  const connectCases: Case[] = [
    { name: 'connect-failure is retried (refused port)', retry: { on: ['connect-failure'] }, faults: [], status: 502, attempts: 3, error: 'upstream-connect-failure' },
    { name: 'connect-failure is retried by default (refused port)', retry: {}, faults: [], status: 502, attempts: 3, error: 'upstream-connect-failure' },
    {
      name: 'connect-failure is not retried when not listed (refused port)',
      retry: { on: ['reset', 503] },
      faults: [],
      status: 502,
      attempts: 1,
      error: 'upstream-connect-failure',
    },
  ];
  const all = [...cases, ...connectCases];
  const t = table(
    all.length,
    (i) => (all[i]?.faults.length === 0 ? undefined : all[i]?.faults),
    (i, url) => route(url, all[i]?.retry),
  );

  it.concurrent.each(all.map((c, i) => [c.name, c, i] as const))('%s', async (_name, c, i) => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(i) });
    expect(r.status).toBe(c.status);
    expect(r.headers['x-legate-attempts']).toBe(String(c.attempts));
    expect(r.headers['x-legate-error']).toBe(c.error);
    if (c.error !== undefined) expect(r.json().attempts).toBe(c.attempts);
    if (c.faults.length > 0) expect(t.up(i).seen.length).toBe(c.attempts);
  });
});

describe('method safety', () => {
  type MethodCase = readonly [name: string, method: string, headers: Record<string, string>, retry: Record<string, unknown>, first: Fault, tries: number];
  const cases: MethodCase[] = [
    ['GET after a reset', 'GET', {}, {}, reset, 2],
    ['PUT after a reset', 'PUT', {}, {}, reset, 2],
    ['DELETE after a reset', 'DELETE', {}, {}, reset, 2],
    ['OPTIONS after a 503', 'OPTIONS', {}, {}, status(503), 2],
    ['POST after a reset: not retried', 'POST', {}, {}, reset, 1],
    ['POST after a 503: not retried', 'POST', {}, {}, status(503), 1],
    ['PATCH after a reset: not retried', 'PATCH', {}, {}, reset, 1],
    ['PATCH after a per-try timeout: not retried', 'PATCH', {}, { perTryTimeout: '400ms' }, stall, 1],
    ['POST with Idempotency-Key after a reset', 'POST', { 'idempotency-key': 'k-1' }, {}, reset, 2],
    ['PATCH with Idempotency-Key after a 503', 'PATCH', { 'idempotency-key': 'k-2' }, {}, status(503), 2],
    ['POST listed in retry.methods', 'POST', {}, { methods: ['POST'] }, reset, 2],
    ['PATCH not listed when only POST is', 'PATCH', {}, { methods: ['POST'] }, reset, 1],
  ];
  const connect = ['POST', 'PATCH'];
  const t = table(
    cases.length + connect.length,
    (i) => {
      const c = cases[i];
      return c === undefined ? undefined : [c[4], ok];
    },
    (i, url) => route(url, cases[i]?.[3]),
  );

  it.concurrent.each(cases.map((c, i) => [...c, i] as const))('%s', async (_name, method, headers, _retry, _first, tries, i) => {
    const body = 'small body';
    const r = await send({ port: t.cli().proxyPort, path: casePath(i), method, headers, body });
    const up = t.up(i);
    expect(up.seen.length).toBe(tries);
    expect(r.headers['x-legate-attempts']).toBe(String(tries));
    if (tries === 2) expect(r.status).toBe(200);
    for (const s of up.seen) expect(s.body.toString()).toBe(body);
  });

  it.concurrent.each(connect.map((m, j) => [m, cases.length + j] as const))(
    '%s is retried after a pure connect failure (nothing was sent)',
    async (method, i) => {
      const r = await send({ port: t.cli().proxyPort, path: casePath(i), method, body: 'payload' });
      expect(r.status).toBe(502);
      expect(r.headers['x-legate-error']).toBe('upstream-connect-failure');
      expect(r.headers['x-legate-attempts']).toBe('3');
    },
  );
});

describe('request bodies', () => {
  const MiB = 1024 * 1024;
  type SentOnce = readonly [name: string, headers: Record<string, string>, retry: Record<string, unknown>, chunked: boolean, fault: Fault];
  const once: SentOnce[] = [
    ['no key, Content-Length, reset', {}, {}, false, reset],
    ['no key, chunked, reset', {}, {}, true, reset],
    ['no key, Content-Length, 503', {}, {}, false, status(503)],
    ['retry.methods lists POST, but the body is over bufferLimit', {}, { methods: ['POST'] }, false, reset],
    ['Idempotency-Key, but the body is over bufferLimit (Content-Length)', { 'idempotency-key': 'k' }, {}, false, reset],
    ['Idempotency-Key, but the body is over bufferLimit (chunked)', { 'idempotency-key': 'k' }, {}, true, status(503)],
  ];
  const replayed = [false, true];
  const t = table(
    once.length + replayed.length + 1,
    (i) => {
      const c = once[i];
      if (c !== undefined) return [c[4], ok];
      return i < once.length + replayed.length ? [reset, status(503), ok] : [status(502), reset, ok];
    },
    (i, url) => {
      const c = once[i];
      if (c !== undefined) return route(url, { retries: 3, ...c[2] });
      return i < once.length + replayed.length ? route(url, { retries: 3, bufferLimit: '2MiB' }) : route(url);
    },
  );

  it.concurrent.each(once.map((c, i) => [...c, i] as const))('a 1 MiB POST is sent once: %s', async (_name, headers, _retry, chunked, fault, i) => {
    const body = randomBytes(MiB);
    const r = await send({ port: t.cli().proxyPort, path: casePath(i), method: 'POST', headers, body, chunked });
    const up = t.up(i);
    expect(up.seen.length).toBe(1);
    expect(r.headers['x-legate-attempts']).toBe('1');
    expect(r.status).toBe(fault.kind === 'reset' ? 502 : 503);
    // What was sent was the whole body, streamed.
    expect(sha256(up.seen[0]?.body ?? Buffer.alloc(0))).toBe(sha256(body));
  });

  it.concurrent.each(replayed.map((chunked, j) => [chunked, once.length + j] as const))(
    'a 1 MiB POST with Idempotency-Key within bufferLimit is replayed byte-identical (chunked: %s)',
    async (chunked, i) => {
      const body = randomBytes(MiB);
      const r = await send({ port: t.cli().proxyPort, path: casePath(i), method: 'POST', headers: { 'idempotency-key': 'abc' }, body, chunked });
      const up = t.up(i);
      expect(r.status).toBe(200);
      expect(r.headers['x-legate-attempts']).toBe('3');
      expect(up.seen.map((s) => sha256(s.body))).toEqual([sha256(body), sha256(body), sha256(body)]);
      for (const s of up.seen) expect(Number(s.headers['content-length'] ?? s.body.length)).toBe(MiB);
    },
  );

  it('a small chunked body is replayed byte-identical on every try', async () => {
    const i = once.length + replayed.length;
    const body = randomBytes(60 * 1024);
    const r = await send({ port: t.cli().proxyPort, path: casePath(i), method: 'PUT', body, chunked: true });
    expect(r.status).toBe(200);
    expect(t.up(i).seen.map((s) => sha256(s.body))).toEqual([sha256(body), sha256(body), sha256(body)]);
  });
});

describe('what the app gets back', () => {
  const sorry = (n: number): Fault => status(503, { 'x-upstream': `try-${n}`, 'content-type': 'application/vnd.test+json' }, `{"sorry":${n}}`);
  const t = table(
    2,
    (i) => (i === 0 ? [sorry(0), sorry(1), sorry(2)] : [{ kind: 'reset-mid-body', partial: 'first-bytes' }, ok]),
    (_i, url) => route(url, { retries: 2 }),
  );

  it('after retries run out: the last upstream 5xx exactly as sent, with legate headers added', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(0) });
    expect(r.status).toBe(503);
    expect(r.body).toBe('{"sorry":2}');
    expect(r.headers['x-upstream']).toBe('try-2');
    expect(r.headers['content-type']).toBe('application/vnd.test+json');
    expect(r.headers['x-legate-error']).toBeUndefined();
    expect(r.headers['x-legate-attempts']).toBe('3');
    expect(r.headers['x-legate-route']).toBe('c0');
    expect(r.headers['x-request-id']).toBeDefined();
    expect(t.up(0).seen.length).toBe(3);
  });

  it('never a retry once a response byte reached the app: head then a reset mid-body resets the app connection; the upstream saw one request', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(1) });
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    expect(r.body).toBe('first-bytes');
    expect(r.headers['x-legate-attempts']).toBe('1');
    expect(t.up(1).seen.length).toBe(1);
    // The next request is served normally: the reset touched only that exchange.
    const next = await send({ port: t.cli().proxyPort, path: casePath(1) });
    expect(next.status).toBe(200);
    expect(t.up(1).seen.length).toBe(2);
  });
});

describe('Retry-After on a 503', () => {
  const t = table(
    3,
    (i) => [status(503, { 'retry-after': i === 2 ? '3' : '1' }, `busy-${i}`), ok],
    // Case 0: the 1 s fits in the 5 s deadline. Case 1: it does not fit in 600 ms. Case 2: the app leaves during the wait.
    (i, url) => route(url, {}, { timeout: i === 1 ? '600ms' : '5s' }),
  );

  it('is waited for when it fits the deadline', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(0) });
    expect(r.status).toBe(200);
    expect(r.headers['x-legate-attempts']).toBe('2');
    const up = t.up(0);
    const gap = (up.arrivedAt[1] ?? 0) - (up.arrivedAt[0] ?? 0);
    expect(gap).toBeGreaterThanOrEqual(950);
    expect(gap).toBeLessThan(2_500);
  });

  it('is not waited for when it does not fit: the 503 is returned at once', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(1) });
    expect(r.status).toBe(503);
    expect(r.body).toBe('busy-1');
    expect(r.headers['retry-after']).toBe('1');
    expect(r.headers['x-legate-attempts']).toBe('1');
    // Not after waiting out the 600 ms deadline.
    expect(r.ms).toBeLessThan(550);
    expect(t.up(1).seen.length).toBe(1);
  });
  it('an app that hangs up during the wait: the held 503 is dropped and its upstream connection closed at once', async () => {
    const up = t.up(2);
    const app = http.get({ host: '127.0.0.1', port: t.cli().proxyPort, path: casePath(2), agent: false });
    app.on('error', () => undefined);
    await waitFor(() => (up.seen.length === 1 ? true : undefined), 'the first try', 3_000);
    app.destroy();
    // Well before the 3 s Retry-After (and the upstream's own 5 s keep-alive timeout).
    await waitFor(() => (up.connections.accepted > 0 && up.connections.closed === up.connections.accepted ? true : undefined), 'the upstream connection to close', 2_000);
    expect(up.seen.length).toBe(1);
  });
});

describe('control headers', () => {
  describe('steer retries', () => {
    type HeaderCase = readonly [name: string, headers: Record<string, string>, retry: Record<string, unknown>, faults: Fault[], status: number, tries: number];
    const cases: HeaderCase[] = [
      ['x-legate-max-retries lowers the retries', { 'x-legate-max-retries': '1' }, { retries: 4 }, [status(503)], 503, 2],
      ['x-legate-max-retries raises them up to maxFromHeader', { 'x-legate-max-retries': '50' }, { retries: 1, maxFromHeader: 3 }, [status(503)], 503, 4],
      ['x-legate-max-retries: 0 means one try', { 'x-legate-max-retries': '0' }, {}, [status(503)], 503, 1],
      ['x-legate-retry-on replaces the route list (409 now retried)', { 'x-legate-retry-on': '409' }, { on: [503] }, [status(409), ok], 200, 2],
      ['x-legate-retry-on replaces the route list (503 no longer retried)', { 'x-legate-retry-on': '409' }, { on: [503] }, [status(503), ok], 503, 1],
      ['x-legate-opt-out: retry, allowed', { 'x-legate-opt-out': 'retry' }, {}, [status(503), ok], 503, 1],
      ['x-envoy-max-retries', { 'x-envoy-max-retries': '1' }, { retries: 4 }, [status(503)], 503, 2],
      // Envoy keeps the route's setting when it cannot parse the value, and so does legate: no 400.
      ['x-envoy-max-retries: many is ignored (Envoy meaning)', { 'x-envoy-max-retries': 'many' }, { retries: 1, on: [503] }, [status(503), ok], 200, 2],
      ['x-envoy-retry-on: retriable-4xx', { 'x-envoy-retry-on': 'retriable-4xx' }, { on: [503] }, [status(409), ok], 200, 2],
      ['x-envoy-retry-on: 5xx covers a reset (Envoy meaning)', { 'x-envoy-retry-on': '5xx' }, { on: [503] }, [reset, ok], 200, 2],
      ['x-envoy-retry-on: gateway-error does not retry a 500', { 'x-envoy-retry-on': 'gateway-error' }, {}, [status(500), ok], 500, 1],
      ['x-envoy-retry-on: connect-failure does not retry a 503', { 'x-envoy-retry-on': 'connect-failure' }, {}, [status(503), ok], 503, 1],
    ];
    const t = table(
      cases.length + 1,
      (i) => cases[i]?.[3] ?? [status(503), ok],
      (i, url) => {
        const c = cases[i];
        return c === undefined ? route(url, {}, { optOut: ['log'] }) : route(url, c[2], { optOut: ['retry'] });
      },
    );

    it.concurrent.each(cases.map((c, i) => [...c, i] as const))('%s', async (_name, headers, _retry, _faults, expectedStatus, tries, i) => {
      const r = await send({ port: t.cli().proxyPort, path: casePath(i), headers });
      expect(r.status).toBe(expectedStatus);
      expect(r.headers['x-legate-attempts']).toBe(String(tries));
      expect(r.headers['x-legate-opt-out-denied']).toBeUndefined();
      expect(t.up(i).seen.length).toBe(tries);
    });

    it('x-legate-opt-out: retry on a route that does not allow it is not applied, and says so', async () => {
      const i = cases.length;
      const r = await send({ port: t.cli().proxyPort, path: casePath(i), headers: { 'x-legate-opt-out': 'retry, circuit-breaker' } });
      expect(r.status).toBe(200);
      expect(r.headers['x-legate-attempts']).toBe('2');
      expect(r.headers['x-legate-opt-out-denied']).toBe('retry, circuit-breaker');
      expect(t.up(i).seen.length).toBe(2);
    });
  });

  describe('malformed values', () => {
    const cases: Array<readonly [name: string, value: string, what: string]> = [
      ['x-legate-max-retries', '-1', 'negative'],
      ['x-legate-max-retries', 'lots', 'non-numeric'],
      ['x-legate-retry-on', 'whenever', 'unknown condition'],
      ['x-legate-retry-on', Array.from({ length: 10_000 }, () => '5').join(','), '10,000 entries'],
      ['x-legate-timeout-ms', '0', 'zero'],
      ['x-legate-timeout-ms', '1.5', 'fraction'],
      ['x-legate-per-try-timeout-ms', '-100', 'negative'],
      ['x-legate-opt-out', 'teleport', 'unknown opt-out'],
    ];
    // The 10,000-entry list is ~20 KB: let it past the header size limit so legate itself judges it.
    const t = table(cases.length, () => [ok], (_i, url) => route(url), { limits: { maxHeaderSize: '64KiB' } });

    it.concurrent.each(cases.map(([name, value, what], i) => [name, what, value, i] as const))(
      '%s (%s) → 400 bad-control-header naming it, upstream not contacted',
      async (name, _what, value, i) => {
        const r = await send({ port: t.cli().proxyPort, path: casePath(i), headers: { [name]: value } });
        expect(r.status).toBe(400);
        expect(r.headers['x-legate-error']).toBe('bad-control-header');
        const json = r.json<{ error: string; message: string; attempts: number }>();
        expect(json.error).toBe('bad-control-header');
        expect(json.message).toContain(name);
        expect(json.attempts).toBe(0);
        expect(t.up(i).seen.length).toBe(0);
      },
    );
  });

  it('never reach the upstream; other headers do', async () => {
    const cleanup = new Cleanup();
    try {
      const up = cleanup.add(await startFaulty(sequence(ok)));
      const cli = cleanup.add(await startCli(routesYaml([route(up.url, {}, { optOut: ['retry', 'circuit-breaker', 'log'] })])));
      const headers = {
        'x-legate-max-retries': '1',
        'x-legate-retry-on': '5xx',
        'x-legate-timeout-ms': '5000',
        'x-legate-per-try-timeout-ms': '4000',
        'x-legate-opt-out': 'log',
        'x-legate-anything-else': 'x',
        'x-envoy-max-retries': '1',
        'x-envoy-retry-on': '5xx',
        'x-envoy-upstream-rq-timeout-ms': '5000',
        'x-envoy-upstream-rq-per-try-timeout-ms': '4000',
        'idempotency-key': 'kept',
        'x-app-header': 'kept',
      };
      const r = await send({ port: cli.proxyPort, path: '/x', headers });
      expect(r.status).toBe(200);
      const got = up.seen[0]?.headers ?? {};
      const leaked = Object.keys(got).filter((h) => h.startsWith('x-legate-') || h.startsWith('x-envoy-'));
      expect(leaked).toEqual([]);
      expect(got['idempotency-key']).toBe('kept');
      expect(got['x-app-header']).toBe('kept');
    } finally {
      await cleanup.run();
    }
  });
});

describe('many retries', () => {
  const t = table(1, () => [status(503)], (_i, url) => route(url, { retries: 1, maxFromHeader: 20, budget: { minPerSecond: 100 } }));

  // http-proxy adds an 'aborted' and an 'error' listener to the app's request on every try and never removes
  // them; forward.ts detaches each retry's pair once it settles.
  it('thirteen tries of one request do not leak listeners onto the app request (MaxListenersExceededWarning)', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(0), headers: { 'x-legate-max-retries': '12' } });
    expect(r.headers['x-legate-attempts']).toBe('13');
    expect(t.up(0).seen.length).toBe(13);
    // Warnings are written asynchronously: give one the chance to arrive before concluding there is none.
    await waitFor(() => (t.cli().stderr().includes('MaxListenersExceededWarning') ? true : undefined), 'a warning', 1_000).catch(() => undefined);
    expect(t.cli().stderr()).not.toContain('MaxListenersExceededWarning');
  });
});

describe('retry budget', () => {
  it('under a sustained 50% failure rate, retries stay within ratio·requests + minPerSecond·10', async () => {
    const cleanup = new Cleanup();
    try {
      // Every other request the upstream receives fails.
      const up = cleanup.add(await startFaulty((n) => (n % 2 === 0 ? status(503) : ok)));
      const legate = cleanup.add(
        await startApp(routesYaml([route(up.url, { retries: 3, budget: { ratio: 0.2, minPerSecond: 1 } })], { logLevel: 'warn' })),
      );
      const finished: RequestContext[] = [];
      const observer = legate.app.observer;
      const original = observer.onComplete.bind(observer);
      observer.onComplete = (o) => {
        if (!('early' in o)) finished.push(o);
        original(o);
      };
      const requests = 400;
      const outcomes = await sendMany(requests, 16, () => ({ port: legate.proxyPort, path: '/x' }));
      const retries = up.seen.length - requests;
      const allowed = 0.2 * requests + 1 * 10;
      expect(retries).toBeGreaterThan(0);
      expect(retries).toBeLessThanOrEqual(allowed + 2);
      // Without the budget nearly every failed first try would have been retried.
      expect(outcomes.filter((o) => o.status === 503).length).toBeGreaterThan(50);
      const attempts = outcomes.reduce((sum, o) => sum + Number(o.headers['x-legate-attempts']), 0);
      expect(attempts).toBe(up.seen.length);
      expect(finished.length).toBe(requests);
      expect(finished.some((c) => c.budgetExhausted)).toBe(true);
      const exhausted = finished.filter((c) => c.budgetExhausted);
      expect(exhausted.every((c) => c.status === 503)).toBe(true);
      // And operators see it.
      const metrics = await send({ port: legate.adminPort, path: '/metrics' });
      const line = metrics.body.split('\n').find((l) => l.startsWith('legate_retry_budget_exhausted_total{'));
      expect(line).toBeDefined();
      expect(line).toContain('route="r"');
      expect(Number(line?.split(' ').pop())).toBe(exhausted.length);
    } finally {
      await cleanup.run();
    }
  });
});
