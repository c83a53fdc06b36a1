/**
 * legate's Prometheus metrics (SPEC §9), one registry per app instance so
 * several apps (tests) never share series. Labels are only route names,
 * normalised methods, status codes and outcome words from legate's own
 * vocabulary: nothing an app puts in a request can create a series.
 */
import { format } from 'node:util';
import { collectDefaultMetrics, Counter, Gauge, Registry, type Metric } from 'prom-client';
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
// A known method's place in the set: with the status, a number that keys its requests series.
const METHOD_INDEX: ReadonlyMap<string, number> = new Map([...KNOWN_METHODS].map((m, i) => [m, i]));

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

type Labels = Record<string, string>;

/** A series of a per-request family: its labels, fixed when first counted. */
interface CounterSeries {
  readonly labels: Labels;
  value: number;
}

interface HistogramSeries {
  readonly labels: Labels;
  /** Observations per bucket (not cumulative); those above every bound are only in `count`. */
  readonly counts: number[];
  sum: number;
  count: number;
}

/** A sample as prom-client's registry formats it (`metricName` defaults to the family's name). */
interface Sample {
  readonly value: number;
  readonly labels: Readonly<Record<string, string | number>>;
  readonly metricName?: string;
}

/**
 * The series of one family, found by route and one more key in two Maps of
 * long-lived strings and small numbers: a request builds and hashes no label
 * object, where prom-client's `inc`/`observe` (and its `labels()` children,
 * which only bind the same call) hash and validate the labels every time.
 * Kept in the order first counted, the order prom-client exposes series in.
 */
class SeriesIndex<S> {
  readonly #byRoute = new Map<string, Map<string | number, S>>();
  readonly list: S[] = [];

  find(route: string, key: string | number): S | undefined {
    return this.#byRoute.get(route)?.get(key);
  }

  add(route: string, key: string | number, series: S): S {
    let byKey = this.#byRoute.get(route);
    if (byKey === undefined) this.#byRoute.set(route, (byKey = new Map()));
    byKey.set(key, series);
    this.list.push(series);
    return series;
  }

  clear(): void {
    this.#byRoute.clear();
    this.list.length = 0;
  }
}

/**
 * A family counted per request, exposed through the registry as prom-client
 * exposes its own (the registry formats the samples `get()` returns, so the
 * text is the same). Registered on its own: the registry reads a metric only
 * through `name`, `help`, `type`, `aggregator`, `get()` and `reset()`.
 */
abstract class RequestFamily<S extends { readonly labels: Labels }> {
  readonly aggregator = 'sum';
  abstract readonly type: 'counter' | 'histogram';
  protected readonly index = new SeriesIndex<S>();

  constructor(
    // Not readonly: the registry renames counters when it writes OpenMetrics.
    public name: string,
    readonly help: string,
    registry: Registry,
  ) {
    registry.registerMetric(this as unknown as Metric);
  }

  protected abstract samples(series: S): Sample[];

  get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: Sample[] }> {
    const values = this.index.list.flatMap((s) => this.samples(s));
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }

  reset(): void {
    this.index.clear();
  }
}

class RequestCounter extends RequestFamily<CounterSeries> {
  readonly type = 'counter';

  /** Adds one to the series of `route` and `key`; `labels` names it the first time. */
  inc(route: string, key: string | number, labels: () => Labels): void {
    const series = this.index.find(route, key) ?? this.index.add(route, key, { labels: labels(), value: 0 });
    series.value += 1;
  }

  protected samples(s: CounterSeries): Sample[] {
    return [{ labels: s.labels, value: s.value }];
  }
}

class RequestHistogram extends RequestFamily<HistogramSeries> {
  readonly type = 'histogram';
  readonly #bounds: readonly number[];

  constructor(name: string, help: string, registry: Registry, bounds: readonly number[]) {
    super(name, help, registry);
    this.#bounds = bounds;
  }

  /** One observation for `route`, as prom-client's `observe({ route }, value)`. */
  observe(route: string, value: number): void {
    // prom-client's check and message, so a bad value fails as it did.
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${format(value)}`);
    const series = this.index.find(route, 0) ?? this.index.add(route, 0, { labels: { route }, counts: this.#bounds.map(() => 0), sum: 0, count: 0 });
    const bounds = this.#bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        (series.counts[i] as number) += 1;
        break;
      }
    }
    series.sum += value;
    series.count += 1;
  }

  /** prom-client's samples for a series: cumulative buckets, `+Inf`, sum, count; `le` first. */
  protected samples(s: HistogramSeries): Sample[] {
    const bucket = `${this.name}_bucket`;
    const out: Sample[] = [];
    let cumulative = 0;
    this.#bounds.forEach((le, i) => {
      cumulative += s.counts[i] as number;
      out.push({ labels: { le, ...s.labels }, value: cumulative, metricName: bucket });
    });
    out.push(
      { labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: bucket },
      { labels: s.labels, value: s.sum, metricName: `${this.name}_sum` },
      { labels: s.labels, value: s.count, metricName: `${this.name}_count` },
    );
    return out;
  }
}

/** The metrics of one app instance. */
export class LegateMetrics {
  /** This instance's registry; never prom-client's global one. */
  readonly registry = new Registry();
  // What record() counts: every request, so found without hashing labels (RequestFamily).
  readonly #requests: RequestCounter;
  readonly #requestDuration: RequestHistogram;
  readonly #upstreamDuration: RequestHistogram;
  readonly #tries: RequestCounter;
  readonly #retries: RequestCounter;
  readonly #budgetExhausted: RequestCounter;
  readonly #resets: RequestCounter;
  readonly #breakerTransitions: Counter<'route' | 'endpoint' | 'to'>;
  readonly #reloads: Counter<'result'>;
  readonly #breakers = new Map<string, BreakerRecord>();
  readonly #sources: MetricsSources;

  constructor(sources: MetricsSources = {}) {
    this.#sources = sources;
    const registers = [this.registry];
    const p = METRIC_PREFIX;
    collectDefaultMetrics({ register: this.registry, prefix: p });
    const registry = this.registry;
    // Registered in this order, the order of the exposition.
    this.#requests = new RequestCounter(`${p}requests_total`, 'Requests from the app, by route, method and the status legate answered with.', registry);
    this.#requestDuration = new RequestHistogram(
      `${p}request_duration_seconds`,
      'Time from the request head arriving to the response ending, by route.',
      registry,
      DURATION_BUCKETS,
    );
    this.#upstreamDuration = new RequestHistogram(
      `${p}upstream_duration_seconds`,
      'Time of each try at an upstream, from its start to its response head or failure, by route.',
      registry,
      DURATION_BUCKETS,
    );
    this.#tries = new RequestCounter(`${p}upstream_tries_total`, 'Tries at upstreams, by route and outcome (status class such as 2xx, or legate error code).', registry);
    this.#retries = new RequestCounter(`${p}retries_total`, 'Tries that were followed by a retry, by route and the reason.', registry);
    this.#budgetExhausted = new RequestCounter(
      `${p}retry_budget_exhausted_total`,
      'Requests whose retries stopped because the route retry budget was spent.',
      registry,
    );
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
    this.#resets = new RequestCounter(
      `${p}response_resets_total`,
      'Responses that failed after their head reached the app, so the app connection was reset.',
      registry,
    );
  }

  /** Counts a finished request; `durationSeconds` from its arrival to now. */
  record(outcome: RequestContext | EarlyOutcome, durationSeconds: number): void {
    if (isEarly(outcome)) {
      this.#countRequest(NO_ROUTE_LABEL, outcome.method, outcome.status);
      this.#requestDuration.observe(NO_ROUTE_LABEL, durationSeconds);
      return;
    }
    const ctx = outcome;
    const route = ctx.route.name;
    this.#countRequest(route, ctx.method, ctx.status);
    this.#requestDuration.observe(route, durationSeconds);
    const tries = ctx.tries;
    for (let i = 0; i < tries.length; i++) {
      const t = tries[i] as TryRecord;
      this.#upstreamDuration.observe(route, t.ms / 1000);
      const outcomeWord = tryOutcome(t);
      this.#tries.inc(route, outcomeWord, () => ({ route, outcome: outcomeWord }));
      const reason = t.retryReason;
      if (reason !== undefined) this.#retries.inc(route, reason, () => ({ route, reason }));
    }
    if (ctx.budgetExhausted) this.#budgetExhausted.inc(route, 0, () => ({ route }));
    if (ctx.resetAfterHead) this.#resets.inc(route, 0, () => ({ route }));
  }

  #countRequest(route: string, method: string, status: number): void {
    const m = METHOD_INDEX.get(method);
    // A number key for the usual integer status costs no string; anything else is keyed by its label text.
    const key = m !== undefined && Number.isSafeInteger(status) && status >= 0 ? status * 16 + m : `${methodLabel(method)} ${String(status)}`;
    this.#requests.inc(route, key, () => ({ route, method: methodLabel(method), status: String(status) }));
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
