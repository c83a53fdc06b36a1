/**
 * The only code that writes to the app. Before the response head is written
 * any failure becomes a status from errors.ts; after it, a failure can only
 * reset the app's connection (SPEC §6: never a retry once bytes reached the app).
 */
import { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import { LegateError } from '../errors.js';
import type { RequestContext } from './context.js';
import { downstreamResponseHeaders } from './headers.js';
import type { UpstreamResponse } from './types.js';

/**
 * A request refused for its own shape or pace rather than for its route: the
 * `bad-request` code that the listener's parser-level answers also carry, with
 * the status RFC 9110 has for the case (408 for an app that goes silent
 * mid-request, as nginx's `client_body_timeout` and Envoy's stream idle
 * timeout answer; 431 for too many header fields). Never retried and never
 * counted by a breaker: the upstream did nothing wrong.
 */
export class AppRequestError extends LegateError {
  override readonly status: 400 | 408 | 431;
  constructor(status: 400 | 408 | 431, message: string) {
    super('bad-request', message);
    this.name = 'AppRequestError';
    this.status = status;
  }
}

function legateHeaders(ctx: RequestContext, headers: OutgoingHttpHeaders): OutgoingHttpHeaders {
  headers['x-request-id'] = ctx.id;
  headers['x-legate-route'] = ctx.route.name;
  headers['x-legate-attempts'] = String(ctx.tries.length);
  if (ctx.upstreamMs !== undefined) headers['x-legate-upstream-time-ms'] = String(Math.round(ctx.upstreamMs));
  if (ctx.policy.optOutDenied.length > 0) headers['x-legate-opt-out-denied'] = ctx.policy.optOutDenied.join(', ');
  return headers;
}

/**
 * Streams an upstream response to the app. Resolves when the app has the
 * whole body or the exchange failed (then the app's connection was reset).
 */
export function sendUpstreamResponse(ctx: RequestContext, up: UpstreamResponse): Promise<void> {
  const res = ctx.appResponse;
  ctx.status = up.status;
  ctx.upstreamMs = up.upstreamMs;
  const headers = legateHeaders(ctx, downstreamResponseHeaders(up.headers));
  // The upstream answered before the app finished its body: once this response ends, the connection closes
  // rather than waiting for (and discarding) the rest, which an app that stalls would never send.
  if (!ctx.raw.complete) headers.connection = 'close';
  return new Promise((resolve) => {
    const onAbort = (): void => {
      up.body.destroy(ctx.signal.reason as Error);
    };
    try {
      res.writeHead(up.status, up.statusMessage, headers);
    } catch (e) {
      up.body.destroy();
      sendError(ctx, res, toBadGateway(e));
      resolve();
      return;
    }
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    // The first of these to happen says how the exchange ended: the body failed (or legate cut it: an
    // abort destroys the body with its reason), the app has every byte, or the app's connection closed.
    let done = false;
    const end = (failure: string | undefined): void => {
      if (done) return;
      done = true;
      ctx.signal.removeEventListener('abort', onAbort);
      if (failure !== undefined) {
        ctx.resetAfterHead = true;
        ctx.errorCode = failure;
        up.body.destroy();
        res.destroy();
      }
      resolve();
    };
    // Why the request was aborted, when it was: the deadline, or the app hanging up.
    const abortCode = (): string | undefined => (ctx.signal.aborted ? (ctx.signal.reason as LegateError).code : undefined);
    res.on('finish', () => end(undefined));
    res.on('close', () => {
      if (!res.writableFinished) end(abortCode() ?? 'client-closed');
    });
    up.body.pipeTo(res, (err) => {
      if (err !== undefined) end(abortCode() ?? 'upstream-reset');
    });
  });
}

function toBadGateway(e: unknown): LegateError {
  // An upstream head Node parsed but cannot re-send (e.g. an invalid status message).
  return new LegateError('upstream-reset', `upstream response could not be relayed: ${(e as Error).message}`);
}

/** Writes a legate error: JSON body, `x-legate-error`, and the legate headers. */
export function sendError(ctx: RequestContext | undefined, res: ServerResponse, err: LegateError, req?: IncomingMessage): void {
  if (ctx !== undefined) {
    ctx.status = err.status;
    ctx.errorCode = err.code;
  }
  if (res.headersSent || res.destroyed) {
    if (!res.writableEnded) res.destroy();
    return;
  }
  const requestId = ctx?.id ?? (res.getHeader('x-request-id') as string | undefined) ?? null;
  const body = JSON.stringify({
    error: err.code,
    message: err.message,
    route: ctx?.route.name ?? null,
    requestId,
    attempts: ctx?.tries.length ?? 0,
  });
  const headers: OutgoingHttpHeaders =
    ctx !== undefined ? legateHeaders(ctx, {}) : requestId === null ? {} : { 'x-request-id': requestId };
  if (ctx === undefined) headers['x-legate-attempts'] = '0';
  headers['x-legate-error'] = err.code;
  headers['content-type'] = 'application/json';
  headers['content-length'] = Buffer.byteLength(body);
  headers['cache-control'] = 'no-store';
  if (err.retryAfterSeconds !== undefined) headers['retry-after'] = String(Math.max(1, Math.ceil(err.retryAfterSeconds)));
  // A request whose body legate did not read to the end must not keep the connection: the rest would wait
  // unread (holding the socket) or be parsed as the next request.
  if (req !== undefined && !req.complete) headers.connection = 'close';
  // The reason phrase is always ours: writeHead stores a phrase before validating it, so an upstream's
  // invalid one, left on `res` by the failed relay above, would make this 502 throw as well.
  res.writeHead(err.status, STATUS_CODES[err.status] ?? 'Error', headers);
  res.end(body);
}
