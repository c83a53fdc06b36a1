/**
 * legate's Prometheus metrics (SPEC §9), one registry per app instance so
 * several apps (tests) never share series. Labels are only route names,
 * normalised methods, status codes and outcome words from legate's own
 * vocabulary: nothing an app puts in a request can create a series.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { RequestContext } from '../proxy/context.js';
import type { TryRecord } from '../proxy/types.js';
import type { RouteRuntime } from '../runtime/route-runtime.js';
import { isEarly } from './access-log.js';
import type { EarlyOutcome } from '../server/proxy-listener.js';

/** Metric names share this prefix (SPEC §9). */
export const METRIC_PREFIX = 'legate_';

/**
 * Seconds. Fine at the low end so a sub-millisecond proxy overhead shows up
 * as its own buckets rather than hiding under the first one.
 */
export const DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
]);

/** The `route` label of requests answered before a route took them. */
export const NO_ROUTE_LABEL = '';

export type BreakerState = 'closed' | 'half-open' | 'open';

/** Gauge value of each breaker state (SPEC §9: 0 closed, 1 half-open, 2 open). */
export const BREAKER_STATE_VALUE: Readonly<Record<BreakerState, number>> = Object.freeze({ closed: 0, 'half-open': 1, open: 2 });

/** A loaded certificate, as the expiry metric reports it. */
export interface CertificateExpiry {
  readonly file: string;
  readonly subject: string;
  /** Seconds since the epoch. */
  readonly notAfter: number;
}

/** Where the metrics read state that is cheaper to ask for at scrape time than to track per request. */
export interface MetricsSources {
  /** Requests in flight, read at scrape time. */
  readonly activeRequests?: () => number;
  /** Every certificate loaded, read at scrape time. */
  readonly certificates?: () => Iterable<CertificateExpiry>;
  /**
   * The routes serving now. With it, every breaker-enabled endpoint has a
   * state series from the start (0 until a transition says otherwise), and
   * series of removed routes, or of breakers a reload replaced, go away.
   */
  readonly routes?: () => readonly RouteRuntime[];
}

// Node parses any token as a method; only these become label values.
const KNOWN_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT']);

/** `GET` stays `GET`; anything outside the standard methods becomes `OTHER`. */
export function methodLabel(method: string): string {
  return KNOWN_METHODS.has(method) ? method : 'OTHER';
}

// Status classes precomputed so the hot path does no string building for them.
const STATUS_CLASS = ['1xx', '1xx', '2xx', '3xx', '4xx', '5xx'];

/** A try's outcome word: the status class (`2xx`…`5xx`) or legate's error code. */
export function tryOutcome(t: TryRecord): string {
  if (t.status !== undefined) return STATUS_CLASS[Math.floor(t.status / 100)] ?? 'other-status';
  return t.error ?? 'unknown';
}

interface BreakerRecord {
  readonly route: string;
  readonly endpoint: string;
  value: number;
  /**
   * The layer state of the endpoint the transition was reported for: when the
   * current endpoint holds another one, a reload replaced the breaker.
   */
  readonly owner: object | undefined;
}

function findOwner(routes: readonly RouteRuntime[], route: string, endpoint: string): object | undefined {
  for (const r of routes) {
    if (r.name !== route) continue;
    for (const e of r.balancer.endpoints) if (e.key === endpoint) return e.state;
    return r.state;
  }
  return undefined;
}

/** The metrics of one app instance. */
export class LegateMetrics {
  /** This instance's registry; never prom-client's global one. */
  readonly registry = new Registry();
  readonly #requests: Counter<'route' | 'method' | 'status'>;
  readonly #requestDuration: Histogram<'route'>;
  readonly #upstreamDuration: Histogram<'route'>;
  readonly #tries: Counter<'route' | 'outcome'>;
  readonly #retries: Counter<'route' | 'reason'>;
  readonly #budgetExhausted: Counter<'route'>;
  readonly #breakerTransitions: Counter<'route' | 'endpoint' | 'to'>;
  readonly #reloads: Counter<'result'>;
  readonly #resets: Counter<'route'>;
  readonly #breakers = new Map<string, BreakerRecord>();
  readonly #sources: MetricsSources;

  constructor(sources: MetricsSources = {}) {
    this.#sources = sources;
    const registers = [this.registry];
    const p = METRIC_PREFIX;
    collectDefaultMetrics({ register: this.registry, prefix: p });
    this.#requests = new Counter({
      name: `${p}requests_total`,
      help: 'Requests from the app, by route, method and the status legate answered with.',
      labelNames: ['route', 'method', 'status'],
      registers,
    });
    this.#requestDuration = new Histogram({
      name: `${p}request_duration_seconds`,
      help: 'Time from the request head arriving to the response ending, by route.',
      labelNames: ['route'],
      buckets: [...DURATION_BUCKETS],
      registers,
    });
    this.#upstreamDuration = new Histogram({
      name: `${p}upstream_duration_seconds`,
      help: 'Time of each try at an upstream, from its start to its response head or failure, by route.',
      labelNames: ['route'],
      buckets: [...DURATION_BUCKETS],
      registers,
    });
    this.#tries = new Counter({
      name: `${p}upstream_tries_total`,
      help: 'Tries at upstreams, by route and outcome (status class such as 2xx, or legate error code).',
      labelNames: ['route', 'outcome'],
      registers,
    });
    this.#retries = new Counter({
      name: `${p}retries_total`,
      help: 'Tries that were followed by a retry, by route and the reason.',
      labelNames: ['route', 'reason'],
      registers,
    });
    this.#budgetExhausted = new Counter({
      name: `${p}retry_budget_exhausted_total`,
      help: 'Requests whose retries stopped because the route retry budget was spent.',
      labelNames: ['route'],
      registers,
    });
    const breakers = this.#breakers;
    const routesNow = sources.routes;
    new Gauge({
      name: `${p}circuit_breaker_state`,
      help: 'Circuit breaker state by route and endpoint: 0 closed, 1 half-open, 2 open.',
      labelNames: ['route', 'endpoint'],
      registers,
      collect() {
        this.reset();
        if (routesNow === undefined) {
          for (const b of breakers.values()) this.set({ route: b.route, endpoint: b.endpoint }, b.value);
          return;
        }
        for (const r of routesNow()) {
          if (!r.settings.circuitBreaker.enabled) continue;
          for (const e of r.balancer.endpoints) {
            const b = breakers.get(breakerKey(r.name, e.key));
            const current = b !== undefined && (b.owner === e.state || b.owner === r.state);
            this.set({ route: r.name, endpoint: e.key }, current ? b.value : 0);
          }
        }
      },
    });
    this.#breakerTransitions = new Counter({
      name: `${p}circuit_breaker_transitions_total`,
      help: 'Circuit breaker state changes by route, endpoint and the state entered.',
      labelNames: ['route', 'endpoint', 'to'],
      registers,
    });
    const active = sources.activeRequests;
    new Gauge({
      name: `${p}active_requests`,
      help: 'Requests in flight.',
      registers,
      collect() {
        this.set(active === undefined ? 0 : active());
      },
    });
    this.#reloads = new Counter({
      name: `${p}config_reloads_total`,
      help: 'Config reloads by result (applied or rejected).',
      labelNames: ['result'],
      registers,
    });
    // Both series exist from the start so a rate() over them never starts from nothing.
    this.#reloads.inc({ result: 'applied' }, 0);
    this.#reloads.inc({ result: 'rejected' }, 0);
    const certificates = sources.certificates;
    new Gauge({
      name: `${p}certificate_expiry_timestamp_seconds`,
      help: 'notAfter of every loaded certificate, as seconds since the epoch, by file and subject.',
      labelNames: ['file', 'subject'],
      registers,
      collect() {
        // Rebuilt each scrape so a rotated-away certificate stops being reported.
        this.reset();
        if (certificates === undefined) return;
        // Two certificates of one subject in one file (a CA mid-rotation): the one that expires first matters.
        const soonest = new Map<string, CertificateExpiry>();
        for (const c of certificates()) {
          const key = `${c.file}\n${c.subject}`;
          const seen = soonest.get(key);
          if (seen === undefined || c.notAfter < seen.notAfter) soonest.set(key, c);
        }
        for (const c of soonest.values()) this.set({ file: c.file, subject: c.subject }, c.notAfter);
      },
    });
    this.#resets = new Counter({
      name: `${p}response_resets_total`,
      help: 'Responses that failed after their head reached the app, so the app connection was reset.',
      labelNames: ['route'],
      registers,
    });
  }

  /** Counts a finished request; `durationSeconds` from its arrival to now. */
  record(outcome: RequestContext | EarlyOutcome, durationSeconds: number): void {
    if (isEarly(outcome)) {
      this.#requests.inc({ route: NO_ROUTE_LABEL, method: methodLabel(outcome.method), status: String(outcome.status) });
      this.#requestDuration.observe({ route: NO_ROUTE_LABEL }, durationSeconds);
      return;
    }
    const ctx = outcome;
    const route = ctx.route.name;
    this.#requests.inc({ route, method: methodLabel(ctx.method), status: String(ctx.status) });
    const routeLabels = { route };
    this.#requestDuration.observe(routeLabels, durationSeconds);
    const tries = ctx.tries;
    for (let i = 0; i < tries.length; i++) {
      const t = tries[i] as TryRecord;
      this.#upstreamDuration.observe(routeLabels, t.ms / 1000);
      this.#tries.inc({ route, outcome: tryOutcome(t) });
      if (t.retryReason !== undefined) this.#retries.inc({ route, reason: t.retryReason });
    }
    if (ctx.budgetExhausted) this.#budgetExhausted.inc(routeLabels);
    if (ctx.resetAfterHead) this.#resets.inc(routeLabels);
  }

  breakerTransition(route: string, endpoint: string, to: BreakerState): void {
    const routes = this.#sources.routes;
    this.#breakers.set(breakerKey(route, endpoint), {
      route,
      endpoint,
      value: BREAKER_STATE_VALUE[to],
      owner: routes === undefined ? undefined : findOwner(routes(), route, endpoint),
    });
    this.#breakerTransitions.inc({ route, endpoint, to });
  }

  reload(result: 'applied' | 'rejected'): void {
    this.#reloads.inc({ result });
  }

  /** The exposition text and its content type. */
  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  close(): void {
    this.registry.clear();
    this.#breakers.clear();
  }
}

function breakerKey(route: string, endpoint: string): string {
  return `${route}\n${endpoint}`;
}
