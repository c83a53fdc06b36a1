/**
 * Chooses the endpoint of each try (so a retry may go elsewhere), skipping
 * endpoints whose breaker is open while another one is usable.
 */
import { LegateError } from '../errors.js';
import type { Endpoint } from '../runtime/route-runtime.js';
import type { Layer } from '../proxy/types.js';

/** Layers that can veto an endpoint (the circuit breaker) register here. */
export type EndpointFilter = (endpoint: Endpoint) => boolean;

export function createBalanceLayer(usable?: EndpointFilter): Layer {
  return (next) => (req) => {
    const balancer = req.route.balancer;
    const picked =
      balancer.pick(usable) ??
      // Every endpoint is vetoed: take the next one anyway and let the breaker layer answer for it.
      balancer.pick();
    if (picked === undefined) {
      return Promise.reject(
        new LegateError('upstream-connect-failure', `route ${req.route.name} has no endpoints`),
      );
    }
    req.endpoint = picked;
    return next(req);
  };
}
