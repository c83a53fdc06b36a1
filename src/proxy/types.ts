/**
 * The types every layer of the chain shares. A layer takes the next handler
 * and returns a handler (the undici interceptor shape), so a retry layer can
 * call the inner chain more than once. Nothing is written to the app until
 * the chain returns: the chain yields an `UpstreamResponse` or throws a
 * `LegateError`, and `respond.ts` alone writes to the app.
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable, Writable } from 'node:stream';
import type { OptOut } from '../config/schema.js';
import type { AbortLike } from './abort.js';
import type { Endpoint, RouteRuntime } from '../runtime/route-runtime.js';

/** Effective per-request policy: the route's, adjusted by control headers. */
export interface RequestPolicy {
  retries: number;
  retryOn: ReadonlyArray<string | number>;
  /** 0 = no whole-request deadline. */
  timeoutMs: number;
  /** 0 = no per-try deadline. */
  perTryTimeoutMs: number;
  /** Steps the app opted out of and the route allows. */
  optOut: Set<OptOut>;
  /** Steps the app asked to skip that the route does not allow. */
  optOutDenied: OptOut[];
}

/** One try at an upstream, as the access log reports it. */
export interface TryRecord {
  endpoint: string;
  /** Upstream status, when a response head arrived. */
  status?: number;
  /** legate error code, when the try failed without a response. */
  error?: string;
  ms: number;
  /** Why this try was followed by another, when it was. */
  retryReason?: string;
}

/**
 * The request body as the tries see it. A streamed body can be sent once; a
 * buffered one (at most `retry.bufferLimit`) is replayed byte-identical.
 */
export interface RequestBody {
  /** True when another try can send the body again. */
  readonly replayable: boolean;
  /** True once a try has consumed a non-replayable body. */
  readonly consumed: boolean;
  /** Length in bytes when known up front (Content-Length or buffered). */
  readonly length: number | undefined;
  /**
   * The stream the next try sends. For a streamed body (sent once) that is
   * the app's own request stream, behind a stream of its own: a failed try
   * destroys what it was sending, and the app's request must outlive it
   * (legate still answers it).
   */
  open(): Readable;
}

export interface ProxyRequest {
  /** x-request-id, kept from the app or generated. */
  readonly id: string;
  readonly method: string;
  /** The app's request: the body stream and socket. Headers are in `headers`. */
  readonly raw: IncomingMessage;
  /** The app's response. Only respond.ts writes to it; layers must not. */
  readonly appResponse: ServerResponse;
  readonly route: RouteRuntime;
  /**
   * The request's part of the upstream path: the path after `stripPrefix`
   * (possibly '') plus the query, byte for byte. The forwarder prepends the
   * chosen endpoint's base path.
   */
  readonly forwardPath: string;
  /** Normalised request path without the query, as matched and logged. */
  readonly path: string;
  /** The headers sent upstream: hop-by-hop and x-legate-* already removed. */
  readonly headers: OutgoingHttpHeaders;
  /** The headers as the app sent them (before removal), for control-header parsing. */
  readonly appHeaders: IncomingHttpHeaders;
  /** True when control headers from this client are honoured (SPEC §4). */
  readonly trustControlHeaders: boolean;
  policy: RequestPolicy;
  body: RequestBody;
  /** Aborted when the app goes away or the whole-request deadline passes. */
  readonly signal: AbortLike;
  /** Absolute deadline on the `performance.now()` clock; Infinity for none. */
  deadline: number;
  readonly startedAt: number;
  readonly tries: TryRecord[];
  /** Endpoint chosen for the current try (set by the balancing layer). */
  endpoint: Endpoint | undefined;
  /** Aborts this request (deadline, app gone, drain); reason is a LegateError. */
  abort(reason: Error): void;
}

/**
 * An upstream response body, held (its connection not read) until one
 * consumer says what to do with it: stream it to the app, drop it, or cut it.
 * Not a Readable: the forwarder hands each chunk straight to the app's
 * response, with the app's backpressure, and builds no stream per try.
 */
export interface UpstreamBody {
  /**
   * Writes the body to `dest`, ends `dest` after the last byte, and calls
   * `done` once: with no argument when every byte was handed to `dest`, with
   * the error when the body failed (`dest` is then left as it is).
   */
  pipeTo(dest: Writable, done: (err?: Error) => void): void;
  /** Reads the rest and throws it away (keeps the connection for the next request). */
  drain(): void;
  /** Stops the exchange now: its connection closes. */
  destroy(reason?: Error): void;
  /** Calls `fn` once, when the body has ended, failed or been destroyed (at once if it has). */
  onSettled(fn: () => void): void;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly statusMessage: string | undefined;
  readonly headers: IncomingHttpHeaders;
  /** The upstream response body; the consumer must pipe, drain or destroy it. */
  readonly body: UpstreamBody;
  readonly endpoint: Endpoint;
  /** ms from the start of the try that produced this response to its head. */
  readonly upstreamMs: number;
}

export type Handler = (req: ProxyRequest) => Promise<UpstreamResponse>;
export type Layer = (next: Handler) => Handler;
