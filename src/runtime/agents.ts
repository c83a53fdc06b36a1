/**
 * Keep-alive connection pools, one per upstream identity (scheme, authority
 * and TLS settings), shared by every config generation that uses them so a
 * reload does not drop warm connections. A pool no generation uses any more is
 * retired: idle sockets close now, busy ones close when their exchange ends.
 *
 * A pool is an `UpstreamPool` (upstream-pool.ts): connections per origin
 * under one set of connection settings. Most identities only ever see one
 * origin; a route with DNS discovery sends every address it found through
 * its one identity.
 */
import type { EndpointSettings } from '../config/model.js';
import { UpstreamPool } from './upstream-pool.js';

/** Builds the pool for an endpoint; the TLS layer provides one for https. */
export type AgentFactory = (endpoint: EndpointSettings) => UpstreamPool;

export const httpAgentFactory: AgentFactory = () => new UpstreamPool();

export function identityOf(endpoint: EndpointSettings): string {
  const tls = endpoint.tls === undefined ? '' : JSON.stringify(endpoint.tls);
  return `${endpoint.url.protocol}//${endpoint.url.host}|${tls}`;
}

export class AgentPool {
  readonly #agents = new Map<string, UpstreamPool>();
  readonly #factories: { http: AgentFactory; https: AgentFactory };

  constructor(factories: { http: AgentFactory; https: AgentFactory }) {
    this.#factories = factories;
  }

  /** The pool for this endpoint's identity, created on first use. */
  /** `id` may be passed by callers that computed it once (it is on every try's path). */
  get(endpoint: EndpointSettings, id = identityOf(endpoint)): UpstreamPool {
    let agent = this.#agents.get(id);
    if (agent === undefined) {
      const factory = endpoint.url.protocol === 'https:' ? this.#factories.https : this.#factories.http;
      agent = factory(endpoint);
      this.#agents.set(id, agent);
    }
    return agent;
  }

  /** Retires every pool whose identity is not in `inUse` (after a reload). */
  retainOnly(inUse: ReadonlySet<string>): void {
    for (const [id, agent] of this.#agents) {
      if (!inUse.has(id)) {
        this.#agents.delete(id);
        agent.close();
      }
    }
  }

  /** Replaces the pool of one identity (certificate rotation), retiring the old one. */
  replace(id: string, agent: UpstreamPool): void {
    const old = this.#agents.get(id);
    this.#agents.set(id, agent);
    if (old !== undefined && old !== agent) old.close();
  }

  /** Closes every socket, for shutdown. */
  destroy(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }
}
