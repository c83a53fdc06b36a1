/**
 * The keep-alive https pool of one TLS identity. Besides connecting with the
 * identity's SecureContext, SNI and hostname check, it records what each
 * connection went through (handshake finished? did the server ask for a
 * client certificate? first exchange or a reused socket?) and attaches that to
 * any error of a request it carries, for `classifyUpstreamFailure`.
 */
import type { ClientRequest, RequestOptions } from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import tls, { type PeerCertificate, type TLSSocket } from 'node:tls';
import type { TlsSettings } from '../config/model.js';
import { POOL_OPTIONS } from '../runtime/agents.js';
import type { TlsMaterial } from './material.js';
import { attachTlsFacts, TLS_MATERIAL_ERROR_CODE, type PeerCertificateSummary, type TlsFacts } from './tls-facts.js';

type AddRequest = (this: https.Agent, req: ClientRequest, options: RequestOptions) => void;

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

/** A keep-alive https.Agent for one TLS identity that records, per connection, what TLS went through. */
export class TlsAgent extends https.Agent {
  /** Identity-wide facts; each connection gets a copy it fills in. */
  readonly #base: Pick<TlsFacts, 'caFile' | 'clientSubject' | 'expectedName' | 'minVersion'>;
  readonly #problem: string | undefined;
  readonly #facts = new WeakMap<Duplex, TlsFacts>();

  constructor(opts: TlsAgentOptions) {
    const { settings } = opts;
    const serverName = settings.serverName;
    const material = 'secureContext' in opts.material ? opts.material : undefined;
    super({
      ...POOL_OPTIONS,
      // Agent options override request options, so nothing a caller passes can turn verification off.
      rejectUnauthorized: true,
      ...(material === undefined ? {} : { secureContext: material.secureContext }),
      // RFC 6066 forbids an IP address as SNI; the name is then only used for the check below.
      ...(serverName === undefined || isIP(serverName) !== 0 ? {} : { servername: serverName }),
      // Checked against serverName, not the URL host, whatever name Node would pick.
      ...(serverName === undefined
        ? {}
        : { checkServerIdentity: (_host: string, cert: PeerCertificate) => tls.checkServerIdentity(serverName, cert) }),
    });
    this.#problem = 'problem' in opts.material ? opts.material.problem : undefined;
    this.#base = {
      caFile: settings.ca,
      clientSubject: material?.client?.subject,
      expectedName: serverName ?? opts.host,
      minVersion: settings.minVersion,
    };
  }

  /** Why this agent cannot connect, when its files were never usable. */
  get problem(): string | undefined {
    return this.#problem;
  }

  override createConnection(options: RequestOptions, callback?: (err: Error | null, stream: Duplex) => void): Duplex | null | undefined {
    if (this.#problem !== undefined) {
      // Reported through the callback so the request fails with this reason, not with a thrown exception.
      callback?.(new TlsMaterialError(this.#problem), undefined as unknown as Duplex);
      return undefined;
    }
    const socket = super.createConnection(options, callback) as TLSSocket | null | undefined;
    if (socket !== null && socket !== undefined) this.#instrument(socket);
    return socket;
  }

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

  #instrument(socket: TLSSocket): void {
    const facts = this.#freshFacts();
    this.#facts.set(socket, facts);
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
    socket.prependListener('error', noteRequested);
  }

  /**
   * Counts the exchanges of each socket and tags the request's errors with
   * what its connection saw. `addRequest` is the one place where an agent
   * meets the request; "socket hang up" errors are created on the request,
   * not the socket, so tagging socket errors alone would miss them.
   */
  addRequest(req: ClientRequest, options: RequestOptions): void {
    req.once('socket', (socket: Duplex) => {
      const facts = this.#facts.get(socket);
      if (facts !== undefined) facts.exchanges++;
    });
    req.prependListener('error', (err: Error) => {
      const socket = req.socket as Duplex | null;
      const facts = socket === null ? undefined : this.#facts.get(socket);
      attachTlsFacts(
        err,
        facts ?? this.#freshFacts(),
      );
    });
    (https.Agent.prototype as unknown as { addRequest: AddRequest }).addRequest.call(this, req, options);
  }
}
