/**
 * The validated, normalised configuration the proxy runs on: durations in
 * milliseconds, sizes in bytes, defaults merged, paths absolute. Built once
 * per load by `normalise.ts`, then frozen.
 */
import type { FailOnInput, OptOut, RetryOnInput } from './schema.js';

export interface HostPort {
  readonly host: string;
  readonly port: number;
  /** As written, e.g. `127.0.0.1:15001`. */
  readonly text: string;
}

export interface TlsSettings {
  /** Absolute paths; the files are read by the TLS layer, never logged. */
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
  readonly serverName?: string;
  readonly minVersion?: 'TLSv1.2' | 'TLSv1.3';
}

export interface EndpointSettings {
  /** Parsed upstream base URL. */
  readonly url: URL;
  readonly weight: number;
  readonly tls?: TlsSettings;
}

export interface DiscoverySettings {
  readonly type: 'dns' | 'dns-srv';
  readonly name?: string;
  readonly refreshMs: number;
  readonly resolver?: HostPort;
}

export interface UpstreamSettings {
  readonly endpoints: readonly EndpointSettings[];
  readonly discovery?: DiscoverySettings;
}

export interface MatchSettings {
  readonly pathPrefix?: string;
  /** Lower-cased; `*.example.com` kept as written. */
  readonly host?: string;
  readonly methods?: ReadonlySet<string>;
  /** Lower-cased names. */
  readonly headers?: ReadonlyArray<readonly [string, string]>;
}

export interface RetrySettings {
  readonly retries: number;
  readonly perTryTimeoutMs: number;
  readonly on: readonly RetryOnInput[];
  readonly methods: ReadonlySet<string>;
  readonly backoff: { readonly baseMs: number; readonly maxMs: number };
  readonly budget: { readonly ratio: number; readonly minPerSecond: number };
  readonly maxFromHeader: number;
  readonly bufferLimitBytes: number;
}

export interface CircuitBreakerSettings {
  readonly enabled: boolean;
  readonly errorThresholdPercentage: number;
  readonly volumeThreshold: number;
  readonly windowMs: number;
  readonly resetTimeoutMs: number;
  readonly failOn: readonly FailOnInput[];
}

export interface LimitSettings {
  /** 0 = no limit. */
  readonly maxRequestBodyBytes: number;
  /** 0 = no limit. */
  readonly maxConcurrent: number;
  readonly maxPending: number;
}

export interface HeaderRuleSettings {
  /** Lower-cased name → raw template (may hold ${env:..} / ${file:..}). */
  readonly set: ReadonlyArray<readonly [string, string]>;
  readonly remove: readonly string[];
}

export interface RouteSettings {
  readonly name: string;
  /** Position in the file, 0-based: first match wins. */
  readonly index: number;
  readonly match: MatchSettings;
  readonly listen?: HostPort;
  readonly upstream: UpstreamSettings;
  readonly stripPrefix: boolean;
  readonly preserveHost: boolean;
  /** 0 = none. */
  readonly timeoutMs: number;
  /** 0 = none. */
  readonly idleTimeoutMs: number;
  readonly limits: LimitSettings;
  readonly retry: RetrySettings;
  readonly circuitBreaker: CircuitBreakerSettings;
  readonly tls?: TlsSettings;
  readonly optOut: ReadonlySet<OptOut>;
  readonly rateLimit?: { readonly perSecond: number; readonly burst: number };
  readonly headers: { readonly request: HeaderRuleSettings; readonly response: HeaderRuleSettings };
  readonly trustControlHeaders: boolean;
  /**
   * A stable digest of everything above except `index`: a reload keeps a
   * route's breaker and budget state when this did not change.
   */
  readonly policyKey: string;
}

export interface ServerLimits {
  readonly maxConnections: number;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly maxHeaderSizeBytes: number;
}

export interface LegateConfig {
  /** Absolute path of the file this came from ('' when built in memory). */
  readonly file: string;
  readonly listen: HostPort;
  readonly admin: HostPort;
  readonly drainTimeoutMs: number;
  readonly logLevel: string;
  readonly accessLog: string;
  readonly limits: ServerLimits;
  readonly routes: readonly RouteSettings[];
}
