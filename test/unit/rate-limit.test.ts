/**
 * The token bucket and the concurrency limiter on their own (clock passed in,
 * no sockets), then both layers in an in-process legate through real sockets
 * where the route state and the release of slots can be inspected.
 */
import http, { type IncomingMessage } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { ConcurrencyLimiter, CONCURRENCY_STATE } from '../../src/layers/concurrency-limit.js';
import { RATE_LIMIT_STATE, TokenBucket } from '../../src/layers/rate-limit.js';
import { loadConfigText } from '../../src/config/load.js';
import type { LegateError } from '../../src/errors.js';
import { request } from '../helpers/client.js';
import { startApp, waitFor, type InProcess } from '../helpers/legate.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

describe('TokenBucket', () => {
  it('lets a full burst through at once, then refuses until a token has refilled', () => {
    const b = new TokenBucket(2, 3, 0);
    expect([b.tryTake(0), b.tryTake(0), b.tryTake(0)]).toEqual([true, true, true]);
    expect(b.tryTake(0)).toBe(false);
    // 2/s: one token every 500 ms.
    expect(b.tryTake(499)).toBe(false);
    expect(b.tryTake(500)).toBe(true);
    expect(b.tryTake(500)).toBe(false);
  });

  it('never holds more than burst tokens, however long it idles', () => {
    const b = new TokenBucket(100, 2, 0);
    expect(b.available(3_600_000)).toBe(2);
  });

  it('says in whole seconds, at least 1, when the next token comes', () => {
    const slow = new TokenBucket(0.25, 1, 0);
    expect(slow.tryTake(0)).toBe(true);
    expect(slow.retryAfterSeconds(0)).toBe(4);
    expect(slow.retryAfterSeconds(3_500)).toBe(1);
    const fast = new TokenBucket(1000, 1, 0);
    fast.tryTake(0);
    expect(fast.retryAfterSeconds(0)).toBe(1);
  });
});

describe('ConcurrencyLimiter', () => {
  const never = new AbortController().signal;

  it('grants up to maxConcurrent at once, queues up to maxPending, then answers 503 overloaded', async () => {
    const l = new ConcurrencyLimiter(2, 1);
    const a = l.tryAcquire();
    const b = l.tryAcquire();
    expect(a).toBeDefined();
    expect(b).toBeDefined();
    expect(l.tryAcquire()).toBeUndefined();
    const queued = l.acquire(never, Infinity, 'r');
    expect(l.pending).toBe(1);
    const refused = await l.acquire(never, Infinity, 'r').catch((e: LegateError) => e);
    expect((refused as LegateError).code).toBe('overloaded');
    expect((refused as LegateError).status).toBe(503);
    a?.();
    const c = await queued;
    expect(l.active).toBe(2);
    expect(l.pending).toBe(0);
    b?.();
    c();
    expect(l.active).toBe(0);
  });

  it('hands slots to waiters in arrival order, ahead of newcomers', async () => {
    const l = new ConcurrencyLimiter(1, 3);
    const first = l.tryAcquire() as () => void;
    const order: number[] = [];
    const waiters = [1, 2, 3].map((n) =>
      l.acquire(never, Infinity, 'r').then((release) => {
        order.push(n);
        return release;
      }),
    );
    // A newcomer while others wait does not jump the queue.
    expect(l.tryAcquire()).toBeUndefined();
    first();
    (await waiters[0])?.();
    (await waiters[1])?.();
    (await waiters[2])?.();
    expect(order).toEqual([1, 2, 3]);
    expect(l.active).toBe(0);
  });

  it('releases a slot exactly once, however often release is called', () => {
    const l = new ConcurrencyLimiter(2, 0);
    const a = l.tryAcquire() as () => void;
    l.tryAcquire();
    a();
    a();
    a();
    expect(l.active).toBe(1);
  });

  it('drops a waiter whose app hung up, with the abort reason, and leaves nothing behind', async () => {
    const l = new ConcurrencyLimiter(1, 2);
    const held = l.tryAcquire() as () => void;
    const ac = new AbortController();
    const waiting = l.acquire(ac.signal, Infinity, 'r');
    expect(l.pending).toBe(1);
    ac.abort(new Error('app gone'));
    await expect(waiting).rejects.toThrow('app gone');
    expect(l.pending).toBe(0);
    held();
    expect(l.active).toBe(0);
  });

  it('drops a waiter whose deadline passes with 504 upstream-timeout', async () => {
    const l = new ConcurrencyLimiter(1, 1);
    l.tryAcquire();
    const err = await l.acquire(never, 30, 'r').catch((e: LegateError) => e);
    expect((err as LegateError).code).toBe('upstream-timeout');
    expect((err as LegateError).message).toMatch(/no concurrency slot on route r/);
    expect(l.pending).toBe(0);
  });
});

describe('limit layers in a running legate', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()?.();
  });
  async function app(yaml: string): Promise<InProcess> {
    const a = await startApp(yaml);
    cleanups.push(() => a.stop());
    return a;
  }
  async function upstream(handler?: Parameters<typeof startUpstream>[0]): Promise<Upstream> {
    const u = await startUpstream(handler);
    cleanups.push(() => u.close());
    return u;
  }
  const yamlFor = (u: Upstream, policy: string): string =>
    `listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nroutes:\n  - name: r\n    upstream: ${u.url}\n    retry: { retries: 0 }\n${policy}`;

  it('answers 429 with Retry-After past the burst, ignores opt-out headers, and marks the request', async () => {
    const u = await upstream();
    const a = await app(yamlFor(u, '    optOut: [retry, circuit-breaker, log]\n    rateLimit: { perSecond: 0.5, burst: 2 }\n'));
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await request({ port: a.proxyPort, path: '/x', headers: { 'x-legate-opt-out': 'retry, circuit-breaker, log' } });
      statuses.push(r.status);
      if (r.status === 429) {
        expect(r.headers['x-legate-error']).toBe('rate-limited');
        expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
        expect(r.json<{ message: string }>().message).toMatch(/rate limit of 0.5\/s \(burst 2\)/);
      }
    }
    expect(statuses).toEqual([200, 200, 429, 429]);
    expect(u.seen).toHaveLength(2);
  });

  it('keeps the bucket across a reload that leaves the policy alone, and starts a fresh one when it changes', async () => {
    const u = await upstream();
    const yaml = yamlFor(u, '    rateLimit: { perSecond: 0.1, burst: 1 }\n');
    const a = await app(yaml);
    expect((await request({ port: a.proxyPort, path: '/' })).status).toBe(200);
    expect((await request({ port: a.proxyPort, path: '/' })).status).toBe(429);
    const bucket = a.app.current().routes[0]?.state.get(RATE_LIMIT_STATE, () => undefined);
    const same = loadConfigText(yaml, a.app.config.file);
    if (!same.ok) throw new Error('config');
    await a.app.apply(same.config);
    expect(a.app.current().routes[0]?.state.get(RATE_LIMIT_STATE, () => undefined)).toBe(bucket);
    expect((await request({ port: a.proxyPort, path: '/' })).status).toBe(429);
    const changed = loadConfigText(yamlFor(u, '    rateLimit: { perSecond: 0.1, burst: 2 }\n'), a.app.config.file);
    if (!changed.ok) throw new Error('config');
    await a.app.apply(changed.config);
    expect((await request({ port: a.proxyPort, path: '/' })).status).toBe(200);
  });

  it('frees the slot of a response whose body fails mid-stream, so the next request is not refused', async () => {
    const u = await upstream((_req, res) => {
      res.writeHead(200, { 'content-length': '100' });
      res.write('partial');
      // Head and some bytes reached legate; then the connection dies.
      setImmediate(() => res.socket?.destroy());
    });
    const a = await app(yamlFor(u, '    limits: { maxConcurrent: 1, maxPending: 0 }\n'));
    const limiter = (): ConcurrencyLimiter | undefined => a.app.current().routes[0]?.state.get<ConcurrencyLimiter | undefined>(CONCURRENCY_STATE, () => undefined);
    for (let i = 0; i < 3; i++) {
      await expect(request({ port: a.proxyPort, path: '/' })).rejects.toThrow();
      await waitFor(() => (limiter()?.active === 0 ? true : undefined), 'the slot to be released');
    }
    expect(u.seen).toHaveLength(3);
  });

  it('holds the slot while the body streams and releases it when the app hangs up mid-body', async () => {
    let finish: (() => void) | undefined;
    const u = await upstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk');
      finish = () => res.end('rest');
    });
    const a = await app(yamlFor(u, '    limits: { maxConcurrent: 1, maxPending: 0 }\n'));
    const limiter = (): ConcurrencyLimiter | undefined => a.app.current().routes[0]?.state.get<ConcurrencyLimiter | undefined>(CONCURRENCY_STATE, () => undefined);
    const req = http.get({ host: '127.0.0.1', port: a.proxyPort, path: '/', agent: false });
    const res = await new Promise<IncomingMessage>((resolve) => req.on('response', resolve));
    await new Promise((resolve) => res.once('data', resolve));
    // The head is back, the body is still streaming: the slot is still taken.
    expect(limiter()?.active).toBe(1);
    const second = await request({ port: a.proxyPort, path: '/' });
    expect(second.status).toBe(503);
    expect(second.headers['x-legate-error']).toBe('overloaded');
    req.destroy();
    await waitFor(() => (limiter()?.active === 0 ? true : undefined), 'the slot to be released after the app hung up');
    finish?.();
  });
});
