/**
 * Every error legate answers itself, each with its stable `code` (sent in
 * `x-legate-error` and the JSON body) and HTTP status, declared together so
 * the contract in SPEC §5 can be read in one place.
 */

import { TLS_MATERIAL_ERROR_CODE, tlsFactsOf, type TlsFacts } from './tls/tls-facts.js';

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

/** undici's connect timer (TCP connect or TLS handshake too slow): a connect failure, as Envoy counts it. */
const CONNECT_TIMEOUT = 'UND_ERR_CONNECT_TIMEOUT';

/**
 * What undici says about a response it could not take: a malformed or
 * oversized head, a body shorter or longer than announced. The upstream
 * answered, but nothing usable can be relayed.
 */
const BAD_RESPONSE = new Map([
  ['UND_ERR_HEADERS_OVERFLOW', 'a response head larger than 16 KiB'],
  ['UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'a body that does not match its Content-Length'],
  ['UND_ERR_RES_EXCEEDED_MAX_SIZE', 'a response larger than allowed'],
]);

/** Prefixes of TLS failure reasons: the first words of every message say which kind it is. */
const UNKNOWN_CA = 'unknown CA: the server certificate is not signed by a trusted CA';
const CLIENT_CERT_REFUSED = 'client certificate refused';

/**
 * Why a TLS connection failed, by Node/OpenSSL error code. Two families:
 * our verification of the server (X.509 codes, ERR_TLS_*), and alerts the
 * server sent about us (ERR_SSL_*_ALERT_*, which name the *peer's* complaint:
 * "certificate expired" there means our client certificate).
 */
const TLS_REASONS: Readonly<Record<string, string>> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: UNKNOWN_CA,
  UNABLE_TO_GET_ISSUER_CERT: UNKNOWN_CA,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: UNKNOWN_CA,
  SELF_SIGNED_CERT_IN_CHAIN: `${UNKNOWN_CA} (a self-signed certificate is in the chain)`,
  DEPTH_ZERO_SELF_SIGNED_CERT: `${UNKNOWN_CA} (it is self-signed)`,
  CERT_UNTRUSTED: UNKNOWN_CA,
  INVALID_CA: 'unknown CA: a CA certificate in the server chain is not valid as a CA',
  CERT_SIGNATURE_FAILURE: 'the server certificate signature does not verify',
  CERT_HAS_EXPIRED: 'expired: the server certificate has expired',
  CERT_NOT_YET_VALID: 'not yet valid: the server certificate is not valid yet (or this clock is behind)',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'the server certificate has a malformed notAfter date',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'the server certificate has a malformed notBefore date',
  ERR_TLS_CERT_ALTNAME_INVALID: 'hostname mismatch: the server certificate is not valid for',
  CERT_REVOKED: 'the server certificate is revoked',
  INVALID_PURPOSE: 'the server certificate is not meant for TLS servers (extendedKeyUsage)',
  ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED: `${CLIENT_CERT_REFUSED}: the server requires a client certificate and none was presented`,
  ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: `${CLIENT_CERT_REFUSED}: the server does not trust the CA that issued the client certificate`,
  ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE: `${CLIENT_CERT_REFUSED}: the server rejected the client certificate (bad certificate)`,
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN: `${CLIENT_CERT_REFUSED}: the server rejected the client certificate (certificate unknown)`,
  ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE: `${CLIENT_CERT_REFUSED}: the server does not support the client certificate type`,
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED: `${CLIENT_CERT_REFUSED}: the server says the client certificate has expired`,
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED: `${CLIENT_CERT_REFUSED}: the server says the client certificate is revoked`,
  ERR_SSL_TLSV1_ALERT_ACCESS_DENIED: `${CLIENT_CERT_REFUSED}: the server denied access to this client certificate`,
  ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR: 'the server could not verify a handshake signature (is the client key the one of the certificate?)',
  ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION: 'no TLS version in common with the server',
  ERR_SSL_UNSUPPORTED_PROTOCOL: 'no TLS version in common with the server',
  ERR_SSL_NO_PROTOCOLS_AVAILABLE: 'no TLS version in common with the server',
  ERR_SSL_TLSV1_ALERT_UNRECOGNIZED_NAME: 'the server does not serve the name sent in SNI',
  ERR_SSL_TLSV1_UNRECOGNIZED_NAME: 'the server does not serve the name sent in SNI',
  ERR_SSL_WRONG_VERSION_NUMBER: 'the server did not answer in TLS (is it a plain-HTTP port?)',
  ERR_SSL_PACKET_LENGTH_TOO_LONG: 'the server did not answer in TLS (is it a plain-HTTP port?)',
  ERR_SSL_HTTP_REQUEST: 'the server did not answer in TLS (is it a plain-HTTP port?)',
};

/**
 * A reset of the request on its connection: what a server that closes without
 * an alert produces (undici's "other side closed" is `UND_ERR_SOCKET`).
 */
const RESET_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET']);

function presented(facts: TlsFacts): string {
  return facts.clientSubject === undefined ? 'no client certificate is configured' : `presented ${facts.clientSubject}`;
}

/** Detail on a reason from what the connection saw (server certificate, CA file, client certificate). */
function tlsDetail(code: string, e: NodeJS.ErrnoException & { cert?: { subjectaltname?: string } }, facts: TlsFacts | undefined, name: string): string {
  const reason = TLS_REASONS[code] ?? '';
  const peer = facts?.peer;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    const names = e.cert?.subjectaltname ?? peer?.subjectAltName;
    return `${reason} ${name}${names === undefined ? '' : ` (it names ${names})`}`;
  }
  if (reason.startsWith('unknown CA')) {
    const trusted = facts === undefined ? '' : facts.caFile === undefined ? '; trusted: the system CA store' : `; trusted: ${facts.caFile}`;
    const which = peer === undefined ? '' : `: ${peer.subject}, issued by ${peer.issuer}`;
    return `${reason}${which}${trusted}`;
  }
  if (code === 'CERT_HAS_EXPIRED' && peer !== undefined) return `${reason} (${peer.subject}, notAfter ${peer.validTo})`;
  if (code === 'CERT_NOT_YET_VALID' && peer !== undefined) return `${reason} (${peer.subject}, notBefore ${peer.validFrom})`;
  if (reason.startsWith(CLIENT_CERT_REFUSED) && facts !== undefined && code !== 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED') {
    return `${reason}; ${presented(facts)}`;
  }
  if (reason.startsWith('no TLS version') && facts?.minVersion !== undefined) return `${reason} (minVersion ${facts.minVersion})`;
  return reason;
}

/**
 * Classifies a socket-level failure of one try. TLS failures get a message
 * that starts with the kind (unknown CA, hostname mismatch, expired, not yet
 * valid, client certificate refused) and names what was seen; the TLS layer
 * attaches what the connection went through (see tls/tls-facts.ts), which is
 * how a client certificate refused after a TLS 1.3 handshake, surfacing as a
 * plain reset, is still reported as a TLS failure.
 */
export function classifyUpstreamFailure(err: unknown, endpoint: string, serverName?: string): UpstreamError {
  const e = err as NodeJS.ErrnoException & { reason?: string; cert?: { subjectaltname?: string } };
  const code = sameAlertName(opensslCodeOf(e) ?? (typeof e?.code === 'string' ? e.code : ''));
  const facts = tlsFactsOf(err);
  const name = facts?.expectedName ?? serverName ?? endpoint;
  const tlsFailure = (detail: string) =>
    new UpstreamError('upstream-tls-failure', endpoint, `TLS handshake with ${endpoint} failed: ${detail}`, err);

  if (code === CONNECT_TIMEOUT) {
    return new UpstreamError('upstream-connect-failure', endpoint, `could not connect to ${endpoint} (connect timed out)`, err);
  }
  if (CONNECT_CODES.has(code)) {
    const what = code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'could not resolve' : 'could not connect to';
    return new UpstreamError('upstream-connect-failure', endpoint, `${what} ${endpoint} (${code})`, err);
  }
  if (code === TLS_MATERIAL_ERROR_CODE) {
    return new UpstreamError('upstream-tls-failure', endpoint, `TLS to ${endpoint} not attempted: ${e.message}`, err);
  }
  if (TLS_REASONS[code] !== undefined) return tlsFailure(tlsDetail(code, e, facts, name));
  if (code === 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE') return tlsFailure(handshakeFailureReason(facts));
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) {
    const reason = e.reason ?? /SSL routines:[^:]*:([^:]+):/.exec(e.message ?? '')?.[1] ?? e.message ?? code;
    return tlsFailure(reason.trim());
  }
  // A protocol error on a TLS connection that OpenSSL did not name.
  if (code === 'EPROTO' && facts !== undefined) return tlsFailure((e.message ?? code).trim());
  if (facts !== undefined && (RESET_CODES.has(code) || /socket hang up/i.test(e?.message ?? ''))) {
    // The server asked for a client certificate and dropped the first exchange of a fresh connection:
    // the verdict on our certificate (TLS 1.3 checks it after the client is done; Node servers close
    // without an alert). A reused connection that drops is an ordinary reset.
    if (facts.clientCertRequested === true && facts.exchanges <= 1) {
      const when = facts.handshakeDone ? 'right after the handshake, before answering' : 'during the handshake';
      return tlsFailure(
        `${CLIENT_CERT_REFUSED}: the server asked for a client certificate and closed the connection ${when} (${presented(facts)})`,
      );
    }
    if (!facts.handshakeDone) return tlsFailure(`the server closed the connection during the TLS handshake (${code || 'reset'})`);
  }
  const bad = BAD_RESPONSE.get(code) ?? (code.startsWith('HPE_') ? `a response that is not valid HTTP/1.1 (${code}: ${e.message})` : undefined);
  if (bad !== undefined) return new UpstreamError('upstream-reset', endpoint, `${endpoint} sent ${bad}`, err);
  return new UpstreamError(
    'upstream-reset',
    endpoint,
    `connection to ${endpoint} dropped before a complete response (${code === 'UND_ERR_SOCKET' ? e.message : code || e?.message || 'reset'})`,
    err,
  );
}

/**
 * An alert that arrives while Node is writing comes as a plain `EPROTO`
 * whose message holds OpenSSL's reason ("...:SSL routines:ssl3_read_bytes:
 * sslv3 alert handshake failure:..."); Node's own code for the same alert on
 * a read is that reason in ERR_SSL_ form, so both are looked up alike.
 */
function opensslCodeOf(e: (NodeJS.ErrnoException & { reason?: string }) | undefined): string | undefined {
  if (e?.code !== 'EPROTO' || typeof e.message !== 'string') return undefined;
  const reason = /SSL routines:[^:]*:([a-z0-9 /]+):/i.exec(e.message)?.[1];
  return reason === undefined ? undefined : `ERR_SSL_${reason.trim().toUpperCase().replace(/ +/g, '_')}`;
}

/**
 * OpenSSL 3.0 (Node 20) names TLS 1.2 alerts "sslv3 alert …", OpenSSL 3.2+
 * (Node 22, 24) "ssl/tls alert …": one spelling for the tables above.
 */
function sameAlertName(code: string): string {
  return code.startsWith('ERR_SSL_SSL/TLS_ALERT_') ? `ERR_SSL_SSLV3_ALERT_${code.slice('ERR_SSL_SSL/TLS_ALERT_'.length)}` : code;
}

/**
 * A `handshake failure` alert is what TLS 1.2 servers send when a required
 * client certificate is missing, and also when no cipher or version is shared.
 */
function handshakeFailureReason(facts: TlsFacts | undefined): string {
  if (facts !== undefined && facts.clientSubject === undefined) {
    return `${CLIENT_CERT_REFUSED}: the server aborted the handshake (handshake failure alert); it most likely requires a client certificate and none is configured`;
  }
  const who = facts === undefined ? '' : `; ${presented(facts)}`;
  return `the server aborted the handshake (handshake failure alert): it did not accept the client certificate, or shares no TLS version or cipher with legate${who}`;
}
