/**
 * A keep-alive connection pool over undici `Client`s: one Client per
 * connection, reused most-recent-first, handed to one exchange at a time.
 *
 * Why not undici's own Pool/Agent: a try that legate cuts (per-try timeout,
 * deadline, the app hanging up) must take its connection down with it, at
 * once and completely. With Pool, aborting a request in flight makes its
 * Client open a replacement connection that nothing uses (undici #5845), and
 * a request still waiting for its connection cannot stop that connection
 * attempt (undici #386; fixed in undici 8, which needs Node 22). Owning the
 * Client per exchange, and the socket being dialled, legate destroys exactly
 * the connection of the try it cut.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import type * as Undici from 'undici';

/**
 * undici's Client, connector and errors from their own files rather than the
 * package index, which loads all of undici (fetch, WebSocket, caches, mocks):
 * 9 MiB of RSS the proxy never uses. undici has no `exports` map, so these
 * paths are importable; a test fails if an upgrade moves them.
 */
const require = createRequire(import.meta.url);
const Client = require('undici/lib/dispatcher/client.js') as typeof Undici.Client;
const buildConnector = require('undici/lib/core/connect.js') as typeof Undici.buildConnector;
export const undiciErrors = require('undici/lib/core/errors.js') as typeof Undici.errors;
type Client = Undici.Client;
type ConnectorOptions = Undici.buildConnector.Options;
type ConnectorCallback = Undici.buildConnector.Callback;

/** Idle keep-alive connections close after this (an upstream's `Keep-Alive: timeout=` hint may shorten it). */
export const IDLE_SOCKET_MS = 30_000;

/**
 * A TCP connect or TLS handshake that takes longer fails the try as a connect
 * failure (Envoy's default `connect_timeout`). A try cut sooner (its deadline)
 * destroys the socket being dialled at once.
 */
export const CONNECT_TIMEOUT_MS = 5_000;

/**
 * Opens one connection's socket (undici's connector contract) and returns it,
 * so that it can be cut while dialling; undefined when it failed at once.
 */
export type Dial = (opts: ConnectorOptions, callback: ConnectorCallback) => Socket | undefined;

/** The plain-TCP dialer: undici's own connector (Nagle off, TCP keep-alive, the connect timeout). */
export function tcpDialer(): Dial {
  return buildConnector({ timeout: CONNECT_TIMEOUT_MS }) as unknown as Dial;
}

/** How every connection keeps itself. */
const CLIENT_OPTIONS = Object.freeze({
  pipelining: 1,
  keepAliveTimeout: IDLE_SOCKET_MS,
  keepAliveMaxTimeout: IDLE_SOCKET_MS,
  // Set per try from the route's idleTimeout (forward.ts).
  headersTimeout: 0,
  bodyTimeout: 0,
  // Node's own limit for response heads, as http.request had it.
  maxHeaderSize: 16 * 1024,
});

/** One upstream connection: its Client and the socket it was last given. */
export class Connection {
  readonly client: Client;
  readonly origin: string;
  /** The socket being dialled or in use; undefined before the first dial. */
  socket: Socket | undefined;
  /** In the pool's idle list. */
  idle = false;
  #gone = false;
  readonly #onGone: (c: Connection) => void;

  constructor(origin: string, dial: Dial, onGone: (c: Connection) => void, onDisconnect: (c: Connection) => void) {
    this.origin = origin;
    this.client = new Client(origin, {
      ...CLIENT_OPTIONS,
      connect: (opts, callback) => {
        this.socket = dial(opts, callback);
      },
    });
    this.client.on('disconnect', () => onDisconnect(this));
    this.#onGone = onGone;
  }

  get gone(): boolean {
    return this.#gone;
  }

  /** Takes the connection down now: the socket (connected or still dialling) and the Client. */
  destroy(err?: Error): void {
    if (this.#gone) return;
    this.#gone = true;
    this.#onGone(this);
    const socket = this.socket;
    if (socket !== undefined && !socket.destroyed) socket.destroy(err);
    this.client.destroy(err ?? null).catch(() => undefined);
  }
}

/**
 * The connections of one upstream identity, per origin (a discovered route
 * sends every address through its one identity).
 */
export class UpstreamPool {
  readonly #dial: Dial;
  readonly #idle = new Map<string, Connection[]>();
  readonly #live = new Set<Connection>();
  #closed = false;
  readonly #gone = (c: Connection): void => {
    this.#live.delete(c);
    if (c.idle) this.#unidle(c);
  };
  // An idle connection whose socket went away (keep-alive timeout, upstream close) leaves the pool.
  readonly #disconnected = (c: Connection): void => {
    if (c.idle) c.destroy();
  };

  constructor(dial: Dial = tcpDialer()) {
    this.#dial = dial;
  }

  /** An idle connection to `origin` (the most recently used), or a new one. */
  acquire(origin: string): Connection {
    const list = this.#idle.get(origin);
    const reused = list?.pop();
    if (reused !== undefined) {
      reused.idle = false;
      return reused;
    }
    const c = new Connection(origin, this.#dial, this.#gone, this.#disconnected);
    this.#live.add(c);
    if (this.#closed) c.destroy(new Error('the upstream pool is closed'));
    return c;
  }

  /** The exchange on `c` ended cleanly: the connection waits for the next one (or closes, once retired). */
  release(c: Connection): void {
    if (c.gone) return;
    if (this.#closed) {
      c.destroy();
      return;
    }
    c.idle = true;
    let list = this.#idle.get(c.origin);
    if (list === undefined) {
      list = [];
      this.#idle.set(c.origin, list);
    }
    list.push(c);
  }

  /** Connections open or being opened, idle included (for tests and diagnostics). */
  get size(): number {
    return this.#live.size;
  }

  /** Retires the pool: idle connections close now, busy ones when their exchange ends. */
  close(): void {
    this.#closed = true;
    for (const list of [...this.#idle.values()]) for (const c of [...list]) c.destroy();
  }

  /** Closes every connection now, busy ones included (shutdown). */
  destroy(): void {
    this.#closed = true;
    for (const c of [...this.#live]) c.destroy();
  }

  #unidle(c: Connection): void {
    c.idle = false;
    const list = this.#idle.get(c.origin);
    if (list === undefined) return;
    const i = list.indexOf(c);
    if (i !== -1) list.splice(i, 1);
    if (list.length === 0) this.#idle.delete(c.origin);
  }
}
