/**
 * Keep-alive connection pools, one per upstream identity (scheme, authority
 * and TLS settings), shared by every config generation that uses them so a
 * reload does not drop warm connections. A pool no generation uses any more is
 * retired: idle sockets close now, busy ones close when their exchange ends.
 */
import http from 'node:http';
import type { Agent } from 'node:http';
import type { EndpointSettings } from '../config/model.js';

/** Builds the agent for an endpoint; the TLS layer provides one for https. */
export type AgentFactory = (endpoint: EndpointSettings) => Agent;

/** Idle keep-alive sockets close after this (Node also honours `Keep-Alive: timeout=` hints). */
export const IDLE_SOCKET_MS = 30_000;

/** How every upstream pool, http or https, keeps its connections. */
export const POOL_OPTIONS = Object.freeze({
  keepAlive: true,
  keepAliveMsecs: 1_000,
  maxSockets: Infinity,
  maxFreeSockets: 1_024,
  // The most recently used socket is the least likely to have been closed by the upstream.
  scheduling: 'lifo',
  timeout: IDLE_SOCKET_MS,
} as const);

export const httpAgentFactory: AgentFactory = () => new http.Agent(POOL_OPTIONS);

/** Closes idle sockets now and every busy one as soon as its exchange ends. */
export function retireAgent(agent: Agent): void {
  agent.keepSocketAlive = () => false;
  for (const sockets of Object.values(agent.freeSockets)) {
    for (const socket of sockets ?? []) socket.destroy();
  }
}

export function identityOf(endpoint: EndpointSettings): string {
  const tls = endpoint.tls === undefined ? '' : JSON.stringify(endpoint.tls);
  return `${endpoint.url.protocol}//${endpoint.url.host}|${tls}`;
}

export class AgentPool {
  readonly #agents = new Map<string, Agent>();
  readonly #factories: { http: AgentFactory; https: AgentFactory };

  constructor(factories: { http: AgentFactory; https: AgentFactory }) {
    this.#factories = factories;
  }

  /** The pool for this endpoint's identity, created on first use. */
  /** `id` may be passed by callers that computed it once (it is on every try's path). */
  get(endpoint: EndpointSettings, id = identityOf(endpoint)): Agent {
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
        retireAgent(agent);
      }
    }
  }

  /** Replaces the pool of one identity (certificate rotation), retiring the old one. */
  replace(id: string, agent: Agent): void {
    const old = this.#agents.get(id);
    this.#agents.set(id, agent);
    if (old !== undefined && old !== agent) retireAgent(old);
  }

  /** Closes every socket, for shutdown. */
  destroy(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }
}
