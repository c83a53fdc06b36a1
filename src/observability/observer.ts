/**
 * What legate tells operators: the access log line of every request,
 * Prometheus metrics, and lifecycle events. The app and the layers report
 * here; nothing on the hot path formats or writes anything itself.
 */
import type { RequestContext } from '../proxy/context.js';
import type { EarlyOutcome } from '../server/proxy-listener.js';
import type { Logger } from './logger.js';

export type BreakerState = 'closed' | 'half-open' | 'open';

export interface Observer {
  /** Once per request, after the response ended or failed. */
  onComplete(outcome: RequestContext | EarlyOutcome): void;
  /** A circuit breaker changed state. */
  breakerTransition(route: string, endpoint: string, from: BreakerState, to: BreakerState): void;
  /** A config reload was applied or rejected. */
  reload(result: 'applied' | 'rejected'): void;
  /** Prometheus exposition for the admin `/metrics`. */
  metrics(): Promise<{ contentType: string; body: string }>;
  close(): Promise<void>;
}

export function createObserver(logger: Logger): Observer {
  return {
    onComplete: () => undefined,
    breakerTransition: (route, endpoint, from, to) => logger.warn({ route, endpoint, from, to }, 'circuit breaker transition'),
    reload: () => undefined,
    metrics: () => Promise.resolve({ contentType: 'text/plain; version=0.0.4', body: '' }),
    close: () => Promise.resolve(),
  };
}
