/**
 * What legate tells operators: the access log line of every request,
 * Prometheus metrics, and lifecycle events. The app and the layers report
 * here; nothing on the hot path formats or writes anything itself.
 */
import { performance } from 'node:perf_hooks';
import type { RequestContext } from '../proxy/context.js';
import type { EarlyOutcome } from '../server/proxy-listener.js';
import { accessLine, createAccessLog, isEarly, type AccessLog } from './access-log.js';
import type { Logger } from './logger.js';
import { LegateMetrics, type BreakerState, type MetricsSources } from './metrics.js';

export type { BreakerState };

export interface Observer {
  /** Once per request, after the response ended or failed. Never throws. */
  onComplete(outcome: RequestContext | EarlyOutcome): void;
  /**
   * A circuit breaker changed state. `endpoint` is the endpoint's `key`
   * (`host:port`), the same for a route with a single endpoint.
   */
  breakerTransition(route: string, endpoint: string, from: BreakerState, to: BreakerState): void;
  /** A config reload was applied or rejected. */
  reload(result: 'applied' | 'rejected'): void;
  /** Prometheus exposition for the admin `/metrics`. */
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Opens the access log file again by its name (log rotation: SIGUSR1, SIGHUP). */
  reopenAccessLog(): void;
  /**
   * Opens the access log a reload names, without using it yet: throws, naming
   * the file, when it cannot be opened, so the reload can be rejected first.
   */
  openAccessLog(destination: string | undefined, silent: boolean): AccessLog;
  /** Writes access lines to `next` from now on; the one before is written out and closed. */
  useAccessLog(next: AccessLog): Promise<void>;
  /** Flushes the access log and releases the registry. */
  close(): Promise<void>;
}

export interface ObserverOptions extends MetricsSources {
  /** `stdout` (default: the main logger's stream), `stderr`, or a file path. */
  readonly accessLog?: string;
}

/**
 * The observer of one app instance: its own metrics registry and access log.
 * Scrape-time sources (active requests, certificates, routes) are callbacks
 * so that nothing is tracked per request that a scrape can ask for instead.
 */
export function createObserver(logger: Logger, opts: ObserverOptions = {}): Observer {
  const metrics = new LegateMetrics(opts);
  let access: AccessLog = createAccessLog(logger, opts.accessLog);
  // A failure here must not become the request's failure, nor flood the log.
  let failures = 0;
  return {
    onComplete(outcome) {
      try {
        const now = performance.now();
        metrics.record(outcome, (now - outcome.startedAt) / 1000);
        if (!isEarly(outcome) && outcome.policy.optOut.has('log')) return;
        access.write(accessLine(outcome, now));
      } catch (e) {
        if (failures++ < 10) logger.error({ err: (e as Error).message, requestId: outcome.id }, 'could not record a request');
      }
    },
    breakerTransition(route, endpoint, from, to) {
      metrics.breakerTransition(route, endpoint, to);
      logger.warn({ route, endpoint, from, to }, 'circuit breaker transition');
    },
    reload(result) {
      metrics.reload(result);
    },
    metrics: () => metrics.exposition(),
    reopenAccessLog() {
      access.reopen();
    },
    openAccessLog: (destination, silent) => createAccessLog(logger, destination, { silent }),
    async useAccessLog(next) {
      const before = access;
      access = next;
      await before.close();
    },
    async close() {
      await access.close();
      metrics.close();
    },
  };
}
