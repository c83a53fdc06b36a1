/**
 * A route as the proxy runs it: its settings, compiled matcher, endpoints
 * with their connection pools, the composed chain, and the state (breakers,
 * retry budget, limiters) that outlives a reload when the policy is unchanged.
 */
import type { UpstreamPool } from './upstream-pool.js';
import type { EndpointSettings, RouteSettings } from '../config/model.js';
import type { Handler } from '../proxy/types.js';
import { compileMatch, type RoutePredicate } from '../routing/router.js';

export interface Endpoint {
  /** `host:port`, as logged and used in metrics labels. */
  readonly key: string;
  readonly settings: EndpointSettings;
  readonly protocol: 'http:' | 'https:';
  readonly hostname: string;
  readonly port: number;
  /** The upstream's base path without a trailing slash ('' for none). */
  readonly basePath: string;
  /** What `Host` says upstream: host, plus the port when it is not the scheme's default. */
  readonly authority: string;
  /** `scheme://host:port` the pool connects to (the address, for a discovered endpoint). */
  readonly origin: string;
  readonly weight: number;
  /** Connection pool; looked up on each try so a rotated TLS identity takes effect. */
  agent(): UpstreamPool;
  /** Per-endpoint state owned by layers (e.g. its circuit breaker). */
  readonly state: LayerState;
}

/**
 * State that layers keep per route or per endpoint, by name. Layers own
 * their entries; the runtime only decides whether a reload keeps the bag.
 */
export class LayerState {
  readonly #entries = new Map<string, unknown>();
  get<T>(name: string, create: () => T): T {
    let v = this.#entries.get(name) as T | undefined;
    if (v === undefined) {
      v = create();
      this.#entries.set(name, v);
    }
    return v;
  }
  /** Runs `dispose` of every entry that has one (timers, listeners). */
  dispose(): void {
    for (const v of this.#entries.values()) {
      const d = (v as { dispose?: () => void } | null)?.dispose;
      if (typeof d === 'function') d.call(v);
    }
    this.#entries.clear();
  }
}

export function createEndpoint(settings: EndpointSettings, agent: () => UpstreamPool, state = new LayerState()): Endpoint {
  const url = settings.url;
  const protocol = url.protocol === 'https:' ? 'https:' : 'http:';
  const defaultPort = protocol === 'https:' ? 443 : 80;
  const port = url.port === '' ? defaultPort : Number(url.port);
  const basePath = url.pathname.endsWith('/') ? url.pathname.slice(0, -1) : url.pathname;
  return {
    key: `${url.hostname}:${port}`,
    settings,
    protocol,
    hostname: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
    port,
    basePath,
    authority: url.host,
    origin: `${protocol}//${url.host}`,
    weight: settings.weight,
    agent,
    state,
  };
}

/**
 * Smooth weighted round-robin (as nginx does it): deterministic, spreads a
 * heavy endpoint's turns out instead of bunching them.
 */
export class Balancer {
  #endpoints: readonly Endpoint[];
  #current: number[];

  constructor(endpoints: readonly Endpoint[]) {
    this.#endpoints = endpoints;
    this.#current = endpoints.map(() => 0);
  }

  get endpoints(): readonly Endpoint[] {
    return this.#endpoints;
  }

  /** Replaces the endpoint set (service discovery). */
  setEndpoints(endpoints: readonly Endpoint[]): void {
    this.#endpoints = endpoints;
    this.#current = endpoints.map(() => 0);
  }

  /** Next endpoint among those `usable` allows; undefined when none is. */
  pick(usable?: (e: Endpoint) => boolean): Endpoint | undefined {
    const eps = this.#endpoints;
    if (eps.length === 1) {
      const only = eps[0] as Endpoint;
      return usable === undefined || usable(only) ? only : undefined;
    }
    let total = 0;
    let best = -1;
    let bestWeight = -Infinity;
    for (let i = 0; i < eps.length; i++) {
      const e = eps[i] as Endpoint;
      if (usable !== undefined && !usable(e)) continue;
      const cw = (this.#current[i] as number) + e.weight;
      this.#current[i] = cw;
      total += e.weight;
      if (cw > bestWeight) {
        bestWeight = cw;
        best = i;
      }
    }
    if (best === -1) return undefined;
    this.#current[best] = (this.#current[best] as number) - total;
    return eps[best];
  }
}

export class RouteRuntime {
  readonly settings: RouteSettings;
  readonly matches: RoutePredicate;
  readonly balancer: Balancer;
  /** Route-wide layer state (retry budget, breaker, limiters). */
  readonly state: LayerState;
  /** The composed chain; set once by `chain.ts` right after construction. */
  handler!: Handler;

  constructor(settings: RouteSettings, endpoints: readonly Endpoint[], state: LayerState) {
    this.settings = settings;
    this.matches = compileMatch(settings.match);
    this.balancer = new Balancer(endpoints);
    this.state = state;
  }

  get name(): string {
    return this.settings.name;
  }
}
