/**
 * Every error legate answers itself, each with its stable `code` (sent in
 * `x-legate-error` and the JSON body) and HTTP status, declared together so
 * the contract in SPEC §5 can be read in one place.
 */

export type ErrorCode =
  | 'no-route'
  | 'bad-request'
  | 'bad-control-header'
  | 'connect-unsupported'
  | 'request-too-large'
  | 'circuit-open'
  | 'rate-limited'
  | 'overloaded'
  | 'draining'
  | 'upstream-connect-failure'
  | 'upstream-reset'
  | 'upstream-tls-failure'
  | 'upstream-timeout'
  | 'client-closed'
  | 'internal-error';

export const STATUS_BY_CODE: Readonly<Record<ErrorCode, number>> = Object.freeze({
  'no-route': 404,
  'bad-request': 400,
  'bad-control-header': 400,
  'connect-unsupported': 405,
  'request-too-large': 413,
  'circuit-open': 503,
  'rate-limited': 429,
  overloaded: 503,
  draining: 503,
  'upstream-connect-failure': 502,
  'upstream-reset': 502,
  'upstream-tls-failure': 502,
  'upstream-timeout': 504,
  // nginx's convention; logged only, since the app that would read it is gone.
  'client-closed': 499,
  'internal-error': 500,
});

/** Base class: anything thrown inside the chain that is one of ours. */
export class LegateError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Seconds, for `Retry-After` (circuit-open, rate-limited). */
  readonly retryAfterSeconds: number | undefined;
  /** Tagged so callers can tell our errors from anything a library throws. */
  readonly isLegateError = true;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; retryAfterSeconds?: number } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'LegateError';
    this.code = code;
    this.status = STATUS_BY_CODE[code];
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export class RouteNotFoundError extends LegateError {
  constructor(what: string) {
    super('no-route', `no route matches ${what}`);
    this.name = 'RouteNotFoundError';
  }
}

export class BadControlHeaderError extends LegateError {
  readonly header: string;
  constructor(header: string, problem: string) {
    super('bad-control-header', `${header}: ${problem}`);
    this.name = 'BadControlHeaderError';
    this.header = header;
  }
}

export class UpstreamError extends LegateError {
  /** The endpoint tried, `host:port`. */
  readonly endpoint: string;
  constructor(
    code: Extract<ErrorCode, `upstream-${string}`>,
    endpoint: string,
    message: string,
    cause?: unknown,
  ) {
    super(code, message, { cause });
    this.name = 'UpstreamError';
    this.endpoint = endpoint;
  }
}

/** True when `e` is a LegateError (also across realms/copies of this module). */
export function isLegateError(e: unknown): e is LegateError {
  return typeof e === 'object' && e !== null && (e as { isLegateError?: unknown }).isLegateError === true;
}

/** Maps anything thrown to the LegateError the app will see: the single error → status mapping. */
export function toLegateError(e: unknown): LegateError {
  if (isLegateError(e)) return e;
  return new LegateError('internal-error', 'legate failed to handle the request', { cause: e });
}

const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);
const TLS_REASONS: Readonly<Record<string, string>> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unknown CA: the server certificate is not signed by the configured CA',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unknown CA: the server certificate is not signed by the configured CA',
  SELF_SIGNED_CERT_IN_CHAIN: 'unknown CA: a self-signed certificate is in the server chain',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'unknown CA: the server certificate is self-signed',
  CERT_HAS_EXPIRED: 'the server certificate has expired',
  CERT_NOT_YET_VALID: 'the server certificate is not yet valid',
  ERR_TLS_CERT_ALTNAME_INVALID: 'hostname mismatch: the server certificate does not name',
  CERT_REVOKED: 'the server certificate is revoked',
};

/**
 * Classifies a socket-level failure of one try. `connected` tells whether the
 * TCP (and TLS) connection was up, i.e. whether the request may have reached
 * the upstream.
 */
export function classifyUpstreamFailure(err: unknown, endpoint: string, serverName?: string): UpstreamError {
  const e = err as NodeJS.ErrnoException & { reason?: string };
  const code = typeof e?.code === 'string' ? e.code : '';
  if (CONNECT_CODES.has(code)) {
    const what = code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'could not resolve' : 'could not connect to';
    return new UpstreamError('upstream-connect-failure', endpoint, `${what} ${endpoint} (${code})`, err);
  }
  const tlsReason = TLS_REASONS[code];
  if (tlsReason !== undefined) {
    const detail = code === 'ERR_TLS_CERT_ALTNAME_INVALID' ? `${tlsReason} ${serverName ?? endpoint}` : tlsReason;
    return new UpstreamError('upstream-tls-failure', endpoint, `TLS handshake with ${endpoint} failed: ${detail}`, err);
  }
  if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || /alert|handshake|certificate/i.test(e?.message ?? '')) {
    const msg = e?.message ?? code;
    const reason = /certificate required|handshake failure|bad certificate|unknown ca/i.test(msg)
      ? `the server refused the client certificate (${msg.trim()})`
      : msg.trim();
    return new UpstreamError('upstream-tls-failure', endpoint, `TLS handshake with ${endpoint} failed: ${reason}`, err);
  }
  return new UpstreamError(
    'upstream-reset',
    endpoint,
    `connection to ${endpoint} dropped before a complete response (${code || e?.message || 'reset'})`,
    err,
  );
}
