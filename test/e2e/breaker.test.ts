/**
 * Circuit breaking (SPEC §7) through real sockets: per route, per endpoint
 * on weighted routes, its interplay with retries, and its state across
 * reloads. Upstreams count what reached them; "the upstream receives
 * nothing" is checked, never assumed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  casePath,
  caseRoutes,
  Cleanup,
  type Fault,
  type FaultyUpstream,
  ok,
  reset,
  routesYaml,
  send,
  sequence,
  startFaulty,
  type Resetter,
  startResetter,
  status,
  table,
  type Outcome,
} from '../helpers/faulty.js';
import { startApp, startCli, type CliProcess, type InProcess, waitFor } from '../helpers/legate.js';
import { deadPort } from '../helpers/upstream.js';

const FAST_RETRY = { backoff: { base: '1ms', max: '5ms' } };

function route(upstream: unknown, circuitBreaker: Record<string, unknown>, more: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: 'r', upstream, circuitBreaker, retry: { retries: 0, ...FAST_RETRY }, ...more };
}

/** A breaker transition log line into `to`, of `route` when given. */
function transitionLine(to: string, route?: string) {
  return (l: Record<string, unknown>): boolean =>
    l.msg === 'circuit breaker transition' && l.to === to && (route === undefined || l.route === route);
}

async function sendSeq(port: number, count: number, path = '/x'): Promise<Outcome[]> {
  const out: Outcome[] = [];
  for (let i = 0; i < count; i++) out.push(await send({ port, path }));
  return out;
}

function expectCircuitOpen(r: Outcome, resetSeconds: number): void {
  expect(r.status).toBe(503);
  expect(r.headers['x-legate-error']).toBe('circuit-open');
  expect(r.json<{ error: string }>().error).toBe('circuit-open');
  expect(r.headers['x-legate-attempts']).toBe('0');
  const after = Number(r.headers['retry-after']);
  expect(after).toBeGreaterThanOrEqual(1);
  expect(after).toBeLessThanOrEqual(resetSeconds);
}

describe('opening', () => {
  type OpenCase = readonly [name: string, faults: Fault[], sent: number, opened: boolean];
  const cases: OpenCase[] = [
    ['opens at volumeThreshold tries with a 50% failing share', [ok, status(500), ok, status(500)], 4, true],
    ['stays closed at 25%', [ok, ok, ok, status(500), ok, ok, ok, status(500)], 8, false],
    ['stays closed below volumeThreshold', [status(500), status(500), status(500)], 3, false],
    ['counts resets as failures', [reset, reset, reset, reset], 4, true],
    ['does not count 4xx', [status(404), status(409), status(400), status(404)], 4, false],
  ];
  const t = table(
    cases.length,
    (i) => [...(cases[i]?.[1] ?? []), ok],
    (_i, url) => route(url, { volumeThreshold: 4, errorThresholdPercentage: 50, window: '10s', resetTimeout: '20s' }),
  );

  it.concurrent.each(cases.map((c, i) => [...c, i] as const))('%s', async (_name, _faults, count, opened, i) => {
    const port = t.cli().proxyPort;
    const up = t.up(i);
    await sendSeq(port, count, casePath(i));
    expect(up.seen.length).toBe(count);
    const next = await send({ port, path: casePath(i) });
    if (opened) {
      expectCircuitOpen(next, 20);
      expect(up.seen.length).toBe(count);
      // The log line travels through the CLI's stdout, so it may land a moment after the response.
      await t.cli().waitForLine(transitionLine('open', `c${i}`), `c${i} open`, 3_000);
    } else {
      expect(next.status).toBe(200);
      expect(up.seen.length).toBe(count + 1);
    }
  });
});

describe('half-open', () => {
  // Two 500s open each breaker; request 2 is the trial. Case 0: the upstream holds the trial. Case 1: it fails.
  const t = table(
    2,
    (i) => [status(500), status(500), i === 0 ? { kind: 'hold' } : status(502), ok],
    (_i, url) => route(url, { volumeThreshold: 2, window: '10s', resetTimeout: '400ms' }),
  );

  async function openThenHalfOpen(i: number): Promise<CliProcess> {
    const cli = t.cli();
    await sendSeq(cli.proxyPort, 2, casePath(i));
    expectCircuitOpen(await send({ port: cli.proxyPort, path: casePath(i) }), 1);
    await cli.waitForLine(transitionLine('half-open', `c${i}`), 'half-open', 5_000);
    return cli;
  }

  it.concurrent('lets exactly one trial through while many requests arrive; its success closes the breaker', async () => {
    const cli = await openThenHalfOpen(0);
    const up = t.up(0);
    const before = up.seen.length;
    let answered = 0;
    const pending = Array.from({ length: 30 }, () =>
      send({ port: cli.proxyPort, path: casePath(0) }).then((o) => {
        answered++;
        return o;
      }),
    );
    // The upstream holds the trial; the other 29 must be refused meanwhile, without reaching it.
    await waitFor(() => (up.seen.length > before ? true : undefined), 'the trial to reach the upstream', 5_000);
    await waitFor(() => (answered === 29 ? true : undefined), '29 requests refused while the trial is held', 5_000);
    expect(up.seen.length).toBe(before + 1);
    up.release();
    const all = await Promise.all(pending);
    expect(up.seen.length).toBe(before + 1);
    const trial = all.filter((o) => o.status === 200);
    expect(trial.length).toBe(1);
    expect(trial[0]?.body).toBe('released');
    for (const o of all.filter((x) => x.status !== 200)) expectCircuitOpen(o, 1);
    await cli.waitForLine(transitionLine('closed', 'c0'), 'closed');
    expect((await send({ port: cli.proxyPort, path: casePath(0) })).status).toBe(200);
    expect(up.seen.length).toBe(before + 2);
  });

  it.concurrent('a failed trial opens the breaker again', async () => {
    const cli = await openThenHalfOpen(1);
    const up = t.up(1);
    const before = up.seen.length;
    const trial = await send({ port: cli.proxyPort, path: casePath(1) });
    expect(trial.status).toBe(502);
    expect(up.seen.length).toBe(before + 1);
    expectCircuitOpen(await send({ port: cli.proxyPort, path: casePath(1) }), 1);
    expect(up.seen.length).toBe(before + 1);
    await cli.waitForLine((l) => transitionLine('open', 'c1')(l) && l.from === 'half-open', 'half-open → open');
  });
});

describe('a dead upstream under load', () => {
  // c0: accepts and destroys every connection (countable); c1: a refused port. Retries 2: 300 tries without a breaker.
  const cleanup = new Cleanup();
  let dead: Resetter | undefined;
  let cli: CliProcess | undefined;
  beforeAll(async () => {
    dead = cleanup.add(await startResetter());
    const policy = { volumeThreshold: 10, errorThresholdPercentage: 50, window: '10s', resetTimeout: '30s' };
    const retry = { retry: { retries: 2, ...FAST_RETRY } };
    cli = cleanup.add(
      await startCli(routesYaml(caseRoutes([route(dead.url, policy, retry), route(`http://127.0.0.1:${await deadPort()}`, policy, retry)]))),
    );
  });
  afterAll(() => cleanup.run());

  const burst = (i: number): Promise<Outcome[]> =>
    Promise.all(Array.from({ length: 100 }, () => send({ port: cli?.proxyPort ?? 0, path: casePath(i) })));
  const triesOf = (outcomes: Outcome[]): number => outcomes.reduce((sum, o) => sum + Number(o.headers['x-legate-attempts'] ?? 0), 0);

  /** Every first try may be in flight before any fails; after that, only retries of the failures before the 10th, which opens it. */
  const MOST_TRIES = 100 + 10 - 1;

  it.concurrent('100 concurrent requests open the breaker; the upstream sees exactly the tries legate reports, bounded, and none once open', async () => {
    const first = await burst(0);
    const tries = triesOf(first);
    // Each try legate reports is one connection the upstream accepted: nothing hidden.
    await waitFor(() => (dead?.accepted() === tries ? true : undefined), `upstream accepted ${tries} connections (saw ${dead?.accepted()})`, 3_000);
    expect(tries).toBeGreaterThanOrEqual(10);
    expect(tries).toBeLessThanOrEqual(MOST_TRIES);
    for (const o of first) {
      if (o.status === 503) expect(o.headers['x-legate-error']).toBe('circuit-open');
      else expect([o.status, o.headers['x-legate-error']]).toEqual([502, 'upstream-reset']);
    }
    await cli?.waitForLine(transitionLine('open', 'c0'), 'open');
    const second = await burst(0);
    for (const o of second) expectCircuitOpen(o, 30);
    expect(dead?.accepted()).toBe(tries);
  });

  it.concurrent('a refused port: 100 concurrent requests open the breaker and then make no tries at all', async () => {
    const first = await burst(1);
    const tries = triesOf(first);
    expect(tries).toBeGreaterThanOrEqual(10);
    expect(tries).toBeLessThanOrEqual(MOST_TRIES);
    const second = await burst(1);
    for (const o of second) expectCircuitOpen(o, 30);
  });
});

describe('breakers and retries', () => {
  // c0: always 503, retries 6, opens at 3. c1: allows opting out of the breaker. c2: does not.
  const t = table(
    3,
    (i) => (i === 0 ? [status(503, {}, 'unavailable')] : [status(500), status(500), status(503), ok]),
    (i, url) =>
      i === 0
        ? route(url, { volumeThreshold: 3, resetTimeout: '20s' }, { retry: { retries: 6, ...FAST_RETRY } })
        : route(
            url,
            { volumeThreshold: 2, resetTimeout: '20s' },
            { retry: { retries: 2, on: [503], ...FAST_RETRY }, ...(i === 1 ? { optOut: ['circuit-breaker'] } : {}) },
          ),
  );

  it('an open breaker ends retrying: the last upstream answer is returned', async () => {
    const r = await send({ port: t.cli().proxyPort, path: casePath(0) });
    expect(r.status).toBe(503);
    expect(r.body).toBe('unavailable');
    expect(r.headers['x-legate-error']).toBeUndefined();
    expect(r.headers['x-legate-attempts']).toBe('3');
    expect(t.up(0).seen.length).toBe(3);
  });

  async function openBreaker(i: number): Promise<void> {
    await sendSeq(t.cli().proxyPort, 2, casePath(i));
    expectCircuitOpen(await send({ port: t.cli().proxyPort, path: casePath(i) }), 20);
    expect(t.up(i).seen.length).toBe(2);
  }

  it('x-legate-opt-out: circuit-breaker reaches an upstream whose breaker is open, and is retried, when the route allows it', async () => {
    await openBreaker(1);
    const r = await send({ port: t.cli().proxyPort, path: casePath(1), headers: { 'x-legate-opt-out': 'circuit-breaker' } });
    expect(r.status).toBe(200);
    expect(r.headers['x-legate-attempts']).toBe('2');
    expect(r.headers['x-legate-opt-out-denied']).toBeUndefined();
    expect(t.up(1).seen.length).toBe(4);
  });

  it('x-legate-opt-out: circuit-breaker is denied when the route does not allow it', async () => {
    await openBreaker(2);
    const r = await send({ port: t.cli().proxyPort, path: casePath(2), headers: { 'x-legate-opt-out': 'circuit-breaker' } });
    expectCircuitOpen(r, 20);
    expect(r.headers['x-legate-opt-out-denied']).toBe('circuit-breaker');
    expect(t.up(2).seen.length).toBe(2);
  });
});

describe('per-endpoint breakers on a weighted route', () => {
  // Each case: a healthy endpoint and a dead one (accepts and destroys) with equal weights.
  const cases: Array<readonly [name: string, retries: number]> = [
    ['with retries, the app never sees a 5xx', 2],
    ['without retries, 5xx stop once the breaker opened', 0],
  ];
  const cleanup = new Cleanup();
  const healthy: FaultyUpstream[] = [];
  const dead: Resetter[] = [];
  let cli: CliProcess | undefined;
  beforeAll(async () => {
    for (let i = 0; i < cases.length; i++) {
      healthy.push(cleanup.add(await startFaulty(sequence(ok))));
      dead.push(cleanup.add(await startResetter()));
    }
    const routes = cases.map(([, retries], i) =>
      route(
        [
          { url: healthy[i]?.url, weight: 1 },
          { url: dead[i]?.url, weight: 1 },
        ],
        { volumeThreshold: 3, resetTimeout: '30s' },
        { retry: { retries, ...FAST_RETRY } },
      ),
    );
    cli = cleanup.add(await startCli(routesYaml(caseRoutes(routes))));
  });
  afterAll(() => cleanup.run());

  it.concurrent.each(cases.map((c, i) => [...c, i] as const))('%s', async (_name, retries, i) => {
    if (cli === undefined) throw new Error('legate did not start');
    const outcomes = await sendSeq(cli.proxyPort, 40, casePath(i));
    // The dead endpoint's breaker opened after its third failed try; no try reached it after.
    expect(dead[i]?.accepted()).toBe(3);
    const open = await cli.waitForLine(transitionLine('open', `c${i}`), 'open');
    expect(open.endpoint).toBe(`127.0.0.1:${dead[i]?.port}`);
    const failed = outcomes.map((o, n) => [o.status, n] as const).filter(([s]) => s >= 500);
    if (retries > 0) expect(failed).toEqual([]);
    else {
      expect(failed.length).toBe(3);
      // Round-robin sends every other request to the dead endpoint until its breaker opens.
      expect(Math.max(...failed.map(([, n]) => n))).toBeLessThan(6);
    }
    expect(healthy[i]?.seen.length).toBe(40 - failed.length);
  });
});

describe('state across reloads (in-process)', () => {
  const base = (upstream: string, cb: Record<string, unknown>, extraRoute = false): string =>
    routesYaml([
      route(upstream, cb),
      ...(extraRoute ? [{ name: 'other', match: { pathPrefix: '/other' }, upstream: 'http://127.0.0.1:9' }] : []),
    ]);

  async function openBreaker(legate: InProcess, up: { seen: unknown[] }): Promise<void> {
    await sendSeq(legate.proxyPort, 2);
    expect(up.seen.length).toBe(2);
    expectCircuitOpen(await send({ port: legate.proxyPort, path: '/x' }), 20);
  }

  it('an open breaker stays open when the route policy did not change', async () => {
    const cleanup = new Cleanup();
    try {
      const up = cleanup.add(await startFaulty(sequence(status(500), status(500), ok)));
      const cb = { volumeThreshold: 2, resetTimeout: '20s' };
      const legate = cleanup.add(await startApp(base(up.url, cb)));
      await openBreaker(legate, up);
      // Another route is added; this one is unchanged.
      expect((await legate.app.reloadText(base(up.url, cb, true))).ok).toBe(true);
      expectCircuitOpen(await send({ port: legate.proxyPort, path: '/x' }), 20);
      expect(up.seen.length).toBe(2);
    } finally {
      await cleanup.run();
    }
  });

  it('a breaker starts closed when the route policy changed', async () => {
    const cleanup = new Cleanup();
    try {
      const up = cleanup.add(await startFaulty(sequence(status(500), status(500), ok)));
      const legate = cleanup.add(await startApp(base(up.url, { volumeThreshold: 2, resetTimeout: '20s' })));
      await openBreaker(legate, up);
      expect((await legate.app.reloadText(base(up.url, { volumeThreshold: 3, resetTimeout: '20s' }))).ok).toBe(true);
      expect((await send({ port: legate.proxyPort, path: '/x' })).status).toBe(200);
      expect(up.seen.length).toBe(3);
    } finally {
      await cleanup.run();
    }
  });

  it('a spent retry budget stays spent when the policy did not change, and is fresh when it did', async () => {
    const cleanup = new Cleanup();
    try {
      const up = cleanup.add(await startFaulty(sequence(status(503))));
      const policy = (minPerSecond: number): string =>
        routesYaml([
          {
            name: 'r',
            upstream: up.url,
            circuitBreaker: { enabled: false },
            retry: { retries: 1, ...FAST_RETRY, budget: { ratio: 0, minPerSecond } },
          },
        ]);
      const legate = cleanup.add(await startApp(policy(1)));
      // ratio 0, minPerSecond 1: ten retries in the 10 s window.
      const spend = await sendSeq(legate.proxyPort, 12);
      expect(spend.map((o) => o.headers['x-legate-attempts'])).toEqual([...Array<string>(10).fill('2'), '1', '1']);
      expect((await legate.app.reloadText(`${policy(1)}\n# touched\n`)).ok).toBe(true);
      expect((await send({ port: legate.proxyPort, path: '/x' })).headers['x-legate-attempts']).toBe('1');
      expect((await legate.app.reloadText(policy(2))).ok).toBe(true);
      expect((await send({ port: legate.proxyPort, path: '/x' })).headers['x-legate-attempts']).toBe('2');
    } finally {
      await cleanup.run();
    }
  });
});

describe('transitions reach the observer (in-process log)', () => {
  it('closed → open → half-open → closed, each logged as a warning with route and endpoint', async () => {
    const cleanup = new Cleanup();
    try {
      const up = cleanup.add(await startFaulty(sequence(status(500), status(500), ok)));
      const legate = cleanup.add(await startApp(routesYaml([route(up.url, { volumeThreshold: 2, resetTimeout: '300ms' })])));
      await sendSeq(legate.proxyPort, 2);
      const lines = () => legate.logs.lines.filter((l) => l.msg === 'circuit breaker transition');
      await waitFor(() => (lines().some((l) => l.to === 'half-open') ? true : undefined), 'half-open', 5_000);
      expect((await send({ port: legate.proxyPort, path: '/x' })).status).toBe(200);
      const seen = lines().map((l) => [l.from, l.to, l.route, l.endpoint, l.level]);
      const endpoint = `127.0.0.1:${up.port}`;
      expect(seen).toEqual([
        ['closed', 'open', 'r', endpoint, 40],
        ['open', 'half-open', 'r', endpoint, 40],
        ['half-open', 'closed', 'r', endpoint, 40],
      ]);
      // And counted.
      const metrics = (await send({ port: legate.adminPort, path: '/metrics' })).body.split('\n');
      for (const to of ['open', 'half-open', 'closed']) {
        const line = metrics.find((l) => l.startsWith('legate_circuit_breaker_transitions_total{') && l.includes(`to="${to}"`));
        expect(line, `transitions to ${to}`).toBeDefined();
        expect(Number(line?.split(' ').pop())).toBe(1);
      }
    } finally {
      await cleanup.run();
    }
  });
});
