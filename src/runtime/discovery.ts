/**
 * DNS service discovery (SPEC §12): a route's upstream host stands for every
 * address DNS gives for it. `dns` resolves the URL's host to its A and AAAA
 * records; `dns-srv` resolves an SRV name to targets with ports and weights
 * (the lowest priority present, as RFC 2782 asks), then those targets to
 * addresses. Each address is an endpoint with its own breaker; the set is
 * re-resolved every `refresh`, or sooner when a record's TTL says so.
 *
 * A discovered endpoint connects to its address but keeps the URL's
 * authority for `Host` and the URL's host name for TLS (SNI and the
 * certificate check), so the upstream cannot tell it apart from a request to
 * the name. Endpoints that persist across lookups are the same objects, so
 * their breakers and connection pools carry on. A failed lookup keeps the
 * last good set and says so in the log.
 */
import { Resolver } from 'node:dns/promises';
import type { UpstreamPool } from './upstream-pool.js';
import { isIP } from 'node:net';
import pino from 'pino';
import type { DiscoverySettings, EndpointSettings, HostPort } from '../config/model.js';
import { LegateError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Layer } from '../proxy/types.js';
import { createEndpoint, type Balancer, type Endpoint, type LayerState, type RouteRuntime } from './route-runtime.js';

/** The route-state key of a route's discovery (kept across reloads while the policy is unchanged). */
export const DISCOVERY_STATE = 'discovery';

/** One address found in DNS, with the port and weight it is used with. */
export interface DiscoveredAddress {
  readonly address: string;
  readonly port: number;
  readonly weight: number;
}

/** What a lookup found: the addresses, and how long the answer may be trusted. */
interface LookupResult {
  readonly addresses: DiscoveredAddress[];
  /** Shortest TTL of the records used, in ms; undefined when DNS gave none. */
  readonly ttlMs: number | undefined;
  /** Targets that had no address (SRV), named in the log. */
  readonly skipped: string[];
}

/** Counters for metrics, read at scrape time. */
export interface DiscoveryStats {
  lookups: number;
  failures: number;
  endpointsAdded: number;
  endpointsRemoved: number;
}

export interface DiscoveryOptions {
  readonly route: string;
  readonly settings: DiscoverySettings;
  /** The endpoint as configured (the route's URL, weight and tls); its URL's host is what `dns` resolves. */
  readonly endpoint: EndpointSettings;
  /** The connection pool of every discovered endpoint (pools keep one set of sockets per address). */
  readonly agent: () => UpstreamPool;
  readonly logger?: Logger;
  /** Addresses to start with (the last good set of the discovery this one replaces), so a reload leaves no gap. */
  readonly seed?: readonly DiscoveredAddress[];
  /** Per-query timeout of the resolver, ms. */
  readonly queryTimeoutMs?: number;
  /** Shortest wait between lookups when a TTL is very short, ms. */
  readonly minRefreshMs?: number;
}

/** A TTL of 0 must not turn into a lookup loop. */
const DEFAULT_MIN_REFRESH_MS = 1_000;
/** First retry after a failed lookup; doubles up to `refresh`. */
const FAILURE_RETRY_MS = 250;
const DEFAULT_QUERY_TIMEOUT_MS = 2_000;
/** DNS answers meaning "this name has no such record" rather than "DNS is unreachable". */
const NO_RECORD = new Set(['ENODATA', 'ENOTFOUND', 'NXDOMAIN', 'ENONAME']);

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/** `host:port` as a resolver server address; IPv6 in brackets. */
export function resolverAddress(at: HostPort): string {
  return isIP(at.host) === 6 ? `[${at.host}]:${at.port}` : `${at.host}:${at.port}`;
}

/** The URL's host name, without IPv6 brackets. */
function hostOf(url: URL): string {
  return url.hostname.replace(/^\[|\]$/g, '');
}

function portOf(url: URL): number {
  return url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
}

/**
 * The discovery of one route: looks up, refreshes on a timer (unref'd, so it
 * never keeps the process alive) and updates the balancers attached to it.
 * `dispose()` stops it for good.
 */
export class RouteDiscovery {
  readonly route: string;
  readonly settings: DiscoverySettings;
  readonly stats: DiscoveryStats = { lookups: 0, failures: 0, endpointsAdded: 0, endpointsRemoved: 0 };
  readonly #endpoint: EndpointSettings;
  readonly #agent: () => UpstreamPool;
  readonly #logger: Logger;
  readonly #resolver: Resolver;
  readonly #minRefreshMs: number;
  readonly #balancers = new Set<Balancer>();
  /** Current endpoints by key, in key order. */
  #current = new Map<string, Endpoint>();
  /** States of endpoints that left the set, disposed one lookup later so a try still using one can finish. */
  #leaving: LayerState[] = [];
  #addresses: DiscoveredAddress[] = [];
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #disposed = false;
  #resolved = false;
  #failureStreak = 0;
  #lastError: string | undefined;

  constructor(opts: DiscoveryOptions) {
    this.route = opts.route;
    this.settings = opts.settings;
    this.#endpoint = opts.endpoint;
    this.#agent = opts.agent;
    this.#logger = opts.logger ?? pino({ enabled: false });
    this.#minRefreshMs = opts.minRefreshMs ?? DEFAULT_MIN_REFRESH_MS;
    const timeout = opts.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS;
    this.#resolver = new Resolver({ timeout, tries: 2 });
    if (opts.settings.resolver !== undefined) this.#resolver.setServers([resolverAddress(opts.settings.resolver)]);
    if (opts.seed !== undefined && opts.seed.length > 0) {
      this.#apply(opts.seed, false);
      this.#resolved = true;
    }
  }

  /** The name looked up: the SRV name, or the URL's host. */
  get name(): string {
    return this.settings.type === 'dns-srv' ? (this.settings.name ?? '') : hostOf(this.#endpoint.url);
  }

  /** The current endpoints, in key order. */
  get endpoints(): readonly Endpoint[] {
    return [...this.#current.values()];
  }

  /** The current addresses (to seed the discovery that replaces this one). */
  get addresses(): readonly DiscoveredAddress[] {
    return this.#addresses;
  }

  /** True once a lookup succeeded (or the discovery was seeded). */
  get resolved(): boolean {
    return this.#resolved;
  }

  /** The last lookup's failure, while lookups fail. */
  get lastError(): string | undefined {
    return this.#lastError;
  }

  /** True while a refresh timer is pending. */
  get scheduled(): boolean {
    return this.#timer !== undefined;
  }

  /** Starts looking up (at once). Idempotent. */
  start(): void {
    if (this.#disposed || this.#running !== undefined || this.#timer !== undefined) return;
    this.#running = this.#cycle();
  }

  /** Resolves once the lookup in flight, if any, has been applied (for tests and diagnostics). */
  async settled(): Promise<void> {
    await this.#running;
  }

  /** Looks up now, outside the schedule; resolves when the result is applied. */
  async refresh(): Promise<void> {
    if (this.#running !== undefined) return this.#running;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#running = this.#cycle();
    return this.#running;
  }

  /** Keeps `balancer` in step with the endpoint set until the returned detach is called. */
  attach(balancer: Balancer): () => void {
    this.#balancers.add(balancer);
    balancer.setEndpoints(this.endpoints);
    return () => {
      this.#balancers.delete(balancer);
    };
  }

  async #cycle(): Promise<void> {
    let delay: number;
    try {
      const result = await this.#lookup();
      if (this.#disposed) return;
      delay = this.#succeeded(result);
    } catch (err) {
      if (this.#disposed) return;
      delay = this.#failed(err);
    } finally {
      this.#running = undefined;
    }
    if (this.#disposed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#running = this.#cycle();
    }, delay);
    this.#timer.unref();
  }

  #succeeded(result: LookupResult): number {
    this.stats.lookups++;
    const recovered = this.#failureStreak;
    this.#failureStreak = 0;
    this.#lastError = undefined;
    this.#resolved = true;
    if (recovered > 0) this.#logger.info({ route: this.route, name: this.name, failedLookups: recovered }, 'DNS lookup succeeded again');
    if (result.skipped.length > 0) {
      this.#logger.warn({ route: this.route, name: this.name, targets: result.skipped }, 'SRV targets without an address were left out');
    }
    this.#apply(result.addresses, true);
    const refreshMs = this.settings.refreshMs;
    const ttlMs = result.ttlMs ?? refreshMs;
    return Math.min(refreshMs, Math.max(ttlMs, this.#minRefreshMs));
  }

  #failed(err: unknown): number {
    this.stats.lookups++;
    this.stats.failures++;
    this.#failureStreak++;
    const error = err instanceof Error ? err.message : String(err);
    const changed = error !== this.#lastError;
    this.#lastError = error;
    const fields = { route: this.route, name: this.name, error, failedLookups: this.#failureStreak };
    // The first failure of a streak, or a different one, is a warning; the same failure again is not news.
    const log = this.#failureStreak === 1 || changed ? this.#logger.warn.bind(this.#logger) : this.#logger.debug.bind(this.#logger);
    if (this.#current.size > 0) {
      log({ ...fields, endpoints: [...this.#current.keys()] }, `DNS lookup failed; keeping the last good set of ${this.#current.size} endpoints`);
    } else {
      log(fields, 'DNS lookup failed and no lookup has succeeded yet: requests on this route get 502 until one does');
    }
    return Math.min(this.settings.refreshMs, FAILURE_RETRY_MS * 2 ** (this.#failureStreak - 1));
  }

  /** Replaces the endpoint set, reusing the endpoint objects of addresses already known. */
  #apply(addresses: readonly DiscoveredAddress[], log: boolean): void {
    for (const s of this.#leaving) s.dispose();
    this.#leaving = [];
    const next = new Map<string, Endpoint>();
    for (const a of addresses) {
      const ep = this.#endpointFor(a);
      next.set(ep.key, ep);
    }
    const sorted = new Map([...next.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    const added = [...sorted.keys()].filter((k) => !this.#current.has(k));
    const removed = [...this.#current.keys()].filter((k) => !sorted.has(k));
    const reweighted = [...sorted].some(([k, ep]) => this.#current.get(k) !== undefined && this.#current.get(k) !== ep);
    for (const k of removed) {
      const gone = this.#current.get(k);
      if (gone !== undefined) this.#leaving.push(gone.state);
    }
    this.#addresses = [...addresses];
    if (added.length === 0 && removed.length === 0 && !reweighted) return;
    this.#current = sorted;
    this.stats.endpointsAdded += added.length;
    this.stats.endpointsRemoved += removed.length;
    const endpoints = this.endpoints;
    for (const b of this.#balancers) b.setEndpoints(endpoints);
    if (log) {
      this.#logger.info(
        { route: this.route, name: this.name, added, removed, endpoints: [...sorted.keys()] },
        `discovered endpoints changed: ${added.length} added, ${removed.length} removed, ${sorted.size} in use`,
      );
    }
  }

  #endpointFor(a: DiscoveredAddress): Endpoint {
    const base = this.#endpoint;
    const url = new URL(base.url.href);
    url.hostname = isIP(a.address) === 6 ? `[${a.address}]` : a.address;
    url.port = String(a.port);
    const settings: EndpointSettings = { ...base, url, weight: a.weight };
    const fresh = createEndpoint(settings, this.#agent);
    const existing = this.#current.get(fresh.key);
    if (existing !== undefined && existing.weight === a.weight) return existing;
    // Connect to the address, but speak to the name: Host stays the configured authority.
    return { ...fresh, authority: base.url.host, state: existing?.state ?? fresh.state };
  }

  async #lookup(): Promise<LookupResult> {
    const url = this.#endpoint.url;
    if (this.settings.type === 'dns') {
      const host = hostOf(url);
      const weight = this.#endpoint.weight;
      if (isIP(host) !== 0) return { addresses: [{ address: host, port: portOf(url), weight }], ttlMs: undefined, skipped: [] };
      const found = await this.#addressesOf(host);
      if (found.addresses.length === 0) throw new Error(`${host} has no A or AAAA records (${found.noRecord.join(', ')})`);
      return { addresses: found.addresses.map((address) => ({ address, port: portOf(url), weight })), ttlMs: found.ttlMs, skipped: [] };
    }
    const name = this.settings.name ?? '';
    const records = await this.#resolver.resolveSrv(name);
    if (records.length === 0) throw new Error(`${name} has no SRV records`);
    const lowest = Math.min(...records.map((r) => r.priority));
    const chosen = records.filter((r) => r.priority === lowest);
    const addresses: DiscoveredAddress[] = [];
    const skipped: string[] = [];
    let ttlMs: number | undefined;
    const targets = await Promise.all(
      chosen.map(async (r) => ({ r, found: isIP(r.name) !== 0 ? { addresses: [r.name], ttlMs: undefined, noRecord: [] } : await this.#addressesOf(r.name) })),
    );
    for (const { r, found } of targets) {
      if (found.addresses.length === 0) skipped.push(r.name);
      // SRV weight 0 means "rarely"; the balancer needs at least 1.
      for (const address of found.addresses) addresses.push({ address, port: r.port, weight: Math.max(1, r.weight) });
      if (found.ttlMs !== undefined) ttlMs = ttlMs === undefined ? found.ttlMs : Math.min(ttlMs, found.ttlMs);
    }
    if (addresses.length === 0) throw new Error(`no SRV target of ${name} has an A or AAAA record`);
    return { addresses, ttlMs, skipped };
  }

  /**
   * A and AAAA records of `host`. "No such record" for one family is an
   * answer; any other failure (timeout, refused) fails the whole lookup, so a
   * half-answered query never shrinks the set.
   */
  async #addressesOf(host: string): Promise<{ addresses: string[]; ttlMs: number | undefined; noRecord: string[] }> {
    const [v4, v6] = await Promise.allSettled([this.#resolver.resolve4(host, { ttl: true }), this.#resolver.resolve6(host, { ttl: true })]);
    const addresses: string[] = [];
    const noRecord: string[] = [];
    let ttl: number | undefined;
    for (const [family, r] of [['A', v4], ['AAAA', v6]] as const) {
      if (r.status === 'rejected') {
        const code = errorCode(r.reason);
        if (!NO_RECORD.has(code)) throw r.reason;
        noRecord.push(`${family}: ${code}`);
        continue;
      }
      for (const rec of r.value) {
        addresses.push(rec.address);
        ttl = ttl === undefined ? rec.ttl : Math.min(ttl, rec.ttl);
      }
    }
    return { addresses, ttlMs: ttl === undefined ? undefined : ttl * 1000, noRecord };
  }

  /** Stops for good: no timer, no query, no update after this. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    // Outstanding queries end with ECANCELLED, which the disposed cycle ignores.
    this.#resolver.cancel();
    for (const s of this.#leaving) s.dispose();
    this.#leaving = [];
    this.#balancers.clear();
  }
}

/** The discovery of a route, when it has one. */
export function discoveryOf(route: RouteRuntime): RouteDiscovery | undefined {
  if (route.settings.upstream.discovery === undefined) return undefined;
  return route.state.get<RouteDiscovery | undefined>(DISCOVERY_STATE, () => undefined);
}

/**
 * Fails a request at once, with a message that says why, while a route's
 * discovery has found no endpoint yet: retrying would find none either.
 */
export function createDiscoveryGateLayer(): Layer {
  return (next) => (req) => {
    const route = req.route;
    if (route.settings.upstream.discovery === undefined || route.balancer.endpoints.length > 0) return next(req);
    const d = discoveryOf(route);
    const name = d?.name ?? route.settings.upstream.discovery.name ?? '';
    const why = d?.lastError === undefined ? 'the first lookup has not finished' : `last error: ${d.lastError}`;
    return Promise.reject(
      new LegateError('upstream-connect-failure', `route ${route.name} has no endpoint yet: DNS discovery of ${name} has not succeeded (${why})`),
    );
  };
}
