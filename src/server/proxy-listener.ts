/**
 * The HTTP/1.1 listener the app talks to. It turns each request into a
 * RequestContext, runs the route's chain and hands the outcome to respond.ts;
 * requests it cannot route are answered here without contacting anything.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { ServerLimits } from '../config/model.js';
import { LegateError, toLegateError } from '../errors.js';
import { RequestContext } from '../proxy/context.js';
import { appRequestId, upstreamRequestHeaders } from '../proxy/headers.js';
import { sendError, sendUpstreamResponse } from '../proxy/respond.js';
import { findRoute } from '../routing/router.js';
import { parseTarget } from '../routing/target.js';
import type { Generation } from '../runtime/generation.js';

/** What the listener needs from the app. */
export interface ProxyListenerHost {
  /** The generation new requests run on. */
  current(): Generation;
  draining(): boolean;
  /** Called once per request after the response ended or failed (logs, metrics). */
  onComplete(ctx: RequestContext | EarlyOutcome): void;
  onClientError?(err: Error, socket: Socket): void;
}

/** A request answered before any route took it (no route, bad target, draining). */
export interface EarlyOutcome {
  readonly early: true;
  readonly id: string;
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly errorCode: string;
  readonly startedAt: number;
}

const LOOPBACK = /^(127\.|::1$|::ffff:127\.)/;

export function isLoopback(address: string | undefined): boolean {
  return address !== undefined && LOOPBACK.test(address);
}

function pathForLog(url: string | undefined): string {
  const u = url ?? '';
  const q = u.indexOf('?');
  return (q === -1 ? u : u.slice(0, q)).slice(0, 200);
}

export function createProxyListener(host: ProxyListenerHost, listenerKey: string, limits: ServerLimits): Server {
  const answerEarly = (req: IncomingMessage, res: ServerResponse, err: LegateError, startedAt: number): void => {
    const id = appRequestId(req.headers['x-request-id']) ?? randomUUID();
    res.setHeader('x-request-id', id);
    sendError(undefined, res, err, req);
    host.onComplete({
      early: true,
      id,
      method: req.method ?? '',
      path: pathForLog(req.url),
      status: err.status,
      errorCode: err.code,
      startedAt,
    });
  };

  const run = async (ctx: RequestContext, generation: Generation): Promise<void> => {
    try {
      const upstream = await ctx.route.handler(ctx);
      await sendUpstreamResponse(ctx, upstream);
    } catch (e) {
      sendError(ctx, ctx.appResponse, toLegateError(e), ctx.raw);
    } finally {
      ctx.finish();
      generation.leave();
      host.onComplete(ctx);
    }
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const startedAt = performance.now();
    if (host.draining()) {
      res.setHeader('connection', 'close');
      answerEarly(req, res, new LegateError('draining', 'legate is shutting down'), startedAt);
      return;
    }
    const generation = host.current();
    let ctx: RequestContext;
    try {
      const target = parseTarget(req.url ?? '/', req.headers.host);
      const routes = generation.tables.get(listenerKey) ?? [];
      const method = req.method ?? 'GET';
      // A route with its own listener owns the whole port: it takes every request there.
      const route = listenerKey === 'main' ? findRoute(routes, method, target, req.headers) : routes[0];
      if (route === undefined) throw new LegateError('no-route', `no route serves ${listenerKey}`);
      const s = route.settings;
      const prefix = s.match.pathPrefix;
      const rest = s.stripPrefix && prefix !== undefined ? target.path.slice(prefix.endsWith('/') ? prefix.length - 1 : prefix.length) : target.path;
      const id = appRequestId(req.headers['x-request-id']) ?? randomUUID();
      const upstreamHost = s.preserveHost && target.authority !== '' ? target.authority : (route.balancer.endpoints[0]?.authority ?? '');
      ctx = new RequestContext({
        id,
        raw: req,
        res,
        route,
        path: target.path,
        forwardPath: rest + target.query,
        headers: upstreamRequestHeaders(req.headers, upstreamHost, id),
        trustControlHeaders: s.trustControlHeaders || isLoopback(req.socket.remoteAddress),
        startedAt,
      });
    } catch (e) {
      answerEarly(req, res, toLegateError(e), startedAt);
      return;
    }
    generation.enter();
    // The app hung up before the response ended: stop the upstream work now.
    res.once('close', () => {
      if (!res.writableFinished) ctx.abort(new LegateError('client-closed', 'the app closed the connection'));
    });
    void run(ctx, generation);
  };

  const server = http.createServer(
    {
      maxHeaderSize: limits.maxHeaderSizeBytes,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: 65_000,
      // Reject `Transfer-Encoding` + `Content-Length` together and other smuggling shapes.
      insecureHTTPParser: false,
      requireHostHeader: false,
    },
    onRequest,
  );
  server.maxConnections = limits.maxConnections;

  server.on('connect', (req: IncomingMessage, socket: Socket) => {
    const id = appRequestId(req.headers['x-request-id']) ?? randomUUID();
    const body = JSON.stringify({
      error: 'connect-unsupported',
      message: 'legate does not tunnel CONNECT: call http:// URLs through it and let legate originate TLS to the upstream',
      route: null,
      requestId: id,
      attempts: 0,
    });
    socket.end(
      'HTTP/1.1 405 Method Not Allowed\r\n' +
        'content-type: application/json\r\n' +
        'x-legate-error: connect-unsupported\r\n' +
        `x-request-id: ${id}\r\n` +
        'x-legate-attempts: 0\r\n' +
        'allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n' +
        'connection: close\r\n' +
        `content-length: ${Buffer.byteLength(body)}\r\n\r\n` +
        body,
    );
    host.onComplete({
      early: true,
      id,
      method: 'CONNECT',
      path: (req.url ?? '').slice(0, 200),
      status: 405,
      errorCode: 'connect-unsupported',
      startedAt: performance.now(),
    });
  });

  server.on('clientError', (err: Error & { code?: string }, socket: Socket) => {
    host.onClientError?.(err, socket);
    if (!socket.writable || (socket as Socket & { _httpMessage?: unknown })._httpMessage) {
      socket.destroy();
      return;
    }
    const status =
      err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    const body = JSON.stringify({ error: 'bad-request', message: `malformed request: ${err.code ?? err.message}`, route: null, requestId: null, attempts: 0 });
    socket.end(
      `HTTP/1.1 ${status}\r\ncontent-type: application/json\r\nx-legate-error: bad-request\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  });

  return server;
}
