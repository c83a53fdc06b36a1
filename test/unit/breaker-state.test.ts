import { UpstreamPool } from '../../src/runtime/upstream-pool.js';
import { afterEach, describe, expect, it } from 'vitest';
import { formatIssue, loadConfigText } from '../../src/config/load.js';
import { LegateError, UpstreamError } from '../../src/errors.js';
import { breakerFor, createCircuitBreakerLayer, endpointUsable } from '../../src/layers/circuit-breaker.js';
import type { BreakerState, Observer } from '../../src/observability/observer.js';
import type { Handler, ProxyRequest, UpstreamResponse } from '../../src/proxy/types.js';
import { createEndpoint, LayerState, RouteRuntime } from '../../src/runtime/route-runtime.js';
import { routesYaml } from '../helpers/faulty.js';
import { waitFor } from '../helpers/legate.js';

type Transition = [from: BreakerState, to: BreakerState];

interface Harness {
  readonly route: RouteRuntime;
  readonly transitions: Transition[];
  /** Runs one try through the breaker layer with `outcome` as the upstream's answer. */
  fire(outcome: number | Error | Promise<number>): Promise<number | string>;
  /** Upstream calls that got past the breaker. */
  calls(): number;
  state(): BreakerState;
}

const routes: RouteRuntime[] = [];
afterEach(() => {
  for (const r of routes.splice(0)) for (const e of r.balancer.endpoints) e.state.dispose();
});

function harness(circuitBreaker: Record<string, unknown>): Harness {
  const loaded = loadConfigText(routesYaml([{ name: 'r', upstream: 'http://127.0.0.1:9', circuitBreaker }]), '/tmp/routes.yaml');
  if (!loaded.ok) throw new Error(loaded.issues.map(formatIssue).join('\n'));
  const settings = loaded.config.routes[0];
  if (settings === undefined) throw new Error('no route');
  const endpoint = createEndpoint(settings.upstream.endpoints[0] as (typeof settings.upstream.endpoints)[0], () => new UpstreamPool());
  const route = new RouteRuntime(settings, [endpoint], new LayerState());
  routes.push(route);
  const transitions: Transition[] = [];
  const observer = { breakerTransition: (_r: string, _e: string, from: BreakerState, to: BreakerState) => transitions.push([from, to]) } as Pick<
    Observer,
    'breakerTransition'
  > as Observer;
  let calls = 0;
  const layer = createCircuitBreakerLayer(observer);
  return {
    route,
    transitions,
    calls: () => calls,
    state: () => breakerFor(route, endpoint, observer).state,
    async fire(outcome) {
      const next: Handler = async () => {
        calls++;
        const o = await outcome;
        if (o instanceof Error) throw o;
        return { status: o } as unknown as UpstreamResponse;
      };
      const req = { route, endpoint, policy: { optOut: new Set() } } as unknown as ProxyRequest;
      // Make sure the breaker exists before the first try, as the balancer would.
      endpointUsable(route, endpoint, observer);
      try {
        return (await layer(next)(req)).status;
      } catch (e) {
        if (e instanceof LegateError) return e.code;
        throw e;
      }
    },
  };
}

async function fireAll(h: Harness, outcomes: Array<number | Error>): Promise<Array<number | string>> {
  const out: Array<number | string> = [];
  for (const o of outcomes) out.push(await h.fire(o));
  return out;
}

const reset = (): Error => new UpstreamError('upstream-reset', '127.0.0.1:9', 'reset');
const POLICY = { volumeThreshold: 4, errorThresholdPercentage: 50, window: '10s', resetTimeout: '60ms' };

describe('opening', () => {
  it.each<[string, Array<number | Error>, BreakerState]>([
    ['opens when the failing share reaches the threshold at the volume', [200, 500, 200, 500], 'open'],
    ['opens on failures that are errors (reset)', [reset(), reset(), reset(), reset()], 'open'],
    ['stays closed below the threshold', [200, 200, 200, 500, 200, 200, 500], 'closed'],
    ['stays closed below the volume', [500, 500, 500], 'closed'],
    ['4xx is not a failure', [404, 409, 429, 400, 404], 'closed'],
  ])('%s', async (_name, outcomes, expected) => {
    const h = harness(POLICY);
    await fireAll(h, outcomes);
    expect(h.state()).toBe(expected);
  });

  it('open: answers circuit-open with Retry-After and calls nothing', async () => {
    const h = harness({ ...POLICY, resetTimeout: '30s' });
    await fireAll(h, [500, 500, 500, 500]);
    const before = h.calls();
    const endpoint = h.route.balancer.endpoints[0];
    if (endpoint === undefined) throw new Error('no endpoint');
    const req = { route: h.route, endpoint, policy: { optOut: new Set() } } as unknown as ProxyRequest;
    const observer = { breakerTransition: () => undefined } as Pick<Observer, 'breakerTransition'> as Observer;
    const err = await createCircuitBreakerLayer(observer)(() => Promise.reject(new Error('must not be called')))(req).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LegateError);
    expect((err as LegateError).code).toBe('circuit-open');
    expect((err as LegateError).retryAfterSeconds).toBeGreaterThanOrEqual(29);
    expect((err as LegateError).retryAfterSeconds).toBeLessThanOrEqual(30);
    expect(h.calls()).toBe(before);
    expect(h.transitions).toEqual([['closed', 'open']]);
  });

  it('counts only failOn: a TLS failure is not a failure unless listed', async () => {
    const tls = (): Error => new UpstreamError('upstream-tls-failure', '127.0.0.1:9', 'tls');
    const without = harness({ ...POLICY, failOn: ['reset'] });
    await fireAll(without, [tls(), tls(), tls(), tls()]);
    expect(without.state()).toBe('closed');
    const withTls = harness({ ...POLICY, failOn: ['tls-failure'] });
    await fireAll(withTls, [tls(), tls(), tls(), tls()]);
    expect(withTls.state()).toBe('open');
  });

  it('does not count the app hanging up as an upstream failure', async () => {
    const h = harness(POLICY);
    const gone = (): Error => new LegateError('client-closed', 'gone');
    await fireAll(h, [gone(), gone(), gone(), gone(), gone()]);
    expect(h.state()).toBe('closed');
  });
});

describe('half-open', () => {
  async function openThenHalfOpen(h: Harness): Promise<void> {
    await fireAll(h, [500, 500, 500, 500]);
    expect(h.state()).toBe('open');
    await waitFor(() => (h.state() === 'half-open' ? true : undefined), 'half-open', 2_000);
  }

  it('lets exactly one trial through; its success closes the breaker', async () => {
    const h = harness(POLICY);
    await openThenHalfOpen(h);
    const before = h.calls();
    let answer: (status: number) => void = () => undefined;
    const trial = h.fire(new Promise<number>((resolve) => (answer = resolve)));
    const others = await Promise.all(Array.from({ length: 20 }, () => h.fire(200)));
    expect(others.every((o) => o === 'circuit-open')).toBe(true);
    expect(h.calls()).toBe(before + 1);
    answer(200);
    expect(await trial).toBe(200);
    expect(h.state()).toBe('closed');
    expect(h.transitions).toEqual([
      ['closed', 'open'],
      ['open', 'half-open'],
      ['half-open', 'closed'],
    ]);
  });

  it('a failed trial opens it again', async () => {
    const h = harness(POLICY);
    await openThenHalfOpen(h);
    expect(await h.fire(503)).toBe(503);
    expect(h.state()).toBe('open');
    expect(await h.fire(200)).toBe('circuit-open');
    expect(h.transitions.at(-1)).toEqual(['half-open', 'open']);
  });

  it('a trial the app hung up on proves nothing: the breaker opens again instead of closing', async () => {
    const h = harness(POLICY);
    await openThenHalfOpen(h);
    expect(await h.fire(new LegateError('client-closed', 'gone'))).toBe('client-closed');
    expect(h.state()).toBe('open');
  });

  it('after closing, a fresh run of volumeThreshold failures opens it again, however many requests it rejected', async () => {
    const h = harness(POLICY);
    await fireAll(h, [500, 500, 500, 500]);
    await fireAll(h, Array.from({ length: 50 }, () => 200));
    await waitFor(() => (h.state() === 'half-open' ? true : undefined), 'half-open', 2_000);
    expect(await h.fire(200)).toBe(200);
    expect(h.state()).toBe('closed');
    await fireAll(h, [500, 500, 500, 500]);
    expect(h.state()).toBe('open');
  });

  it('after closing, one failure does not reopen it: the window starts afresh', async () => {
    const h = harness(POLICY);
    await openThenHalfOpen(h);
    expect(await h.fire(200)).toBe(200);
    expect(await h.fire(500)).toBe(500);
    expect(h.state()).toBe('closed');
  });
});

describe('volume counts finished tries', () => {
  it('opens once volumeThreshold tries have failed even while many more are in flight', async () => {
    const h = harness({ ...POLICY, volumeThreshold: 5 });
    const fail: Array<() => void> = [];
    const inFlight = Array.from({ length: 50 }, () => h.fire(new Promise<number>((resolve) => fail.push(() => resolve(502)))));
    // Five of the fifty fail: 5 finished tries, all failures.
    for (const f of fail.slice(0, 5)) f();
    await waitFor(() => (h.state() === 'open' ? true : undefined), 'open', 2_000);
    for (const f of fail.slice(5)) f();
    await Promise.all(inFlight);
  });
});

describe('the rolling window', () => {
  it("counts tries without keeping each one's run time (opossum keeps them even with percentiles off)", async () => {
    const h = harness(POLICY);
    await fireAll(h, [...Array.from({ length: 300 }, () => 200), 404, 500]);
    const endpoint = h.route.balancer.endpoints[0];
    if (endpoint === undefined) throw new Error('no endpoint');
    const { breaker } = breakerFor(h.route, endpoint, { breakerTransition: () => undefined } as Pick<Observer, 'breakerTransition'> as Observer);
    expect(breaker.stats.successes).toBe(301);
    expect(breaker.stats.failures).toBe(1);
    expect(breaker.stats.fires).toBe(302);
    expect(breaker.status.window.map((b) => b.latencyTimes.length)).toEqual(Array.from({ length: 10 }, () => 0));
  });
});
