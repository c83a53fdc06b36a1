/**
 * One loaded config, compiled: routes with their chains, grouped by the
 * listener that serves them. A reload builds a new generation and swaps it in
 * atomically; requests already running keep the generation they started on,
 * and a retired generation's state is disposed when its last request ends.
 */
import { isIP } from 'node:net';
import type { EndpointSettings, LegateConfig, RouteSettings } from '../config/model.js';
import { CompiledHeaderRules, hasHeaderRules, HEADER_RULES_STATE } from '../layers/header-rules.js';
import type { Logger } from '../observability/logger.js';
import type { Handler } from '../proxy/types.js';
import { identityOf, type AgentPool } from './agents.js';
import { DISCOVERY_STATE, discoveryOf, RouteDiscovery, type DiscoveredAddress } from './discovery.js';
import { createEndpoint, LayerState, RouteRuntime, type Endpoint } from './route-runtime.js';

/** The key of the shared proxy listener in `Generation.tables`. */
export const MAIN_LISTENER = 'main';

export interface GenerationDeps {
  readonly agents: AgentPool;
  /** Composes a route's chain (chain.ts), once per route per load. */
  readonly compose: (route: RouteRuntime) => Handler;
  /**
   * Where DNS discovery (endpoints added or removed, failed lookups) and
   * header value files (rotations, unreadable files) report. Silent when absent.
   */
  readonly logger?: Logger;
}

export class Generation {
  readonly config: LegateConfig;
  readonly routes: readonly RouteRuntime[];
  /** Listener key (MAIN_LISTENER, or a route's `listen` text) → routes it serves, in file order. */
  readonly tables: ReadonlyMap<string, readonly RouteRuntime[]>;
  /** Agent identities this generation uses. */
  readonly agentIds: ReadonlySet<string>;
  #inFlight = 0;
  #retired = false;
  /** States not carried into the next generation: disposed once idle. */
  #toDispose: LayerState[] = [];
  /** Run at retirement: unhooks this generation's balancers from discoveries the next one may keep. */
  #onRetire: Array<() => void>;

  constructor(config: LegateConfig, routes: readonly RouteRuntime[], agentIds: ReadonlySet<string>, onRetire: ReadonlyArray<() => void> = []) {
    this.config = config;
    this.routes = routes;
    this.agentIds = agentIds;
    this.#onRetire = [...onRetire];
    const tables = new Map<string, RouteRuntime[]>([[MAIN_LISTENER, []]]);
    for (const r of routes) {
      const key = r.settings.listen?.text ?? MAIN_LISTENER;
      const list = tables.get(key) ?? [];
      list.push(r);
      tables.set(key, list);
    }
    this.tables = tables;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Marks a request as running on this generation. */
  enter(): void {
    this.#inFlight++;
  }

  leave(): void {
    this.#inFlight--;
    if (this.#retired && this.#inFlight === 0) this.#disposeNow();
  }

  /** Called on swap-out with the states the next generation did not take over. */
  retire(dropped: LayerState[]): void {
    this.#retired = true;
    // At once, not when idle: a discovery kept by the next generation must stop updating this one's balancers.
    for (const detach of this.#onRetire) detach();
    this.#onRetire = [];
    this.#toDispose = dropped;
    if (this.#inFlight === 0) this.#disposeNow();
  }

  #disposeNow(): void {
    for (const s of this.#toDispose) s.dispose();
    this.#toDispose = [];
  }

  /** Every layer state this generation holds (routes and endpoints). */
  states(): LayerState[] {
    const out: LayerState[] = [];
    for (const r of this.routes) {
      out.push(r.state);
      for (const e of r.balancer.endpoints) out.push(e.state);
    }
    return out;
  }
}

/**
 * Builds a generation. Routes whose name and policy are unchanged since
 * `previous` keep their state (breakers, retry budget, limiters, discovery,
 * header value watchers) and their endpoints'. A route with DNS discovery
 * starts looking up here; its discovery stops when its state is disposed.
 */
export function buildGeneration(config: LegateConfig, previous: Generation | undefined, deps: GenerationDeps): Generation {
  const before = new Map<string, RouteRuntime>();
  for (const r of previous?.routes ?? []) before.set(r.name, r);
  const agentIds = new Set<string>();
  const onRetire: Array<() => void> = [];
  const routes = config.routes.map((settings: RouteSettings) => {
    const old = before.get(settings.name);
    const keep = old !== undefined && old.settings.policyKey === settings.policyKey;
    const state = keep ? old.state : new LayerState();
    let endpoints: readonly Endpoint[];
    let discovery: RouteDiscovery | undefined;
    if (settings.upstream.discovery === undefined) {
      const oldEndpointState = new Map<string, LayerState>();
      if (keep) for (const e of old.balancer.endpoints) oldEndpointState.set(e.key, e.state);
      endpoints = settings.upstream.endpoints.map((es) => {
        const id = identityOf(es);
        agentIds.add(id);
        const ep = createEndpoint(es, () => deps.agents.get(es, id), undefined);
        const epState = oldEndpointState.get(ep.key);
        return epState === undefined ? ep : { ...ep, state: epState };
      });
    } else {
      discovery = startDiscovery(settings, state, old, deps, agentIds);
      endpoints = discovery.endpoints;
    }
    if (hasHeaderRules(settings)) {
      // Compiled here, where the logger is, so an unreadable value file is reported at load, not at the first request.
      state.get(HEADER_RULES_STATE, () => new CompiledHeaderRules(settings.name, settings.headers, deps.logger === undefined ? {} : { logger: deps.logger }));
    }
    const route = new RouteRuntime(settings, endpoints, state);
    if (discovery !== undefined) onRetire.push(discovery.attach(route.balancer));
    route.handler = deps.compose(route);
    return route;
  });
  return new Generation(config, routes, agentIds, onRetire);
}

/**
 * The discovery of a route: the one its kept state holds, or a new one,
 * started at once. A new one for a route whose policy changed starts from the
 * addresses the old one knew (same name and kind), so the reload leaves no
 * window without endpoints; its endpoints get fresh state, as any changed route's.
 */
function startDiscovery(
  settings: RouteSettings,
  state: LayerState,
  old: RouteRuntime | undefined,
  deps: GenerationDeps,
  agentIds: Set<string>,
): RouteDiscovery {
  const configured = settings.upstream.endpoints[0] as EndpointSettings;
  const discoverySettings = settings.upstream.discovery as NonNullable<RouteSettings['upstream']['discovery']>;
  // One pool for every address (an agent keeps sockets per address anyway). Its TLS identity names the
  // configured host, so SNI and the certificate check use the name, never the address connected to.
  const host = configured.url.hostname.replace(/^\[|\]$/g, '');
  const agentSettings: EndpointSettings =
    configured.url.protocol === 'https:' && configured.tls?.serverName === undefined && isIP(host) === 0
      ? { ...configured, tls: { ...configured.tls, serverName: host } }
      : configured;
  const agentId = identityOf(agentSettings);
  agentIds.add(agentId);
  return state.get(DISCOVERY_STATE, () => {
    const before = old === undefined ? undefined : discoveryOf(old);
    const sameName =
      before !== undefined &&
      before.settings.type === discoverySettings.type &&
      before.name === (discoverySettings.type === 'dns-srv' ? discoverySettings.name : host) &&
      old?.settings.upstream.endpoints[0]?.url.href === configured.url.href;
    const seed: readonly DiscoveredAddress[] | undefined = sameName ? before.addresses : undefined;
    const d = new RouteDiscovery({
      route: settings.name,
      settings: discoverySettings,
      endpoint: configured,
      agent: () => deps.agents.get(agentSettings, agentId),
      ...(deps.logger === undefined ? {} : { logger: deps.logger }),
      ...(seed === undefined ? {} : { seed }),
    });
    d.start();
    return d;
  });
}

/** The states of `previous` that `next` does not use any more. */
export function droppedStates(previous: Generation, next: Generation): LayerState[] {
  const kept = new Set(next.states());
  return previous.states().filter((s) => !kept.has(s));
}
