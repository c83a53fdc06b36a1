/**
 * The terminal layer: one try at one endpoint, over the endpoint's keep-alive
 * pool (an undici Agent). It resolves with the upstream's response head and a
 * held body (streamed to the app by respond.ts), or rejects with an
 * UpstreamError. Each call is one try; the retry layer may call again.
 *
 * legate forwarded with http-proxy, then with Node's `http.request`; undici's
 * dispatcher costs about half as much CPU per request as either (README
 * "Dependencies" has the numbers). Each try is one `Exchange` object: the
 * dispatch handler, the held body and the promise's ends in one allocation,
 * with the body's chunks written straight to the app's response.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Readable, Writable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { classifyUpstreamFailure, isLegateError, LegateError, UpstreamError, type LegateError as LE } from '../errors.js';
import type { AbortLike } from '../proxy/abort.js';
import type { Handler, ProxyRequest, TryRecord, UpstreamBody, UpstreamResponse } from '../proxy/types.js';
import type { Endpoint } from '../runtime/route-runtime.js';
import type { Connection, UpstreamPool } from '../runtime/upstream-pool.js';
import { attachTlsFacts, socketTlsFacts } from '../tls/tls-facts.js';

type Controller = Dispatcher.DispatchController;

/** The endpoint's base path joined to the request's part; never empty. */
export function upstreamPath(basePath: string, forwardPath: string): string {
  const joined = basePath + forwardPath;
  return joined === '' || joined.charCodeAt(0) === 63 /* ? */ ? '/' + joined : joined;
}

export interface Forwarder {
  readonly handler: Handler;
  close(): void;
}

/** Aborts a try from the outside (per-try deadline); the reason becomes the try's error. */
export const TRY_SIGNAL = Symbol('legate.trySignal');
export interface TrySignalCarrier {
  [TRY_SIGNAL]?: AbortLike;
}

/**
 * Framing comes from the body this try sends, never from the app's headers
 * (Transfer-Encoding is hop-by-hop and was dropped): a known length is sent
 * as Content-Length, an unknown one chunked (undici frames a stream without a
 * length that way, whatever the method). Otherwise an upstream could read a
 * GET's unframed body as a second request that legate never routed.
 */
function frame(headers: OutgoingHttpHeaders, bodyLength: number | undefined): void {
  delete headers['transfer-encoding'];
  if (bodyLength === undefined) delete headers['content-length'];
  else if (bodyLength > 0) headers['content-length'] = String(bodyLength);
}

/** What undici reports for failures that are about time, not the connection. */
const HEADERS_TIMEOUT = 'UND_ERR_HEADERS_TIMEOUT';
const BODY_TIMEOUT = 'UND_ERR_BODY_TIMEOUT';
/** A request undici refuses to send (a header value it will not write): nothing was sent. */
const INVALID_ARGUMENT = 'UND_ERR_INVALID_ARG';

function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** One try: undici's dispatch handler, and then the response body it holds for the consumer. */
class Exchange implements Dispatcher.DispatchHandler, UpstreamBody {
  readonly #req: ProxyRequest;
  readonly #endpoint: Endpoint;
  readonly #record: TryRecord;
  readonly #started: number;
  readonly #trySignal: AbortLike | undefined;
  readonly #resolve: (r: UpstreamResponse) => void;
  readonly #reject: (e: LE) => void;
  #controller: Controller | undefined;
  #pool: UpstreamPool | undefined;
  #conn: Connection | undefined;
  /** The head arrived or the try failed: the promise is settled. */
  #settled = false;
  /** The body ended, failed or was destroyed. */
  #over = false;
  #dest: Writable | undefined;
  #done: ((err?: Error) => void) | undefined;
  #draining = false;
  /** Body bytes the upstream's Content-Length says are still to come; -1 when it gave none. */
  #remaining = -1;
  /** The app's response while it is corked: see onResponseData. */
  #corked: Writable | undefined;
  #onSettled: Array<() => void> | undefined;
  readonly #onAbort = (): void => this.#fail(this.#req.signal.reason);
  readonly #onTryAbort = (): void => this.#fail(this.#trySignal?.reason);
  readonly #onDrain = (): void => this.#controller?.resume();
  readonly #uncork = (): void => {
    const dest = this.#corked;
    this.#corked = undefined;
    dest?.uncork();
  };

  constructor(req: ProxyRequest, endpoint: Endpoint, resolve: (r: UpstreamResponse) => void, reject: (e: LE) => void) {
    this.#req = req;
    this.#endpoint = endpoint;
    this.#resolve = resolve;
    this.#reject = reject;
    this.#started = performance.now();
    this.#record = { endpoint: endpoint.key, ms: 0 };
    req.tries.push(this.#record);
    this.#trySignal = (req as ProxyRequest & TrySignalCarrier)[TRY_SIGNAL];
  }

  start(): void {
    const req = this.#req;
    if (req.signal.aborted) return this.#fail(req.signal.reason);
    if (this.#trySignal?.aborted === true) return this.#fail(this.#trySignal.reason);
    const endpoint = this.#endpoint;
    const route = req.route.settings;
    // Each endpoint of a weighted list is its own authority.
    if (!route.preserveHost) req.headers.host = endpoint.authority;
    const length = req.body.length;
    const body: Readable | null = length === 0 ? null : req.body.open();
    frame(req.headers, length);
    req.signal.addEventListener('abort', this.#onAbort, { once: true });
    this.#trySignal?.addEventListener('abort', this.#onTryAbort, { once: true });
    const idle = route.idleTimeoutMs;
    const pool = endpoint.agent();
    const conn = pool.acquire(endpoint.origin);
    this.#pool = pool;
    this.#conn = conn;
    const options: Dispatcher.DispatchOptions & { servername: string } = {
      path: upstreamPath(endpoint.basePath, req.forwardPath),
      method: req.method,
      headers: req.headers as Record<string, string | string[]>,
      body,
      // The upstream's silence, waiting for the head and between body chunks.
      headersTimeout: idle,
      bodyTimeout: idle,
      // One name per endpoint, so undici never redials for a new one (it would take it from Host).
      // The TLS dialer sends the SNI of the endpoint's TLS settings whatever this says.
      servername: endpoint.hostname,
    };
    conn.client.dispatch(options, this);
  }

  // ---- undici's side -------------------------------------------------------

  onRequestStart(controller: Controller): void {
    this.#controller = controller;
    const facts = socketTlsFacts(this.#conn?.socket);
    if (facts !== undefined) facts.exchanges++;
  }

  onResponseStart(controller: Controller, status: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    // 1xx heads are informational; the app gets the final one.
    if (status < 200) return;
    this.#controller = controller;
    if (this.#settled) return;
    // Held until a consumer says what to do with the body (pipe, drain or destroy).
    controller.pause();
    this.#settled = true;
    this.#unlisten();
    const record = this.#record;
    record.status = status;
    const length = headers['content-length'];
    if (typeof length === 'string') this.#remaining = Number(length);
    this.#resolve({ status, statusMessage, headers, body: this, endpoint: this.#endpoint, upstreamMs: record.ms });
  }

  onResponseData(controller: Controller, chunk: Buffer): void {
    const dest = this.#dest;
    if (dest === undefined) return; // drained, or destroyed
    // A body that comes in pieces the upstream sent together (over TLS, a response larger than one 16 KiB
    // record arrives as two) goes to the app in one write: the response stays corked while the rest of a
    // known length is due, until the body ends or this turn of the event loop does, whichever is first.
    // A body of unknown length (a stream) is never held.
    if (this.#remaining > 0) {
      this.#remaining -= chunk.length;
      if (this.#remaining > 0 && this.#corked === undefined) {
        this.#corked = dest;
        dest.cork();
        setImmediate(this.#uncork);
      }
    }
    if (!dest.write(chunk)) controller.pause();
  }

  onResponseEnd(): void {
    if (this.#over) return;
    this.#dest?.end();
    this.#finish(undefined);
    // The connection is ready for the next exchange.
    if (this.#conn !== undefined) this.#pool?.release(this.#conn);
  }

  onResponseError(_controller: Controller | undefined, err: Error): void {
    if (!this.#settled) {
      this.#fail(err);
      return;
    }
    if (this.#over) return;
    this.#finish(err);
    this.#conn?.destroy(err);
  }

  // ---- the consumer's side (UpstreamBody) ----------------------------------

  pipeTo(dest: Writable, done: (err?: Error) => void): void {
    if (this.#over) {
      done(new LegateError('upstream-reset', 'the response body was already consumed'));
      return;
    }
    this.#dest = dest;
    this.#done = done;
    dest.on('drain', this.#onDrain);
    this.#controller?.resume();
  }

  drain(): void {
    if (this.#over || this.#draining) return;
    this.#draining = true;
    this.#controller?.resume();
  }

  destroy(reason?: Error): void {
    if (this.#over) return;
    const why = reason ?? new LegateError('internal-error', 'the response body was discarded');
    this.#finish(why);
    this.#conn?.destroy(why);
  }

  onSettled(fn: () => void): void {
    if (this.#over) fn();
    else (this.#onSettled ??= []).push(fn);
  }

  // ---- both ----------------------------------------------------------------

  #finish(err: Error | undefined): void {
    this.#over = true;
    // end() has flushed a corked response already; after an error, what was written still goes out.
    if (err === undefined) this.#corked = undefined;
    else this.#uncork();
    const dest = this.#dest;
    if (dest !== undefined) {
      dest.off('drain', this.#onDrain);
      this.#dest = undefined;
    }
    const done = this.#done;
    this.#done = undefined;
    done?.(err);
    const waiting = this.#onSettled;
    this.#onSettled = undefined;
    if (waiting !== undefined) for (const fn of waiting) fn();
  }

  #unlisten(): void {
    this.#req.signal.removeEventListener('abort', this.#onAbort);
    this.#trySignal?.removeEventListener('abort', this.#onTryAbort);
    this.#record.ms = Math.round((performance.now() - this.#started) * 1000) / 1000;
  }

  /** Ends the try without a response: the reason is classified once, the connection cut. */
  #fail(err: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#over = true;
    this.#unlisten();
    const facts = socketTlsFacts(this.#conn?.socket);
    if (facts !== undefined) attachTlsFacts(err, facts);
    const e = this.#classify(err);
    this.#record.error = e.code;
    // Taking the connection down is what stops the work, whether it is dialling, sending or waiting:
    // no socket or timer outlives the try.
    this.#conn?.destroy(e);
    this.#reject(e);
  }

  #classify(err: unknown): LE {
    if (isLegateError(err)) return err;
    const endpoint = this.#endpoint;
    const code = codeOf(err);
    if (code === HEADERS_TIMEOUT || code === BODY_TIMEOUT) {
      return new UpstreamError('upstream-timeout', endpoint.key, `${endpoint.key} sent nothing for ${this.#req.route.settings.idleTimeoutMs} ms`, err);
    }
    if (code === INVALID_ARGUMENT) {
      return new LegateError('bad-request', `the request cannot be forwarded: ${(err as Error).message}`);
    }
    return classifyUpstreamFailure(err, endpoint.key, endpoint.settings.tls?.serverName ?? endpoint.hostname);
  }
}

export function createForwarder(): Forwarder {
  const handler: Handler = (req) =>
    new Promise<UpstreamResponse>((resolve, reject) => {
      const endpoint = req.endpoint;
      if (endpoint === undefined) {
        reject(new LegateError('internal-error', 'no endpoint was chosen for the try'));
        return;
      }
      new Exchange(req, endpoint, resolve, reject).start();
    });

  return {
    handler,
    close: () => undefined,
  };
}
