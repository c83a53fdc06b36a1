/**
 * Rate and concurrency limits (SPEC §12, §5) through real sockets: the real
 * CLI for what a user would try first (a burst beyond the limit, more
 * requests than slots and queue), and legate in-process where the queue must
 * be seen to empty (deadline passed, app gone).
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import { CONCURRENCY_STATE, type ConcurrencyLimiter } from '../../src/layers/concurrency-limit.js';
import { request, type Reply } from '../helpers/client.js';
import { waitFor, type InProcess } from '../helpers/legate.js';
import { testScope } from '../helpers/scope.js';
import { type Upstream } from '../helpers/upstream.js';

const { upstream, cli, app } = testScope();
const head = 'listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n';

/**
 * An upstream that holds every request until `release()`, and records how
 * many it held at once; requests arriving after `release()` are answered at once.
 */
async function holdingUpstream(): Promise<{ up: Upstream; held: () => number; maxHeld: () => number; release: () => void }> {
  const waiting: ServerResponse[] = [];
  let inFlight = 0;
  let max = 0;
  let released = false;
  const up = await upstream((_req: IncomingMessage, res: ServerResponse) => {
    inFlight++;
    max = Math.max(max, inFlight);
    res.on('close', () => inFlight--);
    if (released) res.end('ok');
    else waiting.push(res);
  });
  return {
    up,
    held: () => waiting.filter((r) => !r.writableEnded).length,
    maxHeld: () => max,
    release: () => {
      released = true;
      for (const r of waiting.splice(0)) r.end('ok');
    },
  };
}

describe('rate limit through the CLI', () => {
  it('lets exactly `burst` requests of a burst reach the upstream; the rest get 429 rate-limited with Retry-After', async () => {
    const up = await upstream();
    // 0.1/s: no token refills while the burst is sent, so the count at the upstream is exact.
    const legate = await cli(`${head}routes:
  - name: limited
    upstream: ${up.url}
    rateLimit: { perSecond: 0.1, burst: 5 }
    optOut: [retry, circuit-breaker, log]
`);
    const replies = await Promise.all(
      Array.from({ length: 12 }, () => request({ port: legate.proxyPort, path: '/burst', headers: { 'x-legate-opt-out': 'retry, circuit-breaker' } })),
    );
    expect(up.seen).toHaveLength(5);
    const ok = replies.filter((r) => r.status === 200);
    const limited = replies.filter((r) => r.status === 429);
    expect(ok).toHaveLength(5);
    expect(limited).toHaveLength(7);
    for (const r of limited) {
      expect(r.headers['x-legate-error']).toBe('rate-limited');
      expect(r.headers['x-legate-route']).toBe('limited');
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number(r.headers['retry-after'])).toBeLessThanOrEqual(10);
      expect(r.json()).toMatchObject({ error: 'rate-limited', route: 'limited', attempts: 0 });
    }
    const lines = await waitFor(() => {
      const access = legate.lines.filter((l) => l.msg === 'access' && l.path === '/burst');
      return access.length === 12 ? access : undefined;
    }, 'an access line per request');
    expect(lines.filter((l) => l.status === 429 && l.error === 'rate-limited')).toHaveLength(7);
  });
});

describe('concurrency limit through the CLI', () => {
  it('answers 503 overloaded beyond maxConcurrent + maxPending, with the upstream never seeing more than maxConcurrent at once', async () => {
    const hold = await holdingUpstream();
    const legate = await cli(`${head}routes:
  - name: narrow
    upstream: ${hold.up.url}
    retry: { retries: 0 }
    limits: { maxConcurrent: 2, maxPending: 1 }
`);
    const replies: Array<Promise<Reply>> = Array.from({ length: 6 }, () => request({ port: legate.proxyPort, path: '/slow' }));
    const settled: Reply[] = [];
    for (const p of replies) void p.then((r) => settled.push(r));
    // Two in flight, one waiting, three refused at once: the refusals come back while the upstream still holds two.
    await waitFor(() => (settled.length === 3 && hold.held() === 2 ? true : undefined), 'three refusals while two are held');
    for (const r of settled) {
      expect(r.status).toBe(503);
      expect(r.headers['x-legate-error']).toBe('overloaded');
      expect(r.json<{ message: string }>().message).toMatch(/maxConcurrent 2.*maxPending 1.*upstream was not contacted/);
    }
    expect(hold.up.seen).toHaveLength(2);
    hold.release();
    const all = await Promise.all(replies);
    expect(all.map((r) => r.status).sort()).toEqual([200, 200, 200, 503, 503, 503]);
    // The queued request went through once a slot was free, never as a third concurrent one.
    expect(hold.up.seen).toHaveLength(3);
    expect(hold.maxHeld()).toBe(2);
  });
});

describe('concurrency queue', () => {
  const route = (u: Upstream) => `${head}routes:
  - name: q
    upstream: ${u.url}
    retry: { retries: 0 }
    limits: { maxConcurrent: 1, maxPending: 1 }
`;
  const limiter = (a: InProcess): ConcurrencyLimiter | undefined =>
    a.app.current().routes[0]?.state.get<ConcurrencyLimiter | undefined>(CONCURRENCY_STATE, () => undefined);

  it('lets a waiting request go with 504 when its deadline passes, freeing its place in the queue', async () => {
    const hold = await holdingUpstream();
    const a = await app(route(hold.up));
    const first = request({ port: a.proxyPort, path: '/1' });
    await waitFor(() => (hold.held() === 1 ? true : undefined), 'the first request at the upstream');
    const timedOut = await request({ port: a.proxyPort, path: '/2', headers: { 'x-legate-timeout-ms': '150' } });
    expect(timedOut.status).toBe(504);
    expect(timedOut.headers['x-legate-error']).toBe('upstream-timeout');
    expect(timedOut.json<{ message: string }>().message).toMatch(/no concurrency slot on route q became free within the request deadline/);
    expect(limiter(a)?.pending).toBe(0);
    // The place it left is free again: the next one waits instead of being refused.
    const third = request({ port: a.proxyPort, path: '/3' });
    await waitFor(() => (limiter(a)?.pending === 1 ? true : undefined), 'the third request to queue');
    hold.release();
    expect((await first).status).toBe(200);
    expect((await third).status).toBe(200);
    expect(hold.up.seen.map((s) => s.url)).toEqual(['/1', '/3']);
    await waitFor(() => (limiter(a)?.active === 0 ? true : undefined), 'every slot released');
  });

  it('drops a waiting request whose app hung up, without leaking its place or a slot', async () => {
    const hold = await holdingUpstream();
    const a = await app(route(hold.up));
    const first = request({ port: a.proxyPort, path: '/1' });
    await waitFor(() => (hold.held() === 1 ? true : undefined), 'the first request at the upstream');
    const gone = http.get({ host: '127.0.0.1', port: a.proxyPort, path: '/gone', agent: false });
    gone.on('error', () => undefined);
    await waitFor(() => (limiter(a)?.pending === 1 ? true : undefined), 'the second request to queue');
    gone.destroy();
    await waitFor(() => (limiter(a)?.pending === 0 ? true : undefined), 'the queue to empty');
    hold.release();
    expect((await first).status).toBe(200);
    await waitFor(() => (limiter(a)?.active === 0 ? true : undefined), 'every slot released');
    expect((await request({ port: a.proxyPort, path: '/after' })).status).toBe(200);
    expect(hold.up.seen.map((s) => s.url)).toEqual(['/1', '/after']);
  });
});
