/**
 * A real HTTPS upstream for TLS tests: a Node https server that, by default,
 * requires a client certificate signed by the given CA (`requestCert` and
 * `rejectUnauthorized`, like nginx's `ssl_verify_client on`) and records the
 * client certificate subject of every connection it accepted.
 */
import https from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Issued } from './certs.js';

export interface TlsUpstream {
  readonly port: number;
  /** `https://127.0.0.1:PORT`. */
  readonly url: string;
  /** Client certificate CN of each accepted connection, in order. */
  readonly connections: string[];
  /** Client certificate CN of each request, in order. */
  readonly requests: string[];
  close(): Promise<void>;
}

export interface TlsUpstreamOptions {
  /** The server's certificate. */
  readonly server: Issued;
  /** PEM CA that client certificates must chain to. */
  readonly clientCa: string;
  readonly maxVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** Default true: a client certificate is required. */
  readonly requireClientCert?: boolean;
  /**
   * How a missing or untrusted client certificate is refused: `tls` lets
   * OpenSSL/Node do it (an alert when none is sent, a bare close for an
   * untrusted one); `drop` accepts the handshake and then closes the
   * connection without any alert, as some servers and proxies do.
   */
  readonly refuse?: 'tls' | 'drop';
}

function cnOf(socket: TLSSocket): string {
  const cert = socket.getPeerCertificate();
  const cn = cert?.subject?.CN;
  return cn === undefined ? '(none)' : Array.isArray(cn) ? cn.join('+') : cn;
}

/** Starts the upstream; each response is JSON `{ cn, url }`, `cn` being the client certificate's CN. */
export async function startTlsUpstream(opts: TlsUpstreamOptions): Promise<TlsUpstream> {
  const required = opts.requireClientCert ?? true;
  const drop = required && opts.refuse === 'drop';
  const connections: string[] = [];
  const requests: string[] = [];
  const server = https.createServer(
    {
      cert: opts.server.certPem,
      key: opts.server.keyPem,
      ca: opts.clientCa,
      requestCert: required,
      rejectUnauthorized: required && !drop,
      ...(opts.maxVersion === undefined ? {} : { maxVersion: opts.maxVersion }),
    },
    (req, res) => {
      // With `drop`, TLS 1.3 data sent with the client's Finished can be parsed before the close takes effect.
      if (drop && !(req.socket as TLSSocket).authorized) return;
      const cn = cnOf(req.socket as TLSSocket);
      requests.push(cn);
      req.resume();
      req.on('end', () => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ cn, url: req.url }));
      });
    },
  );
  // Node emits this only for connections it keeps: refused client certificates never show up here.
  server.on('secureConnection', (socket: TLSSocket) => {
    if (drop && !socket.authorized) socket.destroy();
    else connections.push(cnOf(socket));
  });
  // Failed handshakes are expected in these tests; without a listener they would only be noise.
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `https://127.0.0.1:${port}`,
    connections,
    requests,
    async close() {
      server.closeAllConnections();
      server.close();
      if (server.listening) await once(server, 'close');
    },
  };
}
