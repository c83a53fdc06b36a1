/**
 * The per-request families keep their series without prom-client's label
 * hashing (metrics.ts `RequestFamily`); their exposition must stay what
 * prom-client's own Counter and Histogram write. The reference below is how
 * `record()` used them before: the same outcomes go to both, and every
 * family's text must match, byte for byte.
 */
import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { DURATION_BUCKETS, LegateMetrics, methodLabel, NO_ROUTE_LABEL, tryOutcome } from '../../src/observability/metrics.js';
import type { RequestContext } from '../../src/proxy/context.js';
import type { TryRecord } from '../../src/proxy/types.js';
import type { EarlyOutcome } from '../../src/server/proxy-listener.js';

/** The fields `record()` reads from a routed request. */
interface Routed {
  readonly route: { readonly name: string };
  readonly method: string;
  readonly status: number;
  readonly tries: TryRecord[];
  readonly budgetExhausted: boolean;
  readonly resetAfterHead: boolean;
  readonly startedAt: number;
}

type Outcome = Routed | EarlyOutcome;

const FAMILIES = [
  'legate_requests_total',
  'legate_request_duration_seconds',
  'legate_upstream_duration_seconds',
  'legate_upstream_tries_total',
  'legate_retries_total',
  'legate_retry_budget_exhausted_total',
  'legate_response_resets_total',
] as const;

/** `record()` as it was, on prom-client's Counter and Histogram, in a registry of its own. */
function reference(): { registry: Registry; record(o: Outcome, seconds: number): void } {
  const registry = new Registry();
  const registers = [registry];
  const counter = (name: string, help: string, labelNames: string[]) => new Counter({ name, help, labelNames, registers });
  const histogram = (name: string, help: string) => new Histogram({ name, help, labelNames: ['route'], buckets: [...DURATION_BUCKETS], registers });
  const requests = counter('legate_requests_total', 'Requests from the app, by route, method and the status legate answered with.', ['route', 'method', 'status']);
  const requestDuration = histogram('legate_request_duration_seconds', 'Time from the request head arriving to the response ending, by route.');
  const upstreamDuration = histogram('legate_upstream_duration_seconds', 'Time of each try at an upstream, from its start to its response head or failure, by route.');
  const tries = counter('legate_upstream_tries_total', 'Tries at upstreams, by route and outcome (status class such as 2xx, or legate error code).', ['route', 'outcome']);
  const retries = counter('legate_retries_total', 'Tries that were followed by a retry, by route and the reason.', ['route', 'reason']);
  const budget = counter('legate_retry_budget_exhausted_total', 'Requests whose retries stopped because the route retry budget was spent.', ['route']);
  const resets = counter('legate_response_resets_total', 'Responses that failed after their head reached the app, so the app connection was reset.', ['route']);
  return {
    registry,
    record(o, seconds) {
      if ('early' in o) {
        requests.inc({ route: NO_ROUTE_LABEL, method: methodLabel(o.method), status: String(o.status) });
        requestDuration.observe({ route: NO_ROUTE_LABEL }, seconds);
        return;
      }
      const route = o.route.name;
      requests.inc({ route, method: methodLabel(o.method), status: String(o.status) });
      requestDuration.observe({ route }, seconds);
      for (const t of o.tries) {
        upstreamDuration.observe({ route }, t.ms / 1000);
        tries.inc({ route, outcome: tryOutcome(t) });
        if (t.retryReason !== undefined) retries.inc({ route, reason: t.retryReason });
      }
      if (o.budgetExhausted) budget.inc({ route });
      if (o.resetAfterHead) resets.inc({ route });
    },
  };
}

function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1_664_525) + 1_013_904_223) >>> 0;
    return s / 2 ** 32;
  };
}

function pick<T>(next: () => number, from: readonly T[]): T {
  return from[Math.floor(next() * from.length)] as T;
}

const ROUTES = ['api', 'payments', 'a "quoted"\\route\nname', ''];
const METHODS = ['GET', 'POST', 'HEAD', 'DELETE', 'PURGE', 'get', 'CONNECT'];
const STATUSES = [200, 201, 204, 304, 404, 499, 502, 503, 504];
// Bounds themselves, just either side of them, zero, and past the last one.
const SECONDS = [0, 0.0001, 0.00010001, 0.00025, 0.0007, 0.001, 0.0099, 0.25, 1, 2.5, 29.9, 30, 30.0001, 120];

function randomOutcome(next: () => number): Outcome {
  if (next() < 0.1) {
    return { early: true, id: 'e', method: pick(next, METHODS), path: '/', status: pick(next, [400, 404, 405, 503]), errorCode: 'no-route', startedAt: 0, bytesOut: 120 };
  }
  const tries: TryRecord[] = [];
  const n = Math.floor(next() * 4);
  for (let i = 0; i < n; i++) {
    const failed = next() < 0.3;
    tries.push({
      endpoint: '10.0.0.7:8080',
      ms: pick(next, SECONDS) * 1000,
      ...(failed ? { error: pick(next, ['upstream-reset', 'upstream-timeout', 'upstream-connect-failure']) } : { status: pick(next, STATUSES) }),
      ...(i < n - 1 ? { retryReason: pick(next, ['503', 'reset', 'timeout', 'connect-failure']) } : {}),
    });
  }
  return {
    route: { name: pick(next, ROUTES) },
    method: pick(next, METHODS),
    status: pick(next, STATUSES),
    tries,
    budgetExhausted: next() < 0.05,
    resetAfterHead: next() < 0.05,
    startedAt: 0,
  };
}

async function familyText(registry: Registry, name: string): Promise<string> {
  return registry.getSingleMetricAsString(name);
}

describe('the per-request metric families', () => {
  it('expose exactly what prom-client exposed for the same requests', async () => {
    const metrics = new LegateMetrics();
    const ref = reference();
    const next = prng(7);
    for (let i = 0; i < 2000; i++) {
      const outcome = randomOutcome(next);
      const seconds = pick(next, SECONDS) + (next() < 0.5 ? next() / 1000 : 0);
      metrics.record(outcome as RequestContext | EarlyOutcome, seconds);
      ref.record(outcome, seconds);
      // Series are exposed in the order first counted: compare early too, while few exist.
      if (i === 3) for (const f of FAMILIES) expect(await familyText(metrics.registry, f)).toBe(await familyText(ref.registry, f));
    }
    for (const f of FAMILIES) expect(await familyText(metrics.registry, f)).toBe(await familyText(ref.registry, f));
    metrics.close();
  });

  it('expose a family with nothing counted yet as prom-client does, and keep the families in their order', async () => {
    const metrics = new LegateMetrics();
    const ref = reference();
    for (const f of FAMILIES) expect(await familyText(metrics.registry, f)).toBe(await familyText(ref.registry, f));
    const { body } = await metrics.exposition();
    const names = [...body.matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]).filter((n) => !n?.startsWith('legate_process_') && !n?.startsWith('legate_nodejs_'));
    expect(names).toEqual([
      'legate_requests_total',
      'legate_request_duration_seconds',
      'legate_upstream_duration_seconds',
      'legate_upstream_tries_total',
      'legate_retries_total',
      'legate_retry_budget_exhausted_total',
      'legate_circuit_breaker_state',
      'legate_circuit_breaker_transitions_total',
      'legate_active_requests',
      'legate_config_reloads_total',
      'legate_certificate_expiry_timestamp_seconds',
      'legate_response_resets_total',
    ]);
    metrics.close();
  });

  it('fail on a duration that is not a number, as prom-client did', () => {
    const metrics = new LegateMetrics();
    const early: EarlyOutcome = { early: true, id: 'e', method: 'GET', path: '/', status: 404, errorCode: 'no-route', startedAt: 0, bytesOut: 120 };
    expect(() => metrics.record(early, Number.NaN)).toThrow(new TypeError('Value is not a valid number: NaN'));
    metrics.close();
  });

  it('start again from nothing when the registry resets them', async () => {
    const metrics = new LegateMetrics();
    const ref = reference();
    const next = prng(11);
    for (let i = 0; i < 50; i++) metrics.record(randomOutcome(next) as RequestContext | EarlyOutcome, 0.001);
    metrics.registry.resetMetrics();
    const again = prng(12);
    for (let i = 0; i < 50; i++) {
      const o = randomOutcome(again);
      metrics.record(o as RequestContext | EarlyOutcome, 0.002);
      ref.record(o, 0.002);
    }
    for (const f of FAMILIES) expect(await familyText(metrics.registry, f)).toBe(await familyText(ref.registry, f));
    metrics.close();
  });
});
