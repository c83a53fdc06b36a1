/**
 * THE order of the layers, outermost first. A request flows down this list
 * to the forwarder; the response (or error) flows back up. Each route's chain
 * is composed once, when the config loads.
 */
import { createBalanceLayer } from './layers/balance.js';
import { createDeadlineLayer } from './layers/deadline.js';
import type { Observer } from './observability/observer.js';
import type { Handler, Layer } from './proxy/types.js';
import type { RouteRuntime } from './runtime/route-runtime.js';

export interface ChainDeps {
  /** The terminal handler: one try at the chosen endpoint. */
  readonly forward: Handler;
  /** Where layers report what they did (breaker transitions). */
  readonly observer: Observer;
}

export function composeChain(_route: RouteRuntime, deps: ChainDeps): Handler {
  const layers: Layer[] = [
    // Outermost after control headers: the deadline must cover every try and all back-off.
    createDeadlineLayer(),
    // Per try, so each retry can land on another endpoint.
    createBalanceLayer(),
  ];
  return layers.reduceRight<Handler>((next, layer) => layer(next), deps.forward);
}
