/**
 * What the TLS layer saw on the connection a failed try used, carried on the
 * error itself so that `classifyUpstreamFailure` can say *why* TLS failed.
 *
 * The error alone is often not enough: a TLS 1.3 server checks the client
 * certificate only after the client considers the handshake done, and a Node
 * server that rejects it just closes the socket, so the try sees a plain
 * `ECONNRESET` or "socket hang up". Knowing that the server asked for a client
 * certificate and dropped the very first exchange of a fresh connection is
 * what tells a refused certificate from an ordinary reset.
 *
 * This module imports nothing so that `errors.ts` can read it without a cycle.
 */

/** The server certificate as far as the handshake got, for messages. */
export interface PeerCertificateSummary {
  readonly subject: string;
  readonly issuer: string;
  readonly validFrom: string;
  readonly validTo: string;
  /** e.g. `DNS:localhost, IP Address:127.0.0.1`. */
  readonly subjectAltName: string | undefined;
}

/** Facts about one upstream TLS connection and the TLS identity it was made with. */
export interface TlsFacts {
  /** The CA bundle file that verifies the server; undefined = the system store. */
  readonly caFile: string | undefined;
  /** Subject of the client certificate offered; undefined = none configured. */
  readonly clientSubject: string | undefined;
  /** The name the server certificate must carry (serverName, else the URL host). */
  readonly expectedName: string | undefined;
  readonly minVersion: string | undefined;
  /** The TLS handshake finished on our side (before our own verification of the server). */
  handshakeDone: boolean;
  /** We verified the server and emitted `secureConnect`. */
  secureConnected: boolean;
  /**
   * The server sent a CertificateRequest. Node exposes no direct flag; the
   * signature algorithms shared with the server are only known on the client
   * when such a request arrived, so a non-empty list means it asked.
   */
  clientCertRequested: boolean | undefined;
  /** Requests this connection carried, the failing one included (1 = fresh connection). */
  exchanges: number;
  /** Negotiated protocol, e.g. `TLSv1.3`. */
  protocol: string | undefined;
  peer: PeerCertificateSummary | undefined;
}

/** The error property that carries the facts; a symbol so it never reaches logs or JSON. */
export const TLS_FACTS: unique symbol = Symbol.for('legate.tlsFacts');

/** Attaches `facts` to `err` (when it is an object), keeping facts already attached. */
export function attachTlsFacts(err: unknown, facts: TlsFacts): void {
  if (typeof err !== 'object' || err === null) return;
  const carrier = err as { [TLS_FACTS]?: TlsFacts };
  if (carrier[TLS_FACTS] === undefined) {
    Object.defineProperty(carrier, TLS_FACTS, { value: facts, enumerable: false, configurable: true });
  }
}

/** The facts attached to `err`, if the TLS layer saw it. */
export function tlsFactsOf(err: unknown): TlsFacts | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  return (err as { [TLS_FACTS]?: TlsFacts })[TLS_FACTS];
}

/** Error code of a failure that happened before any connection: the TLS files were not usable. */
export const TLS_MATERIAL_ERROR_CODE = 'LEGATE_TLS_MATERIAL';

/** The facts of every upstream TLS connection, by socket, while it lives. */
const socketFacts = new WeakMap<object, TlsFacts>();

export function setSocketTlsFacts(socket: object, facts: TlsFacts): void {
  socketFacts.set(socket, facts);
}

/** The facts of a TLS connection legate dialled; undefined for plain TCP. */
export function socketTlsFacts(socket: object | undefined): TlsFacts | undefined {
  return socket === undefined ? undefined : socketFacts.get(socket);
}
