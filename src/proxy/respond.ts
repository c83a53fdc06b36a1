/**
 * The only code that writes to the app. Before the response head is written
 * any failure becomes a status from errors.ts; after it, a failure can only
 * reset the app's connection (SPEC §6: never a retry once bytes reached the app).
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream';
import { LegateError } from '../errors.js';
import type { RequestContext } from './context.js';
import { downstreamResponseHeaders } from './headers.js';
import type { UpstreamResponse } from './types.js';

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
    pipeline(up.body, res, (err) => {
      ctx.signal.removeEventListener('abort', onAbort);
      if (err) {
        ctx.resetAfterHead = true;
        const code = (ctx.signal.reason as LegateError | undefined)?.code;
        ctx.errorCode = code ?? 'upstream-reset';
        res.destroy();
      }
      resolve();
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
  // A request whose body legate will not read must not keep the connection: the unread rest would be parsed as the next request.
  if (req !== undefined && !req.complete && err.status === 413) headers.connection = 'close';
  res.writeHead(err.status, headers);
  res.end(body);
}
