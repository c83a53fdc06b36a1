/**
 * One loaded config, compiled: routes with their chains, grouped by the
 * listener that serves them. A reload builds a new generation and swaps it in
 * atomically; requests already running keep the generation they started on,
 * and a retired generation's state is disposed when its last request ends.
 */
import type { LegateConfig, RouteSettings } from '../config/model.js';
import type { Handler } from '../proxy/types.js';
import { identityOf, type AgentPool } from './agents.js';
import { createEndpoint, LayerState, RouteRuntime, type Endpoint } from './route-runtime.js';

/** The key of the shared proxy listener in `Generation.tables`. */
export const MAIN_LISTENER = 'main';

export interface GenerationDeps {
  readonly agents: AgentPool;
  /** Composes a route's chain (chain.ts), once per route per load. */
  readonly compose: (route: RouteRuntime) => Handler;
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

  constructor(config: LegateConfig, routes: readonly RouteRuntime[], agentIds: ReadonlySet<string>) {
    this.config = config;
    this.routes = routes;
    this.agentIds = agentIds;
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
 * `previous` keep their state (breakers, retry budget) and their endpoints'.
 */
export function buildGeneration(config: LegateConfig, previous: Generation | undefined, deps: GenerationDeps): Generation {
  const before = new Map<string, RouteRuntime>();
  for (const r of previous?.routes ?? []) before.set(r.name, r);
  const agentIds = new Set<string>();
  const routes = config.routes.map((settings: RouteSettings) => {
    const old = before.get(settings.name);
    const keep = old !== undefined && old.settings.policyKey === settings.policyKey;
    const oldEndpointState = new Map<string, LayerState>();
    if (keep) for (const e of old.balancer.endpoints) oldEndpointState.set(e.key, e.state);
    const endpoints: Endpoint[] = settings.upstream.endpoints.map((es) => {
      agentIds.add(identityOf(es));
      const ep = createEndpoint(es, () => deps.agents.get(es), undefined);
      const state = oldEndpointState.get(ep.key);
      return state === undefined ? ep : { ...ep, state };
    });
    const route = new RouteRuntime(settings, endpoints, keep ? old.state : new LayerState());
    route.handler = deps.compose(route);
    return route;
  });
  return new Generation(config, routes, agentIds);
}

/** The states of `previous` that `next` does not use any more. */
export function droppedStates(previous: Generation, next: Generation): LayerState[] {
  const kept = new Set(next.states());
  return previous.states().filter((s) => !kept.has(s));
}
