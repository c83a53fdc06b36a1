/**
 * The keep-alive https pool of one TLS identity: an UpstreamPool whose dialer
 * connects with the identity's SecureContext, SNI and hostname check, and
 * records what each connection went through (handshake finished? did the
 * server ask for a client certificate? first exchange or a reused socket?).
 * Those facts ride on every error of the connection, for
 * `classifyUpstreamFailure`.
 */
import { isIP } from 'node:net';
import tls, { type ConnectionOptions, type PeerCertificate, type TLSSocket } from 'node:tls';
import type { buildConnector } from 'undici';
import type { TlsSettings } from '../config/model.js';
import { CONNECT_TIMEOUT_MS, UpstreamPool, undiciErrors } from '../runtime/upstream-pool.js';
import type { TlsMaterial } from './material.js';
import { attachTlsFacts, setSocketTlsFacts, TLS_MATERIAL_ERROR_CODE, type PeerCertificateSummary, type TlsFacts } from './tls-facts.js';

/** Thrown to every request of an identity whose files were never usable. */
export class TlsMaterialError extends Error {
  readonly code = TLS_MATERIAL_ERROR_CODE;
  constructor(problem: string) {
    super(problem);
    this.name = 'TlsMaterialError';
  }
}

function peerSummary(cert: PeerCertificate): PeerCertificateSummary | undefined {
  // An empty object when the server sent none.
  if (cert.subject === undefined) return undefined;
  const name = (n: Record<string, string | string[] | undefined> | undefined): string =>
    Object.entries(n ?? {})
      .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('+') : String(v)}`)
      .join(', ');
  return {
    subject: name(cert.subject as unknown as Record<string, string | string[] | undefined>),
    issuer: name(cert.issuer as unknown as Record<string, string | string[] | undefined>),
    validFrom: cert.valid_from,
    validTo: cert.valid_to,
    subjectAltName: cert.subjectaltname,
  };
}

function sharedSigalgsCount(socket: TLSSocket): number | undefined {
  try {
    return socket.getSharedSigalgs().length;
  } catch {
    // The native handle is gone once the socket is destroyed.
    return undefined;
  }
}

/** What a TlsAgent is built from. */
export interface TlsAgentOptions {
  readonly settings: TlsSettings;
  /** URL host of the endpoint, for messages when no serverName is set. */
  readonly host: string;
  /** Usable files, or why there are none (every request then fails with that reason). */
  readonly material: TlsMaterial | { readonly problem: string };
}

/** Dials the TLS connections of one identity and instruments each. */
class TlsConnector {
  readonly #base: Pick<TlsFacts, 'caFile' | 'clientSubject' | 'expectedName' | 'minVersion'>;
  readonly #problem: string | undefined;
  readonly #options: ConnectionOptions;
  /** The last session the server gave us, offered on the next connection (resumption skips a full handshake). */
  #session: Buffer | undefined;

  constructor(opts: TlsAgentOptions) {
    const { settings } = opts;
    const serverName = settings.serverName;
    const material = 'secureContext' in opts.material ? opts.material : undefined;
    this.#problem = 'problem' in opts.material ? opts.material.problem : undefined;
    this.#base = {
      caFile: settings.ca,
      clientSubject: material?.client?.subject,
      expectedName: serverName ?? opts.host,
      minVersion: settings.minVersion,
    };
    const sni = serverName ?? opts.host;
    this.#options = {
      rejectUnauthorized: true,
      ALPNProtocols: ['http/1.1'],
      ...(material === undefined ? {} : { secureContext: material.secureContext }),
      // RFC 6066 forbids an IP address as SNI; the name is then only used for the check below.
      ...(isIP(sni) !== 0 ? {} : { servername: sni }),
      // Checked against serverName, not the address dialled nor the Host header a request carries.
      checkServerIdentity: (_host: string, cert: PeerCertificate) => tls.checkServerIdentity(sni, cert),
    };
  }

  get problem(): string | undefined {
    return this.#problem;
  }

  readonly dial = (opts: buildConnector.Options, callback: buildConnector.Callback): TLSSocket | undefined => {
    if (this.#problem !== undefined) {
      // Never dialled: the files were never usable.
      const err = new TlsMaterialError(this.#problem);
      attachTlsFacts(err, this.#freshFacts());
      callback(err, null);
      return undefined;
    }
    const socket = tls.connect({
      ...this.#options,
      host: opts.hostname.replace(/^\[|\]$/g, ''),
      port: Number(opts.port) || 443,
      ...(this.#session === undefined ? {} : { session: this.#session }),
    });
    const facts = this.#instrument(socket);
    socket.setNoDelay(true);
    socket.on('session', (session: Buffer) => {
      this.#session = session;
    });
    const timer = setTimeout(() => {
      socket.destroy(new undiciErrors.ConnectTimeoutError(`TLS connection not set up within ${CONNECT_TIMEOUT_MS} ms`));
    }, CONNECT_TIMEOUT_MS);
    const onError = (err: Error): void => {
      clearTimeout(timer);
      attachTlsFacts(err, facts);
      callback(err, null);
    };
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      socket.setKeepAlive(true, 60_000);
      callback(null, socket);
    });
    return socket;
  };

  /** What a connection of this identity knows before anything happened on it. */
  #freshFacts(): TlsFacts {
    return {
      ...this.#base,
      handshakeDone: false,
      secureConnected: false,
      clientCertRequested: undefined,
      exchanges: 0,
      protocol: undefined,
      peer: undefined,
    };
  }

  #instrument(socket: TLSSocket): TlsFacts {
    const facts = this.#freshFacts();
    setSocketTlsFacts(socket, facts);
    const noteRequested = (): void => {
      if (facts.clientCertRequested !== undefined) return;
      const n = sharedSigalgsCount(socket);
      if (n !== undefined) facts.clientCertRequested = n > 0;
    };
    // Prepended: Node's own 'secure' listener verifies the server and may destroy the socket, after
    // which the peer certificate is gone. getPeerCertificate(), not getPeerX509Certificate(): on
    // Node 20 the latter, called here, empties the certificate that the hostname check sees next.
    socket.prependOnceListener('secure', () => {
      facts.handshakeDone = true;
      facts.protocol = socket.getProtocol() ?? undefined;
      facts.peer = peerSummary(socket.getPeerCertificate());
      noteRequested();
    });
    socket.once('secureConnect', () => {
      facts.secureConnected = true;
    });
    // A server that refuses our certificate before finishing (TLS 1.2, Node servers) just closes:
    // read what it asked for before the handle goes away.
    socket.prependOnceListener('end', noteRequested);
    // Every error of the connection, undici's "other side closed" included, carries what it saw.
    socket.prependListener('error', (err: Error) => {
      noteRequested();
      attachTlsFacts(err, facts);
    });
    return facts;
  }
}

/** The keep-alive pool of one TLS identity (an UpstreamPool with an instrumented TLS dialer). */
export class TlsAgent extends UpstreamPool {
  readonly #problem: string | undefined;

  constructor(opts: TlsAgentOptions) {
    const connector = new TlsConnector(opts);
    super(connector.dial);
    this.#problem = connector.problem;
  }

  /** Why this agent cannot connect, when its files were never usable. */
  get problem(): string | undefined {
    return this.#problem;
  }
}
