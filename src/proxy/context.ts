/**
 * The per-request object that travels down the chain (`ProxyRequest`), plus
 * what the listener needs to finish the request: timers to clear and the
 * outcome the access log and metrics read.
 */
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { PassThrough, Readable } from 'node:stream';
import { LegateError } from '../errors.js';
import type { RouteRuntime } from '../runtime/route-runtime.js';
import { RequestAbort, type AbortLike } from './abort.js';
import type { ProxyRequest, RequestBody, RequestPolicy, TryRecord } from './types.js';
import type { Endpoint } from '../runtime/route-runtime.js';

/** The app's body streamed once; retries of it are impossible after the first try. */
export function streamedBody(raw: IncomingMessage): RequestBody {
  return new StreamedBody(raw);
}

/** A class rather than an object literal with getters: it is built for every request. */
class StreamedBody implements RequestBody {
  readonly length: number | undefined;
  readonly #raw: IncomingMessage;
  readonly #hasBody: boolean;
  #opened = false;

  constructor(raw: IncomingMessage) {
    this.#raw = raw;
    const length = raw.headers['content-length'];
    this.#hasBody = length !== undefined ? length !== '0' : raw.headers['transfer-encoding'] !== undefined;
    this.length = this.#hasBody ? (length === undefined ? undefined : Number(length)) : 0;
  }

  // An empty body can be "replayed" for free.
  get replayable(): boolean {
    return !this.#hasBody;
  }

  get consumed(): boolean {
    return this.#opened && this.#hasBody;
  }

  open(): Readable {
    if (!this.#hasBody) return Readable.from([]);
    // The retry layer never sends a consumed body again; this would be a bug in the chain.
    if (this.#opened) throw new LegateError('internal-error', 'the request body was already sent and cannot be sent again');
    this.#opened = true;
    return this.#raw.pipe(new PassThrough());
  }
}

export interface ContextInit {
  id: string;
  raw: IncomingMessage;
  res: ServerResponse;
  route: RouteRuntime;
  path: string;
  forwardPath: string;
  headers: OutgoingHttpHeaders;
  trustControlHeaders: boolean;
  startedAt: number;
}

export class RequestContext implements ProxyRequest {
  readonly id: string;
  readonly method: string;
  readonly raw: IncomingMessage;
  readonly appResponse: ServerResponse;
  readonly route: RouteRuntime;
  readonly forwardPath: string;
  readonly path: string;
  readonly headers: OutgoingHttpHeaders;
  readonly appHeaders: IncomingHttpHeaders;
  readonly trustControlHeaders: boolean;
  policy: RequestPolicy;
  body: RequestBody;
  deadline = Infinity;
  readonly startedAt: number;
  readonly tries: TryRecord[] = [];
  endpoint: Endpoint | undefined = undefined;

  /** Outcome, for logs and metrics. */
  status = 0;
  errorCode: string | undefined = undefined;
  /** ms from the last try's start to its response head. */
  upstreamMs: number | undefined = undefined;
  /** Set when the response failed after its head reached the app (the connection was reset). */
  resetAfterHead = false;
  /** Set when a retry was wanted but the route's retry budget was spent. */
  budgetExhausted = false;

  readonly #abort = new RequestAbort();
  #timers: NodeJS.Timeout[] = [];

  constructor(init: ContextInit) {
    this.id = init.id;
    this.method = init.raw.method ?? 'GET';
    this.raw = init.raw;
    this.appResponse = init.res;
    this.route = init.route;
    this.path = init.path;
    this.forwardPath = init.forwardPath;
    this.headers = init.headers;
    this.appHeaders = init.raw.headers;
    this.trustControlHeaders = init.trustControlHeaders;
    this.startedAt = init.startedAt;
    const s = init.route.settings;
    this.policy = {
      retries: s.retry.retries,
      retryOn: s.retry.on,
      timeoutMs: s.timeoutMs,
      perTryTimeoutMs: s.retry.perTryTimeoutMs,
      optOut: new Set(),
      optOutDenied: [],
    };
    this.body = streamedBody(init.raw);
  }

  get signal(): AbortLike {
    return this.#abort;
  }

  abort(reason: Error): void {
    this.#abort.abort(reason);
  }

  /** Runs `fn` after `ms` unless the request finished first; cleared by `finish()`. */
  schedule(ms: number, fn: () => void): void {
    this.#timers.push(setTimeout(fn, ms));
  }

  /** Milliseconds since the request arrived. */
  elapsedMs(now = performance.now()): number {
    return now - this.startedAt;
  }

  /** Releases everything the request holds: no timer outlives it. */
  finish(): void {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
  }
}
