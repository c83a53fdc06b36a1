/**
 * THE order of the layers, outermost first. A request flows down this list
 * to the forwarder; the response (or error) flows back up. Each route's chain
 * is composed once, when the config loads. Logging and metrics are not layers:
 * they read the finished request (observer.ts), so they see every outcome,
 * including errors raised by any layer here and failures while streaming.
 */
import { createBalanceLayer } from './layers/balance.js';
import { createBodyLimitLayer } from './layers/body-limit.js';
import { createCircuitBreakerLayer, endpointUsable } from './layers/circuit-breaker.js';
import { createConcurrencyLimitLayer } from './layers/concurrency-limit.js';
import { createControlHeaderLayer } from './layers/control-headers.js';
import { createDeadlineLayer } from './layers/deadline.js';
import { createHeaderRulesLayer } from './layers/header-rules.js';
import { createRateLimitLayer } from './layers/rate-limit.js';
import { createRetryLayer } from './layers/retry.js';
import type { Observer } from './observability/observer.js';
import type { Handler, Layer } from './proxy/types.js';
import { createDiscoveryGateLayer } from './runtime/discovery.js';
import type { Endpoint, RouteRuntime } from './runtime/route-runtime.js';

export interface ChainDeps {
  /** The terminal handler: one try at the chosen endpoint. */
  readonly forward: Handler;
  /** Where layers report what they did (breaker transitions). */
  readonly observer: Observer;
}

export function composeChain(route: RouteRuntime, deps: ChainDeps): Handler {
  const usable = (e: Endpoint): boolean => endpointUsable(route, e, deps.observer);
  const layers: Layer[] = [
    // First: a malformed control header is a 400 before anything else happens, and the policy it sets governs the rest.
    createControlHeaderLayer(),
    // Before anything that waits or sends: over the rate limit is a 429 at once, upstream untouched; no opt-out skips it.
    createRateLimitLayer(),
    // Also before the deadline and upstream: a full queue is a 503 at once; a queued request leaves on its own deadline or hang-up; a slot is held until the body is done.
    createConcurrencyLimitLayer(),
    // Outside the retries: the deadline covers every try and all back-off (and, in respond.ts, the body).
    createDeadlineLayer(),
    // Fails fast with a 502 that says why while DNS discovery has found no endpoint yet: a retry would find none either.
    createDiscoveryGateLayer(),
    // Above the retries: request rules are applied once to the headers every try sends; response rules to the response the retries settle on.
    createHeaderRulesLayer(),
    // Calls the layers below once per try.
    createRetryLayer({ anyEndpointUsable: (_req, endpoints) => endpoints.some(usable) }),
    // Below the retries, so it counts the body as it is actually sent (buffered or streamed); 413 before any byte goes out when the length is known.
    createBodyLimitLayer(),
    // Per try, so a retry can land on another endpoint, skipping open breakers.
    createBalanceLayer(usable),
    // Per try and per endpoint: every try counts, and an open breaker answers without contacting anything.
    createCircuitBreakerLayer(deps.observer),
  ];
  return layers.reduceRight<Handler>((next, layer) => layer(next), deps.forward);
}
