/**
 * Deadlines (SPEC §3 `timeout`, §6 `perTryTimeout`, §4 timeout headers):
 * the route's timeout covers every try, all back-off and the response body;
 * a timed-out try is aborted and leaves nothing running.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { casePath, Cleanup, type Fault, ok, routesYaml, send, sequence, stall, startFaulty, status, table } from '../helpers/faulty.js';
import { startApp, waitFor } from '../helpers/legate.js';
import { startUpstream } from '../helpers/upstream.js';

const NO_BREAKER = { enabled: false };

function route(upstream: string, more: Record<string, unknown>): Record<string, unknown> {
  return { name: 'r', upstream, circuitBreaker: NO_BREAKER, ...more };
}

/** Counts of the resources that keep this process alive, by type. */
function resources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of process.getActiveResourcesInfo()) counts.set(r, (counts.get(r) ?? 0) + 1);
  return counts;
}

function within(now: Map<string, number>, baseline: Map<string, number>, types: string[]): boolean {
  return types.every((t) => (now.get(t) ?? 0) <= (baseline.get(t) ?? 0));
}

describe('the route timeout (one legate, a route per case)', () => {
  const FAST = { base: '1ms', max: '2ms' };
  const t = table(
    7,
    (i) =>
      [
        [stall],
        [status(503)],
        [{ kind: 'stall-body', partial: 'head-and-some' }],
        [{ kind: 'slow-body', chunks: 5, everyMs: 40 }],
        [stall, ok],
        [stall],
        [ok],
      ][i] as Fault[],
    (i, url) =>
      [
        route(url, { timeout: '700ms', retry: { retries: 10, perTryTimeout: '300ms', backoff: FAST } }),
        route(url, { timeout: '500ms', retry: { retries: 100, backoff: { base: '200ms', max: '200ms' }, budget: { minPerSecond: 1000 } } }),
        route(url, { timeout: '500ms' }),
        route(url, { timeout: '2s' }),
        route(url, { timeout: '5s', retry: { perTryTimeout: '300ms', backoff: FAST } }),
        route(url, { timeout: 0, retry: { retries: 0 } }),
        route(url, { timeout: '400ms' }),
      ][i] as Record<string, unknown>,
  );
  const allClosed = (i: number) => (): true | undefined => {
    const c = t.up(i).connections;
    return c.accepted > 0 && c.closed === c.accepted ? true : undefined;
  };

  it('covers every try: stalled tries end in 504 upstream-timeout at the deadline, not after all retries', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(0) });
    expect(r.status).toBe(504);
    expect(r.headers['x-legate-error']).toBe('upstream-timeout');
    expect(r.ms).toBeGreaterThanOrEqual(650);
    // Eleven tries of 300 ms would take 3.3 s.
    expect(r.ms).toBeLessThan(2_500);
    // Tries at ~0, ~300 and ~600 ms; a fourth would start after the deadline.
    expect(Number(r.headers['x-legate-attempts'])).toBeLessThanOrEqual(3);
    expect(t.up(0).seen.length).toBe(Number(r.headers['x-legate-attempts']));
    // Every try's connection was torn down.
    await waitFor(allClosed(0), 'upstream connections closed', 3_000);
  });

  it('covers back-off: retries of quick 503s stop at the deadline', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(1) });
    expect([503, 504]).toContain(r.status);
    // A hundred retries with up to 200 ms of back-off each would take ~10 s.
    expect(r.ms).toBeLessThan(1_200);
    expect(t.up(1).seen.length).toBeGreaterThanOrEqual(2);
    expect(t.up(1).seen.length).toBeLessThan(101);
  });

  it('covers the response body: head then a stalled body is cut near the deadline', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(2) });
    expect(r.status).toBe(200);
    expect(r.body).toBe('head-and-some');
    expect(r.complete).toBe(false);
    expect(r.ms).toBeGreaterThanOrEqual(450);
    expect(r.ms).toBeLessThan(1_500);
    expect(t.up(2).seen.length).toBe(1);
    await waitFor(allClosed(2), 'upstream connection closed', 3_000);
  });

  it('lets a slow body finish when it ends within the deadline', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(3) });
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(r.body).toBe('chunk-1\nchunk-2\nchunk-3\nchunk-4\nchunk-5\n');
  });

  it('perTryTimeout aborts a stalled try (its connection closes) and the next try succeeds', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(4) });
    expect(r.status).toBe(200);
    expect(r.body).toBe('status-1');
    expect(r.headers['x-legate-attempts']).toBe('2');
    expect(r.ms).toBeGreaterThanOrEqual(280);
    expect(r.ms).toBeLessThan(3_000);
    expect(t.up(4).seen.length).toBe(2);
    // The first try's connection was destroyed (the second may stay in the pool).
    await waitFor(() => (t.up(4).connections.closed >= 1 ? true : undefined), 'the stalled try connection to close', 3_000);
  });

  it('covers reading the request body: a stalled upload gets 504 at the deadline, the upstream gets nothing', async () => {
    const r = await stalledUpload(t.cli().proxyPort, casePath(6));
    expect(r.statusLine).toBe('HTTP/1.1 504 Gateway Timeout');
    expect(r.ms).toBeGreaterThanOrEqual(380);
    expect(r.ms).toBeLessThan(3_000);
    expect(t.up(6).seen.length).toBe(0);
    expect(t.up(6).connections.accepted).toBe(0);
  });

  it('timeout 0 means none: x-legate-timeout-ms still sets one', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(5), headers: { 'x-legate-timeout-ms': '300' } });
    expect(r.status).toBe(504);
    expect(r.ms).toBeGreaterThanOrEqual(280);
    expect(r.ms).toBeLessThan(3_000);
  });
});

/** Sends a request head announcing a 1000-byte body, then 3 bytes, then nothing; resolves with legate's status line. */
function stalledUpload(port: number, path: string): Promise<{ statusLine: string; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let got = '';
    socket.on('data', (c: Buffer) => {
      got += c.toString('latin1');
      if (got.includes('\r\n\r\n')) {
        socket.destroy();
        resolve({ statusLine: got.slice(0, got.indexOf('\r\n')), ms: performance.now() - started });
      }
    });
    socket.on('error', reject);
    socket.write(`PUT ${path} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\nabc`);
  });
}

describe('no work left behind', () => {
  it('a stalled upstream: each timed-out try\'s socket is destroyed and no timer or socket outlives the request (in-process)', async () => {
    const cleanup = new Cleanup();
    try {
      const healthy = cleanup.add(await startUpstream());
      const stalled = cleanup.add(await startFaulty(sequence(stall)));
      const legate = cleanup.add(
        await startApp(
          routesYaml([
            { name: 'ok', match: { pathPrefix: '/ok' }, upstream: healthy.url, circuitBreaker: NO_BREAKER },
            // Per-try timeouts end the request long before the 30 s deadline, whose timer must not outlive it.
            { name: 'stall', match: { pathPrefix: '/stall' }, upstream: stalled.url, timeout: '30s', retry: { retries: 1, perTryTimeout: '150ms' } },
          ]),
        ),
      );
      // Warm up: pools, breakers and lazily created state exist before the baseline.
      expect((await send({ port: legate.proxyPort, path: '/ok' })).status).toBe(200);
      const idle = (): true | undefined => (legate.app.activeRequests === 0 ? true : undefined);
      // The response can reach the client a moment before legate has finished the request.
      await waitFor(idle, 'the warm-up request to finish', 3_000);
      const baseline = resources();

      const r = await send({ port: legate.proxyPort, path: '/stall' });
      expect(r.status).toBe(504);
      expect(r.headers['x-legate-error']).toBe('upstream-timeout');
      expect(r.headers['x-legate-attempts']).toBe('2');
      expect(stalled.seen.length).toBe(2);
      // The upstream sees every connection closed: legate destroyed the sockets of the timed-out tries.
      await waitFor(
        () => (stalled.connections.accepted > 0 && stalled.connections.closed === stalled.connections.accepted ? true : undefined),
        'the stalled upstream to see its connections close',
        3_000,
      );
      await waitFor(idle, 'the stalled request to finish', 3_000);
      await waitFor(() => (within(resources(), baseline, ['Timeout', 'TCPSocketWrap']) ? true : undefined), 'timers and sockets back to baseline', 3_000);
    } finally {
      await cleanup.run();
    }
  });
});

describe('timeout control headers', () => {
  type HeaderCase = readonly [name: string, headers: Record<string, string>];
  const shorten: HeaderCase[] = [
    ['x-legate-timeout-ms shortens the route timeout', { 'x-legate-timeout-ms': '300' }],
    ['x-envoy-upstream-rq-timeout-ms shortens it too', { 'x-envoy-upstream-rq-timeout-ms': '300' }],
  ];
  const perTry: HeaderCase[] = [
    ['x-legate-per-try-timeout-ms', { 'x-legate-per-try-timeout-ms': '400' }],
    ['x-envoy-upstream-rq-per-try-timeout-ms', { 'x-envoy-upstream-rq-per-try-timeout-ms': '400' }],
  ];
  const t = table(
    shorten.length + perTry.length + 1,
    (i) => (i < shorten.length ? [stall] : [stall, ok]),
    (i, url) =>
      i < shorten.length
        ? route(url, { timeout: '20s' })
        : i < shorten.length + perTry.length
          ? route(url, { timeout: '10s', retry: { backoff: { base: '1ms', max: '2ms' } } })
          : route(url, { optOut: ['retry'], retry: { perTryTimeout: '100ms' } }),
  );

  it.concurrent.each(shorten.map((c, i) => [...c, i] as const))('%s', async (_name, headers, i) => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(i), headers });
    expect(r.status).toBe(504);
    expect(r.headers['x-legate-error']).toBe('upstream-timeout');
    expect(r.ms).toBeGreaterThanOrEqual(280);
    // The route's own timeout is 20 s.
    expect(r.ms).toBeLessThan(3_000);
  });

  it.concurrent.each(perTry.map((c, j) => [...c, shorten.length + j] as const))(
    '%s bounds each try: a stalled try is abandoned and retried',
    async (_name, headers, i) => {
      const r = await send({ port: t.cli().proxyPort, path: casePath(i), headers });
      expect(r.status).toBe(200);
      expect(r.headers['x-legate-attempts']).toBe('2');
      expect(r.ms).toBeGreaterThanOrEqual(380);
      // The route has no per-try timeout and a 10 s deadline.
      expect(r.ms).toBeLessThan(3_000);
      expect(t.up(i).seen.length).toBe(2);
    },
  );

  it('x-legate-timeout-ms with opt-out of retries: one try, then 504', async () => {
    const i = shorten.length + perTry.length;
    const r = await send({ port: t.cli().proxyPort, path: casePath(i), headers: { 'x-legate-timeout-ms': '400', 'x-legate-opt-out': 'retry' } });
    expect(r.status).toBe(504);
    expect(r.headers['x-legate-attempts']).toBe('1');
    expect(t.up(i).seen.length).toBe(1);
  });
});
